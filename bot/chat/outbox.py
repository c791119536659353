"""The outbox poster: what training jobs (and a killed process's unfinished answers) have to say, posted.

The training worker holds no chat token: it writes its progress and verdict
to the `outbox` table, and each platform running in the serving process
posts its rows to the channel or thread that asked. A claim is a lease, so a
message claimed by a poster that died is offered again; a post that fails
is left unmarked and offered again after the lease, unless it can never
succeed (the channel is gone, the bot may not post there): that one is
logged and dropped, not retried forever.

Platform-neutral: each platform brings its sender (bot.chat.slack.send,
bot.chat.discord.send). The rows come through `Outbox`, a small protocol,
not from bot.store: chat never imports the store, and the composition root
(bot.wiring.StoreOutbox) adapts the store's outbox functions to it. A
protocol rather than methods on the command layer, because the poster is the
serving process's plumbing, not a command anybody runs.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Awaitable, Callable, Optional, Protocol, TypedDict

log = logging.getLogger("bot.chat.outbox")
OUTBOX_EVERY_S = 2.0  # how often each platform's poster looks for job messages


class OutboxRow(TypedDict, total=False):
    """One message to post, as the outbox table holds it (the keys a sender reads)."""
    id: int
    job_id: Optional[int]  # None for a killed process's answer (bot.answering.inflight.recover)
    platform: str
    channel: str
    thread: str  # "" when the message goes to the channel itself
    text: str
    update_message: Optional[str]  # a message (Slack ts, Discord id) this one replaces, when it names one
    interaction: Optional[str]  # Discord: "application id/token" of a deferred interaction to edit


class Outbox(Protocol):
    """Where the poster claims rows and marks them done; blocking calls, run off the event loop."""

    def claim(self, platform: str, claimer: str, limit: int, lease_s: float) -> list[OutboxRow]:
        """`platform`'s unsent rows, oldest first, leased to `claimer` for `lease_s` seconds."""

    def sent(self, ids: list[int]) -> None:
        """Mark rows posted."""

    def dropped(self, outbox_id: int, why: str) -> None:
        """Mark a row that can never be posted as done, with the reason."""


Send = Callable[[OutboxRow], Awaitable[None]]


class Undeliverable(Exception):
    """Raised by a sender for a message that can never be posted; the poster drops it."""


async def post_outbox_once(outbox: Outbox, platform: str, send: Send, claimer: str, *, lease_s: float = 60.0,
                           limit: int = 20) -> int:
    """Claim `platform`'s unsent messages and post them with `await send(row)`; returns how many were posted.

    Each posted message is marked sent at once; an undeliverable one is marked
    dropped, with the reason. After a
    failed post, the later messages of the same conversation wait for the
    retry too, so a thread never reads a job's messages out of order."""
    rows = await asyncio.to_thread(outbox.claim, platform, claimer, limit, lease_s)
    posted, blocked = 0, set()
    for row in rows:
        where = (row["channel"], row["thread"])
        if where in blocked:
            continue
        try:
            await send(row)
        except Undeliverable as e:
            log.warning("outbox #%s (job %s) to %s %s dropped: %s", row["id"], row["job_id"], platform, where, e)
            await asyncio.to_thread(outbox.dropped, row["id"], str(e))
            continue
        except Exception as e:  # noqa: BLE001 (a network error, a rate limit): offered again after the lease
            log.warning("outbox #%s (job %s) to %s %s not posted, retried in %.0f s: %r",
                        row["id"], row["job_id"], platform, where, lease_s, e)
            blocked.add(where)
            continue
        else:
            posted += 1
        await asyncio.to_thread(outbox.sent, [row["id"]])
    return posted


async def post_outbox(outbox: Outbox, platform: str, send: Send, every_s: float = OUTBOX_EVERY_S,
                      stop: asyncio.Event | None = None, *, ready: Callable[[], bool] | None = None,
                      claimer: str | None = None, lease_s: float = 60.0) -> None:
    """Post `platform`'s outbox every `every_s` seconds until `stop` is set (or the task is cancelled).

    `send(row)` is the transport's coroutine (`slack_sender`, `discord_sender`);
    `ready()`, when given, says whether the platform can post yet (Discord
    before login cannot): nothing is claimed until it can. The loop outlives
    any exception (the database busy, a bug in a sender)."""
    claimer = claimer or f"{platform}@{socket.gethostname()}:{os.getpid()}"
    stop = stop or asyncio.Event()
    while not stop.is_set():
        try:
            if ready is None or ready():
                await post_outbox_once(outbox, platform, send, claimer, lease_s=lease_s)
        except Exception:  # noqa: BLE001
            log.exception("outbox poster (%s) failed; trying again in %.1f s", platform, every_s)
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except asyncio.TimeoutError:
            pass
