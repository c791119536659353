"""Files shared in Slack, fetched for `/kb add`: which file, and its bytes.

Which file: one the message mentioning the bot carries (the event's `files`),
else the newest one shared in the thread (conversations.replies) or, for the
slash command, which Slack sends without a thread, in the channel
(conversations.history). Its bytes come from `url_private_download` with the
bot token as a Bearer header (the files:read scope), with a timeout, and read
no further than one byte past the size limit: the command layer refuses an
oversized file by name, so what it is handed only has to prove the excess.
Slack answers a token without files:read with its sign-in page (HTTP 200,
HTML), not an error: that is recognised and said, instead of indexing a page.
"""
from __future__ import annotations

import asyncio

import aiohttp
from slack_sdk.errors import SlackApiError

DOWNLOAD_TIMEOUT_S = 60.0
HISTORY_LIMIT = 50  # how far back /kb add looks for a shared file: the latest messages of the channel or thread


class FetchError(Exception):
    """The file could not be fetched; the message says why, for the person who asked."""


def shared(files) -> list[dict]:
    """The files of a message that still exist (a deleted one stays as a `tombstone`)."""
    return [f for f in files or [] if isinstance(f, dict) and f.get("mode") != "tombstone" and f.get("id")]


async def latest_file(client, channel: str, thread: str | None = None) -> dict | None:
    """The newest file shared in the thread `thread` (its replies), or in the channel; None when none is."""
    try:
        if thread:
            resp = await client.conversations_replies(channel=channel, ts=thread, limit=HISTORY_LIMIT)
            messages = list(reversed(resp.get("messages") or []))  # replies come oldest first
        else:
            resp = await client.conversations_history(channel=channel, limit=HISTORY_LIMIT)
            messages = resp.get("messages") or []  # newest first
    except SlackApiError as e:
        raise FetchError(f"I cannot read the messages here ({_error(e)}): invite me to the "
                         "channel, or mention me on the message that carries the file (`@kb add`)") from None
    for message in messages:
        files = shared(message.get("files"))
        if files:
            return files[-1]
    return None


async def described(client, file: dict) -> dict:
    """A file with its name, size and download URL: events may carry only its id (`check_file_info`)."""
    if file.get("url_private_download") and file.get("name"):
        return file
    try:
        return (await client.files_info(file=file["id"]))["file"]
    except SlackApiError as e:
        raise FetchError(f"Slack would not describe that file ({_error(e)})") from None


async def download(file: dict, token: str, limit: int, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """The file's bytes, at most `limit + 1` of them."""
    url, name = file.get("url_private_download") or file.get("url_private"), file.get("name") or "the file"
    if not url:
        raise FetchError(f"{name} cannot be downloaded (it is an external or deleted file)")
    data = bytearray()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                if resp.status != 200:
                    raise FetchError(f"Slack answered HTTP {resp.status} for {name}")
                if resp.content_type == "text/html" and not name.lower().endswith((".html", ".htm")):
                    raise FetchError("Slack sent its sign-in page instead of the file: the app needs the "
                                     "files:read scope (add it and reinstall the app)")
                async for chunk in resp.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > limit:
                        break
    except asyncio.TimeoutError:
        raise FetchError(f"downloading {name} took over {timeout_s:.0f} s") from None
    except aiohttp.ClientError as e:
        raise FetchError(f"downloading {name} failed ({type(e).__name__})") from None
    return bytes(data[:limit + 1])


def _error(e: SlackApiError) -> str:
    """Slack's error code, or the HTTP status when the answer was not Slack's JSON (a proxy, an outage)."""
    data = getattr(e.response, "data", None)
    return data.get("error", "unknown error") if isinstance(data, dict) else f"HTTP {e.response.status_code}"
