"""The serving process's outbox poster: what training jobs say, posted by the bot, never lost, never twice.

The loop (`serve.post_outbox`) runs over a real SQLite outbox with a scripted
`send`; the last test runs `serve.main_async` itself with Slack pointed at
the loopback recorder (bot/slack_recorder.py), as `python -m bot serve` does.
"""
from __future__ import annotations

import asyncio
import logging
import socket

import aiohttp
import pytest

from bot import serve, store
from bot.slack_recorder import Recorder


class Sender:
    """A transport's `send(row)`: records what it posted; `fail` maps a text to the exception its post raises."""

    def __init__(self):
        self.posted: list[str] = []
        self.fail: dict[str, BaseException] = {}

    async def __call__(self, row: dict) -> None:
        error = self.fail.get(row["text"])
        if error is not None:
            raise error
        self.posted.append(row["text"])


def unsent(db, platform: str = "slack") -> list[str]:
    return [r["text"] for r in store.outbox(db) if r["platform"] == platform and r["sent_at"] is None]


@pytest.fixture
def job(db):
    return store.create_job(db, "train", "slack:U0ADMIN", "slack", "C1", "1.1")


@pytest.mark.asyncio
async def test_posts_in_order_marks_sent_and_leaves_other_platforms(db, job):
    for text in ("queued", "step 10/60", "promoted"):
        store.post_outbox(db, job, "slack", "C1", "1.1", text)
    store.post_outbox(db, job, "discord", "7", "7", "for discord")
    send = Sender()
    assert await serve.post_outbox_once(db, "slack", send, "test") == 3
    assert send.posted == ["queued", "step 10/60", "promoted"] and unsent(db) == []
    assert unsent(db, "discord") == ["for discord"]
    assert await serve.post_outbox_once(db, "slack", send, "test") == 0 and len(send.posted) == 3


@pytest.mark.asyncio
async def test_a_failed_post_is_retried_after_the_lease_and_its_thread_keeps_its_order(db, job, caplog):
    for channel, text in [("C1", "a1"), ("C1", "a2"), ("C2", "b1"), ("C1", "a3")]:
        store.post_outbox(db, job, "slack", channel, "1.1", text)
    send = Sender()
    send.fail["a2"] = ConnectionResetError("network down")
    assert await serve.post_outbox_once(db, "slack", send, "test", lease_s=0.3) == 2
    assert send.posted == ["a1", "b1"] and unsent(db) == ["a2", "a3"]  # a3 waits behind a2
    assert "not posted" in caplog.text and "network down" in caplog.text
    assert await serve.post_outbox_once(db, "slack", send, "test", lease_s=0.3) == 0  # still leased
    del send.fail["a2"]
    await asyncio.sleep(0.35)
    assert await serve.post_outbox_once(db, "slack", send, "test", lease_s=0.3) == 2
    assert send.posted == ["a1", "b1", "a2", "a3"] and unsent(db) == []


@pytest.mark.asyncio
async def test_an_undeliverable_message_is_dropped_not_retried_forever(db, job, caplog):
    store.post_outbox(db, job, "slack", "G0GONE", "", "lost")
    store.post_outbox(db, job, "slack", "G0GONE", "", "after it")
    send = Sender()
    send.fail["lost"] = serve.Undeliverable("Slack answered channel_not_found")
    assert await serve.post_outbox_once(db, "slack", send, "test", lease_s=0) == 1
    assert send.posted == ["after it"] and unsent(db) == []
    assert "dropped" in caplog.text and "channel_not_found" in caplog.text


@pytest.mark.asyncio
async def test_the_loop_survives_errors_waits_until_ready_and_stops_at_once(db, job, monkeypatch, caplog):
    caplog.set_level(logging.ERROR)
    store.post_outbox(db, job, "slack", "C1", "", "hello")
    real, calls = store.claim_outbox, []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "claim_outbox", flaky)
    send, ready, stop = Sender(), [False], asyncio.Event()
    task = asyncio.create_task(serve.post_outbox(db, "slack", send, 0.02, stop, ready=lambda: ready[0]))
    await asyncio.sleep(0.15)
    assert calls == [] and not task.done()  # not ready: nothing claimed
    ready[0] = True
    for _ in range(100):
        if send.posted:
            break
        await asyncio.sleep(0.02)
    assert send.posted == ["hello"] and len(calls) >= 2 and "database is locked" in caplog.text
    stop.set()
    await asyncio.wait_for(task, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.asyncio
async def test_serve_posts_the_slack_outbox_to_the_thread_that_asked(env, kb_db, tmp_path, monkeypatch):
    recorder = await Recorder().start()
    port = _free_port()
    for name, value in {"BOT_DB": str(tmp_path / "bot.db"), "SLACK_BOT_TOKEN": "xoxb-serve", "PORT": str(port),
                        "SLACK_SIGNING_SECRET": "secret", "SLACK_API_URL": recorder.api_url}.items():
        monkeypatch.setenv(name, value)
    for name in ("SLACK_APP_TOKEN", "DISCORD_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    job = store.create_job(kb_db, "train", "slack:U0ADMIN", "slack", "C1", "123.456")
    row = store.post_outbox(kb_db, job, "slack", "C1", "123.456", "Job #1: v0001 promoted")
    stop = asyncio.Event()
    task = asyncio.create_task(serve.main_async(stop, outbox_every_s=0.05))
    try:
        (posted,) = await recorder.wait_for(lambda r: r.of("chat.postMessage"))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                health = await resp.json()
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await recorder.close()
    assert (posted["channel"], posted["thread_ts"], posted["text"]) == ("C1", "123.456", "Job #1: v0001 promoted")
    assert recorder.count("chat.postMessage") == 1 and recorder.calls[-1].token == "xoxb-serve"
    assert health["slack"] == f"http :{port}/slack/events" and health["discord"] == "off"
    assert store.outbox(kb_db, job)[0]["id"] == row and store.outbox(kb_db, job)[0]["sent_at"] is not None
