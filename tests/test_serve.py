"""The serving process: the outbox poster (what training jobs say, never lost, never twice), and health.

The loop (`outbox.post_outbox`) runs over a real SQLite outbox with a scripted
`send`; `serve.main_async` runs itself with Slack pointed at the loopback
recorder (tests/slack_recorder.py), as `python -m bot serve` does. /healthz and
/readyz are asked over real HTTP on loopback, with a real answerer and
database; only the model is a stand-in that loads, or generates, when the
test says so, so "loading" and "queued" can be seen.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time

import aiohttp
import pytest

from bot.chat import outbox
from bot.ops import health, serve
from bot import config, store, wiring
from slack_recorder import Recorder


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
    assert await outbox.post_outbox_once(wiring.StoreOutbox(db), "slack", send, "test") == 3
    assert send.posted == ["queued", "step 10/60", "promoted"] and unsent(db) == []
    assert unsent(db, "discord") == ["for discord"]
    assert await outbox.post_outbox_once(wiring.StoreOutbox(db), "slack", send, "test") == 0 and len(send.posted) == 3


@pytest.mark.asyncio
async def test_a_failed_post_is_retried_after_the_lease_and_its_thread_keeps_its_order(db, job, caplog):
    for channel, text in [("C1", "a1"), ("C1", "a2"), ("C2", "b1"), ("C1", "a3")]:
        store.post_outbox(db, job, "slack", channel, "1.1", text)
    send = Sender()
    send.fail["a2"] = ConnectionResetError("network down")
    assert await outbox.post_outbox_once(wiring.StoreOutbox(db), "slack", send, "test", lease_s=0.3) == 2
    assert send.posted == ["a1", "b1"] and unsent(db) == ["a2", "a3"]  # a3 waits behind a2
    assert "not posted" in caplog.text and "network down" in caplog.text
    assert await outbox.post_outbox_once(wiring.StoreOutbox(db), "slack", send, "test", lease_s=0.3) == 0  # still leased
    del send.fail["a2"]
    await asyncio.sleep(0.35)
    assert await outbox.post_outbox_once(wiring.StoreOutbox(db), "slack", send, "test", lease_s=0.3) == 2
    assert send.posted == ["a1", "b1", "a2", "a3"] and unsent(db) == []


@pytest.mark.asyncio
async def test_an_undeliverable_message_is_dropped_not_retried_forever(db, job, caplog):
    store.post_outbox(db, job, "slack", "G0GONE", "", "lost")
    store.post_outbox(db, job, "slack", "G0GONE", "", "after it")
    send = Sender()
    send.fail["lost"] = outbox.Undeliverable("Slack answered channel_not_found")
    assert await outbox.post_outbox_once(wiring.StoreOutbox(db), "slack", send, "test", lease_s=0) == 1
    assert send.posted == ["after it"] and unsent(db) == []
    assert "dropped" in caplog.text and "channel_not_found" in caplog.text
    lost, after = store.outbox(db, job)
    assert lost["dropped"] == "Slack answered channel_not_found" and after["dropped"] is None


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
    task = asyncio.create_task(outbox.post_outbox(wiring.StoreOutbox(db), "slack", send, 0.02, stop, ready=lambda: ready[0]))
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
    task = asyncio.create_task(serve.main_async(config.Settings.load(), stop, outbox_every_s=0.05))
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


# -- /healthz, /readyz: liveness and readiness ------------------------------------------


class Ops:
    """`health.Health` routes on a loopback port, and a client for them."""

    def __init__(self, ops: health.Health):
        self.ops = ops

    async def __aenter__(self):
        from aiohttp import web

        app = web.Application()
        app.add_routes(self.ops.routes())
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc):
        await self.session.close()
        await self.runner.cleanup()

    async def get(self, path: str) -> tuple[int, dict | str]:
        async with self.session.get(self.base + path) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, body


def _answerer(db, generator):
    from bot.answering import pipeline as answering
    from bot.knowledge import retrieval

    return answering.Answerer(db, retrieval.Searcher(db, "none"), generator)


def _ops(db, answerer, tmp_path, **platforms):
    from bot import commands

    return health.Health(commands.Commands(db, answerer, settings=config.Settings.load()), {"slack": "off", "discord": "off", **platforms},
                         tmp_path / "bot.db", tmp_path / "adapters")


async def _until(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_not_ready_while_the_model_loads_then_ready_on_retrieval_only_fallback(kb_db, tmp_path):
    from bot.llm.generation import ModelUnavailable

    release = threading.Event()

    def load():  # the model load: blocks until the test lets it fail, as an unreachable hub does
        release.wait(10)
        raise ModelUnavailable("the model hub is unreachable and the model is not cached")

    answerer = _answerer(kb_db, load)
    async with Ops(_ops(kb_db, answerer, tmp_path, slack="http :3000/slack/events")) as http:
        loading = asyncio.create_task(asyncio.to_thread(answerer.generator))
        await asyncio.sleep(0.05)
        status, health = await http.get("/healthz")
        assert status == 200 and health["ok"] is True and health["ready"] is False  # alive, not ready
        assert health["model"] == "loading" and health["model_state"] == "loading"
        assert health["database"]["ok"] is True and health["database"]["ms"] >= 0
        assert health["slack"] == "http :3000/slack/events" and health["discord"] == "off"
        assert health["platforms"] == {"slack": "http :3000/slack/events", "discord": "off"}
        assert (await http.get("/readyz"))[0] == 503 and (await http.get("/healthz?ready=1"))[0] == 503
        release.set()
        await loading
        status, ready = await http.get("/readyz")
    assert status == 200 and ready["ready"] is True and ready["model_state"] == "retrieval-only"
    assert ready["model"] == "the model hub is unreachable and the model is not cached"
    assert ready["queue_depth"] == 0 and ready["adapter"] == {"in_service": None, "serving": None}


@pytest.mark.asyncio
async def test_not_ready_while_the_database_file_cannot_be_opened(kb_db, tmp_path):
    answerer = _answerer(kb_db, None)  # retrieval-only by configuration: ready at once
    async with Ops(_ops(kb_db, answerer, tmp_path)) as http:
        status, health = await http.get("/readyz")
        assert status == 200 and health["database"]["ok"] and health["model_state"] == "retrieval-only"
        os.rename(tmp_path / "bot.db", tmp_path / "moved.db")  # a volume gone, a file deleted by mistake
        try:
            status, health = await http.get("/readyz")
            assert status == 503 and health["ready"] is False and health["database"]["ok"] is False
            assert "unable to open database file" in health["database"]["error"]
            assert (await http.get("/healthz"))[0] == 200  # liveness: the process itself is fine
        finally:
            os.rename(tmp_path / "moved.db", tmp_path / "bot.db")
        status, health = await http.get("/readyz")
    assert status == 200 and health["database"]["ok"] is True


class HeldModel:
    """A generator the test holds inside `generate_batch`, so questions queue behind it in the real ModelWorker."""

    model_id, revision, active_adapter = "held", "0", "v0001"

    def __init__(self):
        self.inside, self.release = threading.Event(), threading.Event()

    def count_tokens(self, text):
        return len(text)

    def generate_batch(self, requests):
        from bot.llm.generation import Generation

        self.inside.set()
        self.release.wait(10)
        return [Generation("held [1]", 1, 1, self.active_adapter) for _ in requests]


@pytest.mark.asyncio
async def test_queue_depth_in_flight_and_the_adapter_in_service_in_health_and_metrics(kb_db, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from bot.answering.pipeline import Context
    from bot.llm.generation import ModelWorker, set_pointer

    model = HeldModel()
    worker = ModelWorker(model)
    set_pointer(tmp_path / "adapters", "v0002")  # promoted; the model has not followed it yet
    answerer = _answerer(kb_db, lambda: worker)
    answerer.generator()  # as serve does at start

    def ask(n: int):
        question = "什么是边缘计算？"
        return asyncio.create_task(asyncio.to_thread(answerer.ask, question, Context("slack", f"U{n}", "C1")))

    try:
        async with Ops(_ops(kb_db, answerer, tmp_path)) as http:
            status, health = await http.get("/readyz")
            assert status == 200 and health["model_state"] == "loaded" and health["queue_depth"] == 0
            asks = [ask(0)]
            assert await asyncio.to_thread(model.inside.wait, 5)  # the first question holds the model ...
            asks += [ask(n) for n in (1, 2, 3)]  # ... and three more queue behind it

            async def queued():
                return worker.depth == 3
            await _until(queued)
            status, health = await http.get("/healthz")
            _, text = await http.get("/metrics")
            model.release.set()
            answers = await asyncio.gather(*asks)
            _, after = await http.get("/healthz")
    finally:
        model.release.set()
        worker.close(5)
    assert status == 200 and (health["queue_depth"], health["in_flight"]) == (3, 4)
    assert (after["queue_depth"], after["in_flight"]) == (0, 0)
    assert health["adapter"] == {"in_service": "v0002", "serving": "v0001"}
    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["bot_model_queue_depth"].value == 3 and samples["bot_questions_in_flight"].value == 4
    assert samples["bot_model_loaded"].value == 1
    assert samples["bot_adapter_info"].labels == {"version": "v0002", "serving": "v0001"}
    assert [a.mode for a in answers] == ["llm"] * 4
    assert {store.answer(kb_db, a.id)["adapter"] for a in answers} == {"v0001"}
