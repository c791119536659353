"""A stand-in for Slack's servers on loopback, for tests and `python -m tools.slack_load`.

Three parts of Slack that the bot talks to: the Web API (`/api/<method>`:
chat.postMessage, chat.update, views.open, chat.postEphemeral, auth.test,
conversations.history/replies and files.info over what `share` posted ...),
response URLs (`/response/<id>`), and file downloads (`/files/<id>/<name>`,
served as Slack does: the bytes to the bot token, a sign-in page to anyone else). The recorder answers each like Slack
does (`{"ok": true, ...}` with plausible fields such as a fresh `ts`) and
records every call, in order, with its arrival time. The other direction,
Slack calling the bot, is `signed_headers` / `post_signed`: requests signed
as Slack signs them (v0 HMAC-SHA256 of `v0:{timestamp}:{body}`).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, urlencode

from aiohttp import web

BOT_USER_ID, BOT_ID, TEAM_ID = "UKBBOT", "BKBBOT", "T0KB"


@dataclass
class Call:
    method: str  # "chat.postMessage", or "response_url" for a POST to a response URL
    data: dict
    at: float = field(default_factory=time.monotonic)
    path: str = ""
    token: str = ""
    reply: dict = field(default_factory=dict)  # what the recorder answered (a postMessage's ts, say)


class Recorder:
    """Slack's Web API and response URLs on 127.0.0.1, recording every call."""

    def __init__(self):
        self.calls: list[Call] = []
        self.errors: dict[tuple[str, str], str] = {}  # (method, channel) -> Slack error code to answer with
        # (method, data) -> an error code or None: refuses by what is sent (e.g. blocks Slack finds too long).
        self.refuse = None
        self._ts = itertools.count(1)
        self.token = ""  # the bot token a file download must carry (`share` files are served to it alone)
        self.files: dict[str, tuple[dict, bytes]] = {}  # file id -> (Slack's file object, its bytes)
        self.messages: dict[str, list[dict]] = {}  # channel -> messages shared there, oldest first
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.base = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "Recorder":
        app = web.Application()
        app.add_routes([web.post("/api/{method}", self._api), web.get("/api/{method}", self._api), web.post("/response/{id}", self._response),
                        web.post("/upload/{id}", self._upload), web.get("/files/{id}/{name:.*}", self._file)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.base = "http://%s:%d" % self._runner.addresses[0][:2]
        return self

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return self.base + "/api/"

    def response_url(self, name: str = "r") -> str:
        return f"{self.base}/response/{name}"

    # -- reading what happened ------------------------------------------------

    def of(self, method: str) -> list[dict]:
        return [c.data for c in self.calls if c.method == method]

    def count(self, method: str) -> int:
        return sum(c.method == method for c in self.calls)

    async def wait_for(self, predicate, timeout: float = 10.0):
        """Wait until `predicate(recorder)` is truthy; returns its value, raises TimeoutError otherwise."""
        async with self._changed:
            return await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self)), timeout)

    # -- the fake servers ---------------------------------------------------

    async def _record(self, call: Call) -> None:
        self.calls.append(call)
        async with self._changed:
            self._changed.notify_all()

    @staticmethod
    async def _payload(request: web.Request) -> dict:
        raw = await request.text()
        if request.content_type == "application/json":
            data = json.loads(raw or "{}")
        else:
            data = dict(parse_qsl(raw))
            for key in ("blocks", "view", "attachments"):  # form posts carry these as JSON strings
                if isinstance(data.get(key), str):
                    data[key] = json.loads(data[key])
        return {**dict(request.query), **data}

    def next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    async def _api(self, request: web.Request) -> web.Response:
        method, data = request.match_info["method"], await self._payload(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        reply = self.reply(method, data)
        await self._record(Call(method, data, path=request.path, token=token, reply=reply))
        return web.json_response(reply)

    async def _upload(self, request: web.Request) -> web.Response:
        """A file's bytes, posted to the URL that files.getUploadURLExternal handed out."""
        if request.content_type.startswith("multipart/"):  # a form with the file as its part
            body = b""
            async for part in await request.multipart():
                body += await part.read()
        else:
            body = await request.read()
        await self._record(Call("upload", {"id": request.match_info["id"], "bytes": body}, path=request.path))
        return web.Response(text="OK - %d" % len(body))

    def share(self, channel: str, name: str, data: bytes, *, user: str = "U0ALICE", thread: str | None = None,
              text: str = "") -> dict:
        """A person shares a file in a channel (or a thread): the message as Slack stores it, file included."""
        file_id = f"F{next(self._ts):08d}"
        file = {"id": file_id, "name": name, "title": name, "size": len(data), "mode": "hosted",
                "mimetype": "application/octet-stream", "user": user,
                "url_private": f"{self.base}/files/{file_id}/{quote(name, safe='')}",
                "url_private_download": f"{self.base}/files/{file_id}/{quote(name, safe='')}"}
        self.files[file_id] = (file, data)
        message = {"type": "message", "user": user, "text": text, "ts": self.next_ts(), "files": [file]}
        if thread:
            message["thread_ts"] = thread
        self.messages.setdefault(channel, []).append(message)
        return message

    async def _file(self, request: web.Request) -> web.Response:
        """A file download: its bytes for the bot token; Slack's sign-in page (HTML, 200) without it."""
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        file, data = self.files.get(request.match_info["id"], (None, b""))
        await self._record(Call("file", {"id": request.match_info["id"]}, path=request.path, token=token))
        if file is None:
            return web.Response(status=404, text="not found")
        if not self.token or token != self.token:
            return web.Response(text="<!DOCTYPE html><html><body>Sign in to Slack</body></html>",
                                content_type="text/html")
        return web.Response(body=data, content_type="application/octet-stream")

    async def _response(self, request: web.Request) -> web.Response:
        await self._record(Call("response_url", await self._payload(request), path=request.path))
        return web.Response(text="ok")

    def reply(self, method: str, data: dict) -> dict:
        """What Slack would answer, trimmed to the fields the bot reads."""
        error = self.errors.get((method, data.get("channel", ""))) or (self.refuse and self.refuse(method, data))
        if error:
            return {"ok": False, "error": error}
        if method == "auth.test":
            return {"ok": True, "url": "https://kb-test.slack.com/", "team": "KB test", "user": "kb-bot",
                    "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID}
        if method == "chat.postMessage":
            ts = self.next_ts()
            return {"ok": True, "channel": data.get("channel"), "ts": ts,
                    "message": {"type": "message", "text": data.get("text", ""), "ts": ts, "bot_id": BOT_ID,
                                "thread_ts": data.get("thread_ts")}}
        if method == "chat.update":
            return {"ok": True, "channel": data.get("channel"), "ts": data.get("ts"), "text": data.get("text", "")}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": self.next_ts()}
        if method == "files.getUploadURLExternal":
            file_id = f"F{next(self._ts):08d}"
            return {"ok": True, "upload_url": f"{self.base}/upload/{file_id}", "file_id": file_id}
        if method == "files.completeUploadExternal":
            files = data.get("files")
            files = json.loads(files) if isinstance(files, str) else files or []
            return {"ok": True, "files": [{"id": f["id"], "title": f.get("title", "")} for f in files]}
        if method == "conversations.history":  # newest first, as Slack lists a channel
            messages = [m for m in self.messages.get(data.get("channel", ""), []) if not m.get("thread_ts")]
            return {"ok": True, "messages": list(reversed(messages))[:int(data.get("limit") or 100)],
                    "has_more": False}
        if method == "conversations.replies":  # the parent first, then its replies, oldest first
            ts = data.get("ts")
            thread = [m for m in self.messages.get(data.get("channel", ""), [])
                      if m["ts"] == ts or m.get("thread_ts") == ts]
            return {"ok": True, "messages": thread, "has_more": False}
        if method == "files.info":
            found = self.files.get(data.get("file", ""))
            return {"ok": True, "file": found[0]} if found else {"ok": False, "error": "file_not_found"}
        if method == "views.open":
            return {"ok": True, "view": {**(data.get("view") or {}), "id": f"V{next(self._ts):08d}"}}
        return {"ok": True}


# -- Slack calling the bot ------------------------------------------------------


def signed_headers(secret: str, body: str | bytes, timestamp: int | None = None,
                   content_type: str | None = None) -> dict:
    """Slack's headers for `body` (text is signed as its UTF-8 bytes; bytes as they are)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    raw = body if isinstance(body, bytes) else body.encode()
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + raw, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}",
            "Content-Type": content_type or "application/x-www-form-urlencoded"}


def command_body(fields: dict) -> str:
    """A slash command as Slack posts it: form fields."""
    return urlencode(fields)


def interaction_body(payload: dict) -> str:
    """A block_actions or view_submission as Slack posts it: one `payload` form field holding JSON."""
    return urlencode({"payload": json.dumps(payload, ensure_ascii=False)})


def event_body(envelope: dict) -> str:
    return json.dumps(envelope, ensure_ascii=False)


async def post_signed(session, url: str, secret: str, body: str, *, json_body: bool = False,
                      extra_headers: dict | None = None, timestamp: int | None = None):
    """POST `body` as Slack would; returns (status, text, seconds until the response arrived)."""
    headers = signed_headers(secret, body, timestamp, "application/json" if json_body else None)
    headers.update(extra_headers or {})
    t0 = time.perf_counter()
    async with session.post(url, data=body.encode(), headers=headers) as resp:
        text = await resp.text()
    return resp.status, text, time.perf_counter() - t0
