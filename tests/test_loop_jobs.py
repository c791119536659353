"""Training jobs: one run per job id, cancel, recovery after a killed worker (simulated and real), the schedule.

Real tiny model, real SQLite, huey in immediate mode; trainings are a few
steps long here, since these tests check the job machinery, not learning.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from loop_harness import tiny_loop

from bot.answering import pipeline
from bot.learning import feedback, registry
from bot.learning.queue import _SqliteHuey
from bot.llm import generation
from bot import config, store

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = [{"question": "什么是天使投资？", "answer": "天使投资是指个人投资者对初创企业的早期投资。"},
          {"question": "生成对抗网络由哪两部分组成？", "answer": "生成对抗网络由生成器和判别器两个神经网络组成。"}]


@pytest.fixture
def loop(tiny_model_dir, kb_db, tmp_path, monkeypatch):
    return tiny_loop(tiny_model_dir, kb_db, tmp_path, monkeypatch, GOLDEN)


def _feedback(db, n: int = 2) -> list[str]:
    """n answered questions, each corrected by the operator (no model needed to record them)."""
    from bot.knowledge import retrieval

    searcher = retrieval.Searcher(db)
    answerer = pipeline.Answerer(db, searcher, None)
    ids = []
    for q in ["什么是天使投资？", "DeepMind最著名的成就是什么？", "EfficientNet有什么特点？"][:n]:
        a = answerer.ask(q, pipeline.Context("slack", "U1", "C1"))
        feedback.correct(db, a.id, f"{q}的答案[1]。", "cli", "operator")
        ids.append(a.id)
    return ids


def test_a_job_id_runs_once_however_often_it_is_enqueued(loop):
    _feedback(loop.db)
    job_id = loop.jobs.submit(loop.db, "cli:op", enqueue=False)
    # QLoRA proper: the base loaded in 4-bit NF4 (the tiny preset's default is float32).
    first = loop.jobs.run_inline(loop.db, job_id, config.Settings.load(), quantize=True)
    second = loop.jobs.train_job(job_id).get()  # the huey task, enqueued for the same id
    third = loop.jobs.train_job(job_id).get()
    assert first["ran"] is True and first["state"] in ("promoted", "rejected")
    assert second["ran"] is third["ran"] is False and second["state"] == first["state"]
    assert third["started_at"] == first["started_at"]
    assert registry.versions(loop.adapters) == ["v0001"]
    assert registry.card(loop.adapters, "v0001")["base_model"]["quantized_4bit"] is True
    assert [j["id"] for j in loop.jobs.listing(loop.db)] == [job_id]


def test_nothing_to_learn_is_skipped(loop):
    job_id = loop.jobs.submit(loop.db, "cli:op")
    row = store.job(loop.db, job_id)
    assert row["state"] == "skipped" and row["version"] is None
    assert not loop.adapters.exists() or registry.versions(loop.adapters) == []


def test_cancel_a_queued_job_at_once_and_a_running_one_at_its_next_step(loop, monkeypatch):
    _feedback(loop.db)
    queued = loop.jobs.submit(loop.db, "cli:op", enqueue=False)
    assert loop.jobs.cancel(loop.db, queued, "cli:op")["state"] == "cancelled"
    assert loop.jobs.run_inline(loop.db, queued, config.Settings.load())["ran"] is False
    with pytest.raises(loop.jobs.JobError, match="already finished"):
        loop.jobs.cancel(loop.db, queued, "cli:op")

    monkeypatch.setenv("BOT_TRAIN_STEPS", "100000")
    running = loop.jobs.submit(loop.db, "cli:op", enqueue=False)
    done = {}
    worker = threading.Thread(target=lambda: done.update(
        loop.jobs.run_inline(store.connect(loop.env["BOT_DB"]), running, config.Settings.load())))
    worker.start()
    deadline = time.monotonic() + 60
    while (store.job(loop.db, running)["step"] or 0) < 2:
        assert time.monotonic() < deadline and worker.is_alive(), store.job(loop.db, running)
        time.sleep(0.05)
    assert loop.jobs.cancel(loop.db, running, "slack:UADMIN")["state"] == "cancelling"
    worker.join(60)
    row = store.job(loop.db, running)
    assert row["state"] == "cancelled" and "slack:UADMIN" in row["error"] and row["step"] < 100000
    assert done["state"] == "cancelled"
    assert generation.read_pointer(loop.adapters) is None
    assert list(loop.adapters.iterdir()) == []  # neither a version nor a .tmp folder


def test_recover_marks_a_job_left_by_a_dead_worker_failed_and_removes_its_folder(loop):
    generation.set_pointer(loop.adapters, None)
    job_id = loop.jobs.submit(loop.db, "slack:UADMIN", "slack", "C1", "T1", enqueue=False)
    store.claim_job(loop.db, job_id)
    store.update_job(loop.db, job_id, state="training", version="v0007", runner="gone-host:123")
    tmp = loop.adapters / ".tmp-v0007"
    tmp.mkdir(parents=True)
    (tmp / "adapter_config.json").write_text("{}")
    pointer = (loop.adapters / "current").read_text()

    failed = loop.jobs.recover(loop.db, loop.adapters)
    assert [(r["id"], r["state"], r["error"]) for r in failed] == [
        (job_id, "failed", "worker stopped during training")]
    assert not tmp.exists() and (loop.adapters / "current").read_text() == pointer
    assert "worker stopped during training" in store.outbox(loop.db, job_id)[-1]["text"]
    assert loop.jobs.recover(loop.db, loop.adapters) == []


def test_a_job_leased_by_a_worker_on_another_host_is_left_alone_until_its_lease_expires(loop):
    """Liveness is the lease in the shared database, not a pid on this host: a job renewed by a worker
    elsewhere is never marked failed, whatever its runner says; once renewals stop, it is recovered."""
    job_id = loop.jobs.submit(loop.db, "slack:UADMIN", "slack", "C1", "T1", enqueue=False)
    owner = "gpu-host-2:4242:feedbeef"  # no such host here, and no such pid: the old check called it dead
    assert store.acquire_lease(loop.db, f"job:{job_id}", owner, ttl_s=0.5)
    store.claim_job(loop.db, job_id)
    store.update_job(loop.db, job_id, state="training", version="v0003", runner=owner)
    tmp = loop.adapters / ".tmp-v0003"
    tmp.mkdir(parents=True)

    assert loop.jobs.recover(loop.db, loop.adapters) == [] and loop.jobs.worker_alive(loop.db)
    assert store.job(loop.db, job_id)["state"] == "training" and tmp.is_dir()  # its folder is in use
    # Another process cannot take the job while the lease is held, so it is not run twice.
    assert loop.jobs.execute(loop.db, job_id, config.Settings.load())["ran"] is False
    assert store.renew_lease(loop.db, f"job:{job_id}", owner, ttl_s=0.5)  # the remote worker's heartbeat

    time.sleep(0.6)  # the remote worker stops renewing: killed, frozen or cut off
    failed = loop.jobs.recover(loop.db, loop.adapters, at_start=False)  # the periodic pass of any worker
    assert [(r["id"], r["state"], r["error"]) for r in failed] == [
        (job_id, "failed", "worker stopped during training")]
    assert not tmp.exists()
    assert not store.renew_lease(loop.db, f"job:{job_id}", "someone-else", ttl_s=1)


def _wait(what, check, proc, timeout=90.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, f"the worker exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_recover_after_the_worker_is_sigkilled_mid_training(loop):
    """The real thing: a huey consumer (`bot.ops.worker.main`) in another process, the job sent
    through the SQLite queue, SIGKILL while it trains, then a new worker recovers at start."""
    _feedback(loop.db, 1)
    env = {**os.environ, **loop.env, "BOT_TRAIN_STEPS": "100000", "BOT_LEASE_TTL": "3"}
    worker = [sys.executable, "-c", "from bot.ops import worker; worker.main()"]
    run = dict(env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = subprocess.Popen(worker, **run)
    try:
        _wait("the worker to start", lambda: store.get_meta(loop.db, loop.jobs.HEARTBEAT_KEY), first)
        out = subprocess.run([sys.executable, "-c", "from bot import config, store; from bot.learning import jobs; "
                              "print(jobs.submit(store.connect(config.Settings.load().db), 'cli:op'))"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        job_id = int(out.stdout.strip().splitlines()[-1])
        _wait("training", lambda: (store.job(loop.db, job_id)["step"] or 0) >= 3, first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert store.job(loop.db, job_id)["state"] == "training"
    assert store.lease(loop.db, f"job:{job_id}")["owner"] == store.job(loop.db, job_id)["runner"]
    # The dead worker's lease runs out (3 s after its last heartbeat); a restart before that would
    # leave the job alone and its periodic pass would recover it a minute later.
    deadline = time.monotonic() + 10
    while store.lease(loop.db, f"job:{job_id}")["live"]:
        assert time.monotonic() < deadline, "the killed worker's lease did not expire"
        time.sleep(0.1)
    assert (loop.adapters / ".tmp-v0001").is_dir() and registry.versions(loop.adapters) == []
    queue = _SqliteHuey("bot", filename=loop.env["BOT_HUEY_DB"])
    assert queue.is_locked("gpu")  # the killed worker still holds the GPU lock

    second = subprocess.Popen(worker, **run)
    try:
        # recover() marks the job first, then removes the folder and frees the lock.
        _wait("recovery", lambda: store.job(loop.db, job_id)["state"] == "failed" and not queue.is_locked("gpu")
              and not (loop.adapters / ".tmp-v0001").exists(), second)
    finally:
        second.send_signal(signal.SIGINT)  # huey's graceful stop
        second.wait(30)
    row = store.job(loop.db, job_id)
    assert row["error"] == "worker stopped during training" and row["finished_at"]
    assert not (loop.adapters / ".tmp-v0001").exists() and generation.read_pointer(loop.adapters) is None
    assert store.get_meta(loop.db, loop.jobs.HEARTBEAT_KEY)


def test_schedule_runs_only_with_enough_new_feedback_and_new_data(loop, monkeypatch):
    assert loop.jobs.cron("0 3 * * *") == {"minute": "0", "hour": "3", "day": "*", "month": "*",
                                           "day_of_week": "*"}
    for bad in ("0 3 * *", "61 3 * * *"):
        with pytest.raises(ValueError):
            loop.jobs.cron(bad)

    _feedback(loop.db, 2)
    not_enough = loop.jobs.nightly(loop.db, loop.adapters, min_feedback=5)
    assert not_enough == {"ran": False, "job": None, "reason": "2 new accepted example(s); at least 5 needed"}

    monkeypatch.setenv("BOT_GATE_MIN_GAIN", "100")  # no candidate can pass: the data stays new
    ran = loop.jobs.nightly(loop.db, loop.adapters, min_feedback=2)
    assert ran["ran"] is True and store.job(loop.db, ran["job"])["state"] == "rejected"
    assert store.job(loop.db, ran["job"])["kind"] == "nightly"
    again = loop.jobs.nightly(loop.db, loop.adapters, min_feedback=2)
    assert again["ran"] is False and again["reason"].endswith("was already trained as v0001")

    _feedback(loop.db, 3)  # one more question: new data, a new hash
    busy = loop.jobs.submit(loop.db, "cli:op", enqueue=False)
    assert loop.jobs.nightly(loop.db, loop.adapters, min_feedback=2)["reason"] == f"job #{busy} is already queued"
