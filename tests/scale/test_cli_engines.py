"""The CLI flows on both engines, in process through `bot.cli.main`: index, ask, feedback, jobs.
The same commands with BOT_DB a SQLite file and then a PostgreSQL URL must give the same answers
(retrieval-only: BOT_MODEL=none, so the comparison is about the database, not sampling)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bot import cli, store
from bot.store import postgres

QUESTIONS = ["什么是天使投资？", "How do I apply for leave?"]


def _flows(capsys, monkeypatch, target) -> dict:
    monkeypatch.setenv("BOT_DB", str(target))

    def run(*argv):
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        assert code == 0, (argv, err)
        return out

    run("index")
    again = run("index")  # a second run finds nothing changed
    answers = [json.loads(run("ask", q, "--json")) for q in QUESTIONS]
    fb = json.loads(run("feedback", answers[0]["id"], "--down", "--correction", "天使投资是早期投资[1]。", "--json"))
    jobs = json.loads(run("jobs", "--json"))
    db = store.connect(target)
    stored = store.answer(db, answers[0]["id"])
    again = re.sub(r"\([\d.]+ s\)", "", again)  # the run's duration differs, nothing else
    return {"reindex": again, "answers": [(a["mode"], a["answer"], a.get("citations")) for a in answers],
            "feedback": {k: v for k, v in fb.items() if k != "answer_id"}, "jobs": jobs,
            "stored_question": stored["question"], "votes": store.operations_counts(db)["votes"],
            "corrections": store.operations_counts(db)["corrections"]}


def test_index_ask_feedback_jobs_same_on_sqlite_and_postgresql(env, pg_url, capsys, monkeypatch):
    on_sqlite = _flows(capsys, monkeypatch, env.db_path)
    on_postgres = _flows(capsys, monkeypatch, pg_url)
    assert on_postgres == on_sqlite
    assert on_sqlite["answers"][0][1] and on_sqlite["votes"] == {-1: 1}
    assert on_sqlite["corrections"]["accepted"] == 1  # filed and accepted at once from the CLI


# --- the learning loop and the operator's commands, on the tiny model -------------------------------

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = '{"question": "什么是天使投资？", "answer": "天使投资是指个人投资者对初创企业的早期投资。"}\n'
JOB_KEYS = ("id", "kind", "state", "version", "verdict", "steps", "requested_by", "error")


def _loop_flows(capsys, monkeypatch, target, work: Path) -> dict:
    """index, ask (tiny model), feedback, train --wait, adapters list/rollback/promote, forget, purge,
    and a job run by a `python -m bot worker` process; what each printed, normalised (ids and times)."""
    from bot.learning import registry

    work.mkdir()
    for name, value in {"BOT_DB": target, "BOT_ADAPTERS_DIR": work / "adapters", "BOT_HUEY_DB": work / "huey.db"}.items():
        monkeypatch.setenv(name, str(value))

    def run(*argv, code=0):
        got = cli.main(list(argv))
        out, err = capsys.readouterr()
        assert got == code, (argv, out, err)
        return json.loads(out) if "--json" in argv else out

    run("index")
    first = run("ask", "什么是天使投资？", "--json")
    fb = run("feedback", first["id"], "--down", "--correction", "天使投资是早期投资[1]。", "--json")
    trained = run("train", "--wait", "--json")
    listed = run("adapters", "list", "--json")
    again = run("ask", "什么是天使投资？", "--json")
    rolled = run("adapters", "rollback", "--json")
    promoted = run("adapters", "promote", trained["version"], "--json")
    db = store.connect(target)
    # Someone's question to forget, and an old one (with a vote) for the retention purge.
    store.record_answer(db, {**store.answer(db, first["id"]), "id": "x-forget", "platform": "slack", "user": "U7"})
    store.record_answer(db, {**store.answer(db, first["id"]), "id": "x-old", "user": "U8", "created_at": 1.0})
    store.record_vote(db, "x-old", "U9", "slack", 1)
    forgot = run("forget", "slack:U7", "--json")
    purged = run("purge", "--days", "1", "--json")

    # A job queued by another process (no worker yet: huey's queue in BOT_HUEY_DB) and run by a worker process.
    submitted = subprocess.run([sys.executable, "-c", "from bot import config, store; from bot.learning import jobs; "
                                "print(jobs.submit(store.connect(config.Settings.load().db), 'cli:operator'))"],
                               cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    queued = int(submitted.stdout.split()[-1])
    log = open(work / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "bot", "worker"], cwd=ROOT, env=dict(os.environ),
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while store.job(db, queued)["state"] not in store.FINAL_STATES:
            assert worker.poll() is None and time.monotonic() < deadline, (work / "worker.log").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(30)
    by_worker = store.job(db, queued)
    assert by_worker["runner"].split(":")[1] == str(worker.pid)  # run by the worker process, not here
    listing = run("jobs", "--json")
    if isinstance(db, postgres.PostgresDatabase):
        db.close()
    return {
        "first": (first["mode"], first["answer"], first["citations"], first["adapter"]),
        "feedback": {k: v for k, v in fb.items() if k != "answer_id"},
        "train": {k: v for k, v in trained.items() if k != "job"},
        "adapters": [(v["version"], v["verdict"], v["weights"]) for v in listed["versions"]] + [listed["in_service"]],
        # Training is seeded (the LoRA init too), so the same data trains the same adapter on both engines.
        "data_hash": registry.card(work / "adapters", trained["version"])["data"]["hash"],
        "again": (again["adapter"], again["answer"]), "rollback": rolled, "promote": promoted,
        "forget": forgot, "purge": {k: v for k, v in purged.items() if k != "cutoff"},
        "worker_job": (by_worker["state"], by_worker["verdict"]),
        "jobs": [{k: j.get(k) for k in JOB_KEYS} for j in listing["jobs"]],
    }


def test_train_adapters_forget_purge_and_worker_same_on_sqlite_and_postgresql(env, tiny_model_dir, pg_url, capsys,
                                                                             monkeypatch):
    from bot.learning import jobs

    golden = env.tmp / "golden.jsonl"
    golden.write_text(GOLDEN, encoding="utf-8")
    for name, value in {"BOT_MODEL": "tiny", "BOT_CACHE_DIR": tiny_model_dir.parent, "BOT_GOLDEN_SET": golden,
                        "BOT_TRAIN_STEPS": 2, "BOT_GATE_NLL_TOLERANCE": 100, "BOT_GATE_F1_TOLERANCE": 1,
                        "BOT_GATE_MIN_GAIN": -100, "BOT_LOG_FORMAT": "text",
                        "PYTHONPATH": ROOT}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(jobs.huey, "immediate", True)
    on_sqlite = _loop_flows(capsys, monkeypatch, env.tmp / "loop.db", env.tmp / "sqlite")
    monkeypatch.setattr(jobs.huey, "immediate", True)
    on_postgres = _loop_flows(capsys, monkeypatch, pg_url, env.tmp / "postgresql")
    assert on_postgres == on_sqlite
    # What the flows did, so that two engines failing alike cannot pass.
    assert on_sqlite["train"] == {"version": "v0001", "verdict": "promoted"}
    assert on_sqlite["again"][0] == "v0001" and on_sqlite["again"][1] and on_sqlite["rollback"] == {"in_service": None}
    assert on_sqlite["forget"]["answers"] == 1 and on_sqlite["purge"]["answers"] == 1
    assert on_sqlite["purge"]["votes"] == 1 and on_sqlite["worker_job"][0] == "skipped"


# --- serve on PostgreSQL: one question and one vote through the Slack HTTP front end ------------------

SECRET = "engines-signing-secret"


def test_serve_on_postgresql_answers_a_question_and_stores_a_vote(env, pg_url, capsys, monkeypatch):
    import asyncio
    import signal
    import socket

    import aiohttp

    from tools import serving
    from slack_recorder import Recorder, event_body, interaction_body, post_signed

    monkeypatch.setenv("BOT_DB", pg_url)
    assert cli.main(["index"]) == 0
    capsys.readouterr()
    db = store.connect(pg_url)
    fixtures = ROOT / "tests" / "fixtures" / "slack"
    mention = json.loads((fixtures / "event_app_mention.json").read_text(encoding="utf-8"))
    vote = json.loads((fixtures / "block_actions_vote.json").read_text(encoding="utf-8"))

    async def scenario():
        recorder = await Recorder().start()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        environ = {**os.environ, "PORT": str(port), "SLACK_SIGNING_SECRET": SECRET, "SLACK_BOT_TOKEN": "xoxb-engines",
                   "SLACK_API_URL": recorder.api_url, "BOT_LOG_FORMAT": "text", "PYTHONPATH": str(ROOT)}
        for name in ("SLACK_APP_TOKEN", "DISCORD_TOKEN", "BOT_REDIS_URL"):
            environ.pop(name, None)
        proc = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=ROOT, env=environ, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=open(env.tmp / "serve.log", "w"))
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                try:
                    await serving.wait_ready(session, port, proc)
                except (RuntimeError, TimeoutError) as e:
                    raise AssertionError((env.tmp / "serve.log").read_text()[-3000:]) from e
                status, _, _ = await post_signed(session, f"{url}/slack/events", SECRET, event_body(mention),
                                                 json_body=True)
                assert status == 200
                deadline = time.monotonic() + 60
                while not (rows := list(db.query("select id, question from answers where user = ?", ["U0ALICE"]))):
                    assert time.monotonic() < deadline, (env.tmp / "serve.log").read_text()[-3000:]
                    await asyncio.sleep(0.2)
                vote["actions"][0]["value"] = rows[0]["id"]
                status, _, _ = await post_signed(session, f"{url}/slack/events", SECRET, interaction_body(vote))
                assert status == 200
                deadline = time.monotonic() + 30
                while not store.votes(db, rows[0]["id"]):
                    assert time.monotonic() < deadline, (env.tmp / "serve.log").read_text()[-3000:]
                    await asyncio.sleep(0.2)
                return rows, recorder.calls
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            await recorder.close()

    rows, calls = asyncio.run(scenario())
    (answer,) = rows
    assert "边缘计算" in answer["question"]
    assert [(v["user"], v["value"]) for v in store.votes(db, answer["id"])] == [("U0ALICE", -1)]
    assert store.operations_counts(db)["votes"] == {-1: 1}
    threads = [c for c in calls if c.method in ("chat.postMessage", "chat.update")]
    assert threads and any(store.answer(db, answer["id"])["answer"][:20] in str(c.data.get("text", "")) for c in threads)
    assert "Traceback" not in (env.tmp / "serve.log").read_text()
    db.close()
