"""Training jobs on huey: submit, run once under the GPU lock, cancel, recover, and the scheduled retrain.

Run the worker as `python -m bot worker` (or `huey_consumer bot.ops.worker.huey -w 1`): the huey
instance is bot.learning.queue's, shared with the retention purge, and bot.ops.worker registers both.

A job is a row in `jobs` (queued -> running -> training -> evaluating ->
promoted | rejected | skipped | failed | cancelled) and a huey task that
carries only its id. The task claims the row (queued -> running) before it
does anything, so a job id enqueued twice, or run inline and by a worker,
runs once. The "gpu" lock keeps two trainings off one GPU. What a job has to
say goes to the `outbox` table, which the bot process posts to the thread
that asked, so the worker never holds a chat token. A running job holds
the lease `job:<id>` (bot.learning.leases); `recover` fails the jobs whose
lease expired, whatever host ran them.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from huey import crontab
from huey.exceptions import TaskLockedException

from bot import config, store
from bot.learning import evaluation, fitting, forgetting, registry, retrain, snapshot
from bot.learning import leases, queue
from bot.learning.queue import LOCK, cron, huey

log = logging.getLogger(__name__)
HEARTBEAT_KEY = "worker_seen_at"


class JobError(Exception):
    """A job request that cannot be done; the message says why."""


def _db(settings: config.Settings):
    return store.connect(settings.db)


def _lease(job_id: int) -> str:
    return f"job:{job_id}"


def _alive(db, job_id: int) -> bool:
    """Whether the process that runs a job still renews its lease, on whatever host it runs (see bot.learning.leases)."""
    return leases.live(db, _lease(job_id))


def _say(db, job: dict, text: str) -> None:  # to the thread that asked; the CLI prints results itself
    if job.get("platform") and job["platform"] != "cli" and job.get("channel"):
        store.post_outbox(db, job["id"], job["platform"], job["channel"], job.get("thread") or "", text)


def _settings(s: config.Settings, overrides: dict) -> dict:
    out = {"preset": s.model, "adapters_dir": s.adapters_dir,
           "cache_dir": s.cache_dir, "golden": s.golden_set,
           "steps": s.train_steps or None,
           "k": s.search_k, "min_gain": s.gate_min_gain,
           "f1_tol": s.gate_f1_tolerance, "nll_tol": s.gate_nll_tolerance}
    return {**out, **overrides}


def _not_run(db, job_id: int) -> dict:
    if (row := store.job(db, job_id)) is None:
        raise JobError(f"no job #{job_id}")
    return {**row, "ran": False}


def execute(db, job_id: int, settings: config.Settings, **overrides) -> dict:
    """Run job `job_id` in this process if it is still queued; the final job row (plus `ran`).

    The job's lease is taken before the job is claimed and renewed while it runs, so no recovery, on any
    host, ever sees the job running without a live lease until this process stops renewing it."""
    lease = leases.Lease(db, _lease(job_id), settings.lease_ttl)
    if not lease.acquire():  # another process holds this job
        return _not_run(db, job_id)
    with lease:
        if not store.claim_job(db, job_id):
            return _not_run(db, job_id)
        store.update_job(db, job_id, runner=lease.owner)
        return _execute(db, job_id, settings, **overrides)


def _execute(db, job_id: int, settings: config.Settings, **overrides) -> dict:
    job = store.job(db, job_id)
    settings = _settings(settings, overrides)
    last_write = [0.0]

    def progress(event: dict) -> None:
        if "state" in event:
            store.update_job(db, job_id, state=event["state"], **{k: event[k] for k in ("version", "steps", "data_hash")
                                                                   if k in event})
            if event["state"] == "training":
                c = event["counts"]
                _say(db, job, f"Training job #{job_id} started: {c['train']} examples ({c['heldout']} held out, "
                              f"{c['replayed']} replayed), {event['steps']} steps from "
                              f"{event['parent'] or 'the base model'} → {event['version']}.")
            elif event["state"] == "evaluating":
                _say(db, job, f"Job #{job_id}: training done; evaluating {event['version']} "
                              "against the adapter in service.")
        else:
            now = time.monotonic()
            if now - last_write[0] > 1.0 or event["step"] == event["steps"]:  # a write a second is plenty
                last_write[0] = now
                store.update_job(db, job_id, step=event["step"], steps=event["steps"], loss=round(event["loss"], 4))
            if event["step"] == event["steps"] // 2:
                _say(db, job, f"Job #{job_id}: step {event['step']}/{event['steps']}, loss {event['loss']:.3f}.")

    stop = lambda: bool(store.job_cancel_requested(db, job_id))  # noqa: E731
    try:
        result = retrain.run(db, job_id, progress=progress, should_stop=stop, **settings)
    except retrain.Cancelled as e:
        by = store.job_cancel_requested(db, job_id)
        store.update_job(db, job_id, state="cancelled", verdict="cancelled", error=f"cancelled by {by}: {e}")
        _say(db, job, f"Job #{job_id} cancelled by {by} ({e}); the adapter in service is unchanged.")
        return {**store.job(db, job_id), "ran": True}
    except Exception as e:  # a failed job must say why, and leave the pointer alone
        log.exception("job %s failed", job_id)
        store.update_job(db, job_id, state="failed", error=f"{type(e).__name__}: {e}"[:1000])
        _say(db, job, f"Job #{job_id} failed: {type(e).__name__}: {str(e)[:300]}")
        return {**store.job(db, job_id), "ran": True}
    verdict = result["verdict"]
    store.update_job(db, job_id, state=verdict, verdict=verdict, version=result.get("version"),
                     data_hash=result.get("data_hash"), result=json.dumps(result, ensure_ascii=False))
    moved = ""
    try:  # versions trained on forgotten data: their weights go once a clean version serves
        cleaned = forgetting.after_job(db, settings["adapters_dir"], result, retrainer(db), by=f"job:{job_id}")
        if cleaned.get("fallback"):
            clean = "the base model" if cleaned["fallback"] == "base" else cleaned["fallback"]
            moved = f"the version in service had learned from forgotten data, so {clean} (the newest clean one) serves now."
    except Exception:
        log.exception("job %s: cleaning up after forgotten data failed; the next job tries again", job_id)
    line = "; ".join(evaluation.metric_parts(result.get("metrics", {})))
    sized = fitting.summary(result.get("fit", {}))  # a long item was trimmed or skipped, not failed on
    if sized:
        line += f" Sized to the model's context: {sized} (see the card's `fit`)."
    if verdict == "promoted":
        _say(db, job, f"Job #{job_id}: {result['version']} promoted; it answers from the next question. {line}")
    elif verdict == "rejected":
        fine = (": holds", ": improves", "not checked")
        why = "; ".join(r for r in result["reasons"] if not any(w in r for w in fine))
        _say(db, job, f"Job #{job_id}: {result['version']} rejected ({why}); "
                      + (moved or f"{result.get('parent') or 'the base model'} stays in service.")
                      + f" Its card is in adapters/{result['version']} for review."
                      + (f" Sized to the model's context: {sized}." if sized else ""))
    else:
        _say(db, job, f"Job #{job_id} skipped: {'; '.join(result['reasons'])}." + (f" {sized}." if sized else "")
             + (f" {moved[0].upper()}{moved[1:]}" if moved else ""))
    return {**store.job(db, job_id), "ran": True, "reasons": result.get("reasons", []),
            "metrics": result.get("metrics", {})}


@huey.task(retries=2880, retry_delay=30)  # only the lock raises: wait up to a day for the GPU
@huey.lock_task(LOCK)
def train_job(job_id: int) -> dict:
    # Task bodies run in the worker's consumer: each is an entry point, so it reads the settings itself.
    settings = config.Settings.load()
    return execute(_db(settings), job_id, settings)


def retrainer(db, enqueue: bool = True) -> forgetting.Retrain:
    """What forgetting calls to queue a retrain without the forgotten data (a job of kind "forget")."""
    return lambda by: submit(db, by, kind="forget", enqueue=enqueue)


def submit(db, requested_by: str, platform: str = "", channel: str = "", thread: str = "", *,
           kind: str = "train", enqueue: bool = True) -> int:
    """Create a queued job and hand it to the worker (enqueue=False: for `run_inline`); its id."""
    job_id = store.create_job(db, kind, requested_by, platform, channel, thread)
    if enqueue:
        train_job(job_id)
    return job_id


def run_inline(db, job_id: int, settings: config.Settings, **overrides) -> dict:
    """Run a queued job in this process, under the same GPU lock as the worker (`train --wait` with no worker)."""
    try:
        with huey.lock_task(LOCK):
            return execute(db, job_id, settings, **overrides)
    except TaskLockedException:
        raise JobError("another training job holds the GPU lock; the job stays queued") from None


def wait(db, job_id: int, timeout: float | None = None, poll_s: float = 1.0) -> dict:
    """The job row once it is finished (or as it is when `timeout` passes)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        row = store.job(db, job_id)
        if row is None or row["state"] in store.FINAL_STATES or (deadline and time.monotonic() > deadline):
            return row
        time.sleep(poll_s)


def cancel(db, job_id: int, by: str) -> dict:
    """Cancel a queued job now, or ask a running one to stop at its next step: `{"job", "state", "message"}`."""
    if store.cancel_queued_job(db, job_id, by):
        return {"job": job_id, "state": "cancelled", "message": f"job #{job_id} cancelled"}
    if store.request_job_cancel(db, job_id, by):
        return {"job": job_id, "state": "cancelling",
                "message": f"job #{job_id} stops at its next training step; nothing will be promoted"}
    if (row := store.job(db, job_id)) is None:
        raise JobError(f"no job #{job_id}")
    raise JobError(f"job #{job_id} already finished ({row['state']})")


def listing(db, limit: int = 20) -> list[dict]:
    """Recent jobs, newest first (the `jobs --json` rows)."""
    keep = ("id", "kind", "state", "requested_by", "created_at", "started_at", "finished_at", "step", "steps",
            "loss", "version", "verdict", "error")
    return [{k: r[k] for k in keep} for r in store.list_jobs(db, limit)]


def recover(db, adapters_dir: Path, at_start: bool = True) -> list[dict]:
    """Jobs left running by a stopped process (their lease expired) become failed, their temporary folders go.

    A job whose lease is renewed (a worker on another host, an inline `train --wait` beside the worker)
    is left alone. At a worker's start the leftovers of any stopped job go and the GPU lock is freed
    when no job runs; the periodic pass (`at_start=False`, every minute) does that only when it found a
    job to fail, so it never frees a lock that a task has just taken for a job it is about to lease."""
    adapters_dir = Path(adapters_dir)
    failed, live = [], set()
    for row in store.list_jobs(db, limit=1000, states=store.ACTIVE_STATES):
        if _alive(db, row["id"]):
            live.add(row["version"])
            continue
        # Killed after the pointer moved (promotion done, job row not final yet): say so, not "unchanged".
        served = row["version"] is not None and row["version"] == registry.read_pointer(adapters_dir)
        after = f" (after {row['version']} was put in service)" if served else ""
        store.update_job(db, row["id"], state="failed", error=f"worker stopped during {row['state']}{after}")
        _say(db, row, f"Job #{row['id']} failed: the worker stopped during {row['state']}; "
                      + (f"{row['version']} had already been promoted and is in service." if served
                         else "the adapter in service is unchanged."))
        failed.append(store.job(db, row["id"]))
    if not at_start and not failed:
        return failed
    if adapters_dir.is_dir():
        for p in adapters_dir.glob(".tmp-*"):
            if p.name[len(".tmp-"):] not in live:
                shutil.rmtree(p, ignore_errors=True)
        if not live:  # a pointer write cut short by a kill (the pointer itself is never half-written)
            for p in adapters_dir.glob(".current-*"):
                p.unlink(missing_ok=True)
    if not live:
        huey.flush_locks(LOCK)  # a killed worker's lock would hold the GPU forever
    return failed


def nightly(db, adapters_dir: Path, min_feedback: int) -> dict:
    """The scheduled retrain's decision: `{"ran", "reason", "job"}`; submits a job when it should run."""
    adapters_dir, need = Path(adapters_dir), min_feedback
    busy = store.list_jobs(db, limit=1, states=("queued",) + store.ACTIVE_STATES)
    if busy:
        return {"ran": False, "job": None, "reason": f"job #{busy[0]['id']} is already {busy[0]['state']}"}
    snap = snapshot.build(db)
    if snap.new < need:
        return {"ran": False, "job": None, "reason": f"{snap.new} new accepted example(s); at least {need} needed"}
    for version in registry.versions(adapters_dir):
        if registry.card(adapters_dir, version).get("data", {}).get("hash") == snap.data_hash:
            return {"ran": False, "job": None,
                    "reason": f"this data ({snap.data_hash[:12]}) was already trained as {version}"}
    job_id = submit(db, "schedule", kind="nightly")
    return {"ran": True, "job": job_id, "reason": f"{snap.new} new accepted examples"}


def _retrain_due(when) -> bool:
    """BOT_RETRAIN_CRON, asked by the consumer each minute: the schedule is a setting, so it is read from
    the queue's settings when asked, not when this module is imported (the worker checks it at start)."""
    return crontab(**cron(queue.settings().retrain_cron))(when)


@huey.periodic_task(_retrain_due)
def scheduled_retrain() -> dict:
    settings = config.Settings.load()  # a task: an entry point in the consumer
    result = nightly(_db(settings), settings.adapters_dir, settings.retrain_min_feedback)
    log.info("scheduled retrain: %s", result)
    return result


@huey.periodic_task(crontab())  # every minute: `worker_alive` tells the CLI whether to wait or run inline
def heartbeat() -> None:
    settings = config.Settings.load()  # a task: an entry point
    db = _db(settings)
    store.set_meta(db, HEARTBEAT_KEY, str(time.time()))
    # A job whose worker stopped after this worker started (on any host) is recovered within a minute of
    # its lease expiring, not at the next worker start.
    for row in recover(db, settings.adapters_dir, at_start=False):
        log.warning("job %s marked failed: %s", row["id"], row["error"])


@huey.on_startup()
def _on_start() -> None:
    settings = config.Settings.load()  # the consumer's start hook: an entry point
    db = _db(settings)
    store.set_meta(db, HEARTBEAT_KEY, str(time.time()))
    for row in recover(db, settings.adapters_dir):
        log.warning("job %s marked failed: %s", row["id"], row["error"])


def worker_alive(db, within_s: float = 150.0) -> bool:
    """A worker beat within `within_s`, or is busy training (its beat waits behind the job): enqueue and wait."""
    seen = store.get_meta(db, HEARTBEAT_KEY)
    busy = any(_alive(db, r["id"]) for r in store.list_jobs(db, states=store.ACTIVE_STATES))
    return busy or (bool(seen) and time.time() - float(seen) < within_s)
