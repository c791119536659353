"""Training jobs on a real redis-server (BOT_REDIS_URL): huey's RedisHuey between real processes.

A job submitted by one process is run by a `python -m bot worker` process;
two workers share the GPU lock in Redis (a second job waits while the first
trains); cancel reaches a running job; a worker killed mid-training is
recovered by the surviving worker (its lease expires, the periodic pass
marks the job failed and frees the lock), with no pid or hostname check.
The tiny model trains for real; BOT_TRAIN_STEPS is huge so a job runs until
cancelled or killed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loop_harness import tiny_loop

from bot import store
from bot.learning import feedback

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = [{"question": "什么是天使投资？", "answer": "天使投资是指个人投资者对初创企业的早期投资。"}]
WORKER = [sys.executable, "-m", "bot", "worker"]


@pytest.fixture
def loop(tiny_model_dir, kb_db, tmp_path, monkeypatch, redis_clean):
    monkeypatch.setenv("BOT_REDIS_URL", redis_clean)
    lp = tiny_loop(tiny_model_dir, kb_db, tmp_path, monkeypatch, GOLDEN)
    lp.env.update(BOT_REDIS_URL=redis_clean, BOT_LEASE_TTL="2", BOT_LOG_FORMAT="text")
    from huey import RedisHuey

    lp.queue = RedisHuey("bot", url=redis_clean)  # the same queue the processes use, to look at its lock
    return lp


def _feedback(db, n: int) -> None:
    from bot.answering import pipeline
    from bot.knowledge import retrieval

    answerer = pipeline.Answerer(db, retrieval.Searcher(db), None)
    for q in ["什么是天使投资？", "DeepMind最著名的成就是什么？"][:n]:
        a = answerer.ask(q, pipeline.Context("slack", "U1", "C1"))
        feedback.correct(db, a.id, f"{q}的答案[1]。", "cli", "operator")


def _start(loop, name: str, **env) -> subprocess.Popen:
    log = open(loop.tmp / f"{name}.log", "w")
    return subprocess.Popen(WORKER, env={**os.environ, **loop.env, **env}, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)


def _submit(loop, **env) -> int:
    """A job submitted by another process (as `train` or `/train` would), through the queue in Redis."""
    out = subprocess.run([sys.executable, "-c", "from bot import config, store; from bot.learning import jobs; "
                          "print(jobs.submit(store.connect(config.Settings.load().db), 'cli:op'))"],
                         env={**os.environ, **loop.env, **env}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def _wait(loop, what, check, procs, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not check():
        for p in procs:
            assert p.poll() is None, f"a worker exited while waiting for {what}: " + "".join(
                (loop.tmp / f).read_text()[-2000:] for f in ("a.log", "b.log") if (loop.tmp / f).exists())
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _stop(*procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)  # huey's graceful stop
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def test_a_job_submitted_by_one_process_is_run_by_a_worker_process_through_redis(loop):
    worker = _start(loop, "a")
    try:
        _wait(loop, "the worker to start", lambda: store.get_meta(loop.db, "worker_seen_at"), [worker])
        job = _submit(loop)
        _wait(loop, "the job to run", lambda: store.job(loop.db, job)["state"] in store.FINAL_STATES, [worker], 60)
    finally:
        _stop(worker)
    row = store.job(loop.db, job)
    assert row["state"] == "skipped"  # nothing to learn yet: run, and decided by the worker
    assert row["runner"].split(":")[1] == str(worker.pid)  # the worker process ran it, not the submitter
    assert not Path(loop.env["BOT_HUEY_DB"]).exists()  # the queue was Redis, not huey's SQLite file
    assert store.lease(loop.db, f"job:{job}") is None  # released when done


def test_two_workers_share_the_gpu_lock_cancel_and_recovery_after_a_kill(loop):
    _feedback(loop.db, 2)
    big = {"BOT_TRAIN_STEPS": "100000"}
    a, b = _start(loop, "a", **big), _start(loop, "b", **big)
    workers = [a, b]
    try:
        _wait(loop, "the workers to start", lambda: store.get_meta(loop.db, "worker_seen_at"), workers)
        first = _submit(loop, **big)
        _wait(loop, "the first job to train", lambda: (store.job(loop.db, first)["step"] or 0) >= 2, workers)
        assert loop.queue.is_locked("gpu")
        runner = int(store.job(loop.db, first)["runner"].split(":")[1])
        assert runner in (a.pid, b.pid)

        # The other worker is idle, takes the second job, and finds the GPU lock held: huey retries it later.
        second = _submit(loop, **big)
        _wait(loop, "the second job's refusal", lambda: loop.queue.scheduled_count() >= 1, workers, 30)
        assert store.job(loop.db, second)["state"] == "queued"
        assert (store.job(loop.db, first)["step"] or 0) >= 2 and store.job(loop.db, first)["state"] == "training"

        from bot.learning import jobs

        assert jobs.cancel(loop.db, first, "slack:UADMIN")["state"] == "cancelling"
        _wait(loop, "the first job to stop", lambda: store.job(loop.db, first)["state"] == "cancelled", workers, 60)
        assert jobs.cancel(loop.db, second, "slack:UADMIN")["state"] == "cancelled"  # still queued: at once
        _wait(loop, "the lock to be released", lambda: not loop.queue.is_locked("gpu"), workers, 30)

        third = _submit(loop, **big)
        _wait(loop, "the third job to train", lambda: (store.job(loop.db, third)["step"] or 0) >= 2, workers)
        victim_pid = int(store.job(loop.db, third)["runner"].split(":")[1])
        victim = a if victim_pid == a.pid else b
        survivor = b if victim is a else a
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        assert store.job(loop.db, third)["state"] == "training" and loop.queue.is_locked("gpu")
        # The survivor's periodic pass (each minute) finds the lease expired 2 s after the last heartbeat.
        _wait(loop, "the survivor to recover the job",
              lambda: store.job(loop.db, third)["state"] == "failed" and not loop.queue.is_locked("gpu"),
              [survivor], 100)
    finally:
        _stop(*workers)
    assert store.job(loop.db, third)["error"].startswith("worker stopped during training")
    assert store.job(loop.db, second)["state"] == "cancelled" and store.job(loop.db, second)["started_at"] is None
    assert not list(loop.adapters.glob(".tmp-*"))  # the killed job's half-written folder is gone
