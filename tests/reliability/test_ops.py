"""Operations: /metrics scraped over real HTTP, JSON logs from the real processes, the retention purge.

Everything is real: `serve.main_async` on a loopback port over a copy of the
indexed database, answers through the answering pipeline (retrieval-only),
votes and corrections through bot.learning.feedback, the purge as huey runs it (in
immediate mode) and as the CLI runs it, and `python -m bot serve` / `worker`
as subprocesses for their log lines.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot import cli, config, store, wiring
from bot.learning import feedback, jobs
from bot.ops import logs, retention, serve
from bot.answering.pipeline import Context
from bot.llm.hotswap import set_pointer

ROOT = Path(__file__).resolve().parents[2]
DAY = 86400.0
SECRET_QUESTION = "What is our runway if the Series A slips? (private)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answer_row(answer_id: str, *, created_at: float, platform: str = "slack", mode: str = "llm",
                latency_ms: float = 100.0, adapter: str | None = None, question: str = SECRET_QUESTION) -> dict:
    return {"id": answer_id, "created_at": created_at, "platform": platform, "channel": "C1", "thread": "",
            "user": "U1", "question": question, "passages": [], "answer": "an answer [1]", "citations": [],
            "mode": mode, "notice": "", "model": "m", "revision": "r", "adapter": adapter,
            "latency_ms": latency_ms, "retrieval_ms": 1.0, "prompt_tokens": 10, "completion_tokens": 5}


def _samples(text: str) -> dict[tuple, float]:
    """`{(sample name, ((label, value), ...)): value}` from Prometheus text, parsed by prometheus_client."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# -- /metrics -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_metrics_count_answers_votes_corrections_and_jobs_and_a_purge_never_lowers_a_counter(
        env, kb_db, tmp_path, monkeypatch):
    port = _free_port()
    monkeypatch.setenv("BOT_DB", str(tmp_path / "bot.db"))  # kb_db's file: the indexed copy
    monkeypatch.setenv("PORT", str(port))
    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "DISCORD_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    set_pointer(env.tmp / "adapters", "v0003")
    stop = asyncio.Event()
    task = asyncio.create_task(serve.main_async(config.Settings.load(), stop))
    try:
        async with aiohttp.ClientSession() as http:
            async def get(path):
                for _ in range(200):  # the server starts in the task: wait for its port
                    try:
                        async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                            return resp.status, resp.headers["Content-Type"], await resp.text()
                    except aiohttp.ClientConnectorError:
                        await asyncio.sleep(0.02)
                raise AssertionError("serve did not start")

            status, _, ready = await get("/readyz")
            assert status == 200 and json.loads(ready)["model_state"] == "retrieval-only"

            # Three answers through the real pipeline (as `ask` gives them), three older Slack ones recorded
            # by the store with chosen latencies, so the histogram's buckets can be checked.
            answerer = wiring.build_answerer(config.Settings.load(), kb_db)
            ids = [answerer.ask(q, Context(platform="cli", user="op")).id
                   for q in ("什么是边缘计算？", "How do startups manage financial risk?", "融资")]
            old = time.time() - 40 * DAY
            for i, ms in enumerate((30.0, 700.0, 3000.0)):
                store.record_answer(kb_db, _answer_row(f"s{i}", created_at=old, latency_ms=ms, adapter="v0002"))
            feedback.vote(kb_db, ids[0], "slack", "U1", 1)
            feedback.vote(kb_db, ids[1], "slack", "U2", -1)
            feedback.vote(kb_db, "s0", "slack", "U1", -1)
            feedback.vote(kb_db, "s1", "slack", "U3", 1)
            assert feedback.correct(kb_db, "s0", "the right answer", "slack", "U9")["status"] == "pending"
            assert feedback.correct(kb_db, ids[0], "a better answer", "cli", "op")["status"] == "accepted"
            store.update_job(kb_db, store.create_job(kb_db, "train", "cli:op"), state="promoted")
            store.create_job(kb_db, "nightly", "schedule")

            status, ctype, text = await get("/metrics")
            purged = retention.purge(kb_db, 30)
            _, _, after = await get("/metrics")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)

    assert status == 200 and ctype.startswith("text/plain") and "version=" in ctype
    m = _samples(text)
    cli_llm, slack_llm = (("mode", "retrieval-only"), ("platform", "cli")), (("mode", "llm"), ("platform", "slack"))
    assert m[("bot_answers_total", cli_llm)] == 3 and m[("bot_answers_total", slack_llm)] == 3
    assert m[("bot_answer_latency_seconds_count", cli_llm)] == 3
    le = lambda b: tuple(sorted(slack_llm + (("le", b),)))  # noqa: E731
    assert [m[("bot_answer_latency_seconds_bucket", le(b))] for b in ("0.05", "0.5", "1.0", "2.5", "5.0", "+Inf")] \
        == [1, 1, 2, 2, 3, 3]
    assert m[("bot_answer_latency_seconds_sum", slack_llm)] == pytest.approx(3.73)
    assert m[("bot_votes", (("value", "up"),))] == 2 and m[("bot_votes", (("value", "down"),))] == 2
    assert [m[("bot_corrections", (("status", s),))] for s in ("pending", "accepted", "rejected")] == [1, 1, 0]
    assert [m[("bot_jobs", (("state", s),))] for s in ("queued", "running", "promoted", "failed")] == [1, 0, 1, 0]
    assert m[("bot_adapter_info", (("serving", "base"), ("version", "v0003")))] == 1
    assert m[("bot_database_up", ())] == 1 and m[("bot_model_queue_depth", ())] == 0
    assert m[("bot_model_loaded", ())] == 0 and m[("process_resident_memory_bytes", ())] > 0

    # The purge took the three old Slack answers, their votes and correction: the stored-now gauges fall,
    # the counters and the histogram do not (Prometheus would read a fall as a restart).
    assert (purged["answers"], purged["votes"], purged["corrections"]) == (3, 2, 1)
    a = _samples(after)
    assert a[("bot_answers_total", slack_llm)] == 3 and a[("bot_answers_total", cli_llm)] == 3
    assert all(a[k] == v for k, v in m.items() if k[0].startswith("bot_answer"))
    assert a[("bot_votes", (("value", "up"),))] == 1 and a[("bot_votes", (("value", "down"),))] == 1
    assert a[("bot_corrections", (("status", "pending"),))] == 0


def test_a_database_that_cannot_be_read_is_reported_not_a_failed_scrape(tmp_path):
    from bot.ops import metrics

    db = store.connect(tmp_path / "bot.db")
    db.execute("drop table counters")  # a broken schema: the store's queries fail (a scrape reads counters)
    text = metrics.exposition(metrics.registry(db, lambda: {"queue_depth": 2}))
    m = _samples(text.decode())
    assert m[("bot_database_up", ())] == 0 and m[("bot_model_queue_depth", ())] == 2
    assert not any(name.startswith(("bot_answers", "bot_votes")) for name, _ in m)


# -- retention ---------------------------------------------------------------------------


def _seed(db) -> dict:
    """An old and a recent question, each voted on and corrected; an old delivery key."""
    now = time.time()
    store.record_answer(db, _answer_row("old", created_at=now - 40 * DAY))
    store.record_answer(db, _answer_row("new", created_at=now - 1 * DAY, question="a recent question"))
    for answer_id in ("old", "new"):
        store.record_vote(db, answer_id, "U2", "slack", -1)
        store.record_correction(db, answer_id, "U2", "slack", f"fix for {answer_id}", "accepted")
    with db.conn:
        db.execute("insert into deliveries (key, created_at) values ('slack:Ev1', ?)", [now - 40 * DAY])
    return {"now": now}


def _left(db) -> dict:
    return {t: [r[0] for r in db.execute(f"select {c} from {t} order by 1")]
            for t, c in (("answers", "id"), ("votes", "answer_id"), ("corrections", "answer_id"),
                         ("deliveries", "key"))}


def test_the_daily_purge_task_deletes_old_questions_with_their_feedback_and_audits_counts_only(
        env, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(jobs.huey, "immediate", True)  # the task runs as the worker would, now
    monkeypatch.setenv("BOT_RETENTION_DAYS", "30")
    db = store.connect(env.db_path)
    _seed(db)
    # The worker's huey runs it daily at 04:30 (what its consumer asks each minute), and at no other time.
    due = lambda h, m: {t.name for t in jobs.huey.read_periodic(datetime(2026, 5, 1, h, m))}  # noqa: E731
    assert "purge_old" in due(4, 30)
    assert not any("purge_old" in due(h, m) for h, m in ((4, 31), (3, 30), (0, 0), (12, 30)))

    retention.purge_old()  # huey keeps no result for a periodic task: the database and the audit row tell

    assert _left(db) == {"answers": ["new"], "votes": ["new"], "corrections": ["new"], "deliveries": []}
    (row,) = store.audit_log(db, action="purge")
    assert (row["platform"], row["user"], row["result"]) == ("system", "retention", "ok")
    assert json.loads(row["detail"]) == {"answers": 1, "votes": 1, "corrections": 1}
    assert SECRET_QUESTION not in json.dumps(row) and SECRET_QUESTION not in caplog.text
    assert "1 answers, 1 votes, 1 corrections" in caplog.text


def test_retention_zero_keeps_everything(env, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(jobs.huey, "immediate", True)
    monkeypatch.setenv("BOT_RETENTION_DAYS", "0")
    db = store.connect(env.db_path)
    _seed(db)
    before = _left(db)
    retention.purge_old()
    assert "retention purge skipped: BOT_RETENTION_DAYS=0" in caplog.text
    assert cli.main(["purge"]) == 0  # the CLI twin, on the setting: nothing either
    assert _left(db) == before and store.audit_log(db, action="purge") == []


def test_the_purge_command_takes_days_prints_counts_and_refuses_nonsense(env, capsys):
    db = store.connect(env.db_path)
    _seed(db)
    assert cli.main(["purge", "--days", "0"]) == 2 and cli.main(["purge", "--days", "-3"]) == 2
    assert "--days must be at least 1" in capsys.readouterr().err
    assert _left(db)["answers"] == ["new", "old"]

    assert cli.main(["purge", "--days", "30", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["days"], out["answers"], out["votes"], out["corrections"]) == (30, 1, 1, 1)
    assert out["cutoff"] == pytest.approx(time.time() - 30 * DAY, abs=60)
    assert _left(db)["answers"] == ["new"]
    (row,) = store.audit_log(db, action="purge")
    assert (row["platform"], row["user"]) == ("cli", "operator")


# -- structured logs ------------------------------------------------------------------------


def test_json_lines_carry_time_level_logger_message_extra_fields_and_tracebacks():
    out = io.StringIO()
    handler = logs.setup("json", stream=out)
    try:
        log = logging.getLogger("bot.test")
        log.info("job %s finished", 7, extra={"job": 7, "verdict": "promoted", "path": Path("/tmp/x")})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed")
        logs.setup("text", stream=out)
        log.warning("plain %s", "text")
    finally:
        logging.getLogger().removeHandler(handler)
    first, second, third = out.getvalue().splitlines()[:2] + [out.getvalue().splitlines()[-1]]
    a = json.loads(first)
    assert (a["level"], a["logger"], a["message"], a["job"], a["verdict"], a["path"]) == \
        ("INFO", "bot.test", "job 7 finished", 7, "promoted", "/tmp/x")
    assert datetime.fromisoformat(a["time"]).utcoffset().total_seconds() == 0
    b = json.loads(second)
    assert b["level"] == "ERROR" and "ValueError: boom" in b["exc_info"]
    assert third.endswith("WARNING bot.test: plain text")
    with pytest.raises(config.SettingError, match="BOT_LOG_FORMAT"):
        logs.setup("xml")


def _run_until(cmd: list[str], env: dict, ready, timeout: float = 30.0) -> list[str]:
    """Start `python -m bot ...`, wait for `ready()`, stop it as a platform does (SIGTERM); its stderr lines."""
    proc = subprocess.Popen([sys.executable, "-m", "bot", *cmd], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return [line for line in err.splitlines() if line.strip()]


def test_serve_and_worker_log_one_json_object_per_line(kb_db, tmp_path):
    import urllib.request

    port = _free_port()
    env = {**os.environ, "BOT_DB": str(tmp_path / "bot.db"), "BOT_MODEL": "none", "BOT_LOG_FORMAT": "json",
           "PORT": str(port), "BOT_HUEY_DB": str(tmp_path / "huey.db"), "BOT_ADAPTERS_DIR": str(tmp_path / "a"),
           "BOT_KNOWLEDGE_DIR": str(tmp_path / "kb")}
    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "DISCORD_TOKEN", "BOT_REDIS_URL"):
        env.pop(name, None)

    def serve_ready():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
                return r.status == 200
        except OSError:
            return False

    serve_lines = _run_until(["serve"], env, serve_ready)
    worker_lines = _run_until(["worker"], env, lambda: store.get_meta(kb_db, jobs.HEARTBEAT_KEY) is not None)

    for lines in (serve_lines, worker_lines):
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    serve_records = [json.loads(line) for line in serve_lines]
    assert any(r["logger"] == "bot.ops.serve" and r["level"] == "WARNING" and "no chat platform" in r["message"]
               for r in serve_records)
    assert any(r["logger"].startswith("aiohttp.access") and "/metrics" in r["message"] for r in serve_records)
    assert any(r["logger"].startswith("huey") for r in map(json.loads, worker_lines))
