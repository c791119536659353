"""Training jobs (`jobs`: queued, running, finished, cancel requests) and leases (`leases`: who holds a
job or the Discord client, until when, renewed by heartbeat).
"""
from __future__ import annotations

import time
from typing import Iterable

from bot.store.engine import transaction


ACTIVE_STATES = ("running", "training", "evaluating")
FINAL_STATES = ("promoted", "rejected", "skipped", "failed", "cancelled")


def create_job(db, kind: str, requested_by: str, platform: str = "", channel: str = "", thread: str = "") -> int:
    with transaction(db):
        return db.execute(
            "insert into jobs (kind, state, requested_by, platform, channel, thread, created_at)"
            " values (?, 'queued', ?, ?, ?, ?, ?)",
            [kind, requested_by, platform, channel, thread, time.time()]).lastrowid


def job(db, job_id: int) -> dict | None:
    rows = list(db.query("select * from jobs where id = ?", [job_id]))
    return rows[0] if rows else None


def list_jobs(db, limit: int = 20, states: Iterable[str] | None = None) -> list[dict]:
    sql, args = "select * from jobs", []
    if states:
        states = list(states)
        sql += f" where state in ({', '.join('?' * len(states))})"
        args += states
    return list(db.query(sql + " order by id desc limit ?", args + [limit]))


def claim_job(db, job_id: int) -> bool:
    """queued -> running, once: True for the one caller that got the job (a job id runs at most once)."""
    with transaction(db):
        return db.execute("update jobs set state = 'running', started_at = ? where id = ? and state = 'queued'",
                          [time.time(), job_id]).rowcount == 1


def update_job(db, job_id: int, **fields) -> None:
    if not fields:
        return
    if fields.get("state") in FINAL_STATES:
        fields.setdefault("finished_at", time.time())
    cols = ", ".join(f"{k} = :{k}" for k in fields)
    with transaction(db):
        db.execute(f"update jobs set {cols} where id = :_id", {**fields, "_id": job_id})


def cancel_queued_job(db, job_id: int, by: str) -> bool:
    with transaction(db):
        return db.execute(
            "update jobs set state = 'cancelled', cancel_requested = ?, finished_at = ?, error = ?"
            " where id = ? and state = 'queued'", [by, time.time(), f"cancelled by {by}", job_id]).rowcount == 1


def request_job_cancel(db, job_id: int, by: str) -> bool:
    """Ask a running job to stop at its next training step."""
    states = ", ".join(f"'{s}'" for s in ACTIVE_STATES)
    with transaction(db):
        return db.execute(f"update jobs set cancel_requested = ? where id = ? and state in ({states})",
                          [by, job_id]).rowcount == 1


def job_cancel_requested(db, job_id: int) -> str | None:
    row = db.execute("select cancel_requested from jobs where id = ?", [job_id]).fetchone()
    return row[0] if row else None


# --- leases: liveness by heartbeat, whatever host the holder runs on -----------

def acquire_lease(db, name: str, owner: str, ttl_s: float) -> bool:
    """Take lease `name` for `owner` for `ttl_s` seconds: True when it was free, expired, or already
    `owner`'s (then renewed); False while another owner holds it. One statement, so two processes
    racing for a free lease cannot both get it."""
    now = time.time()
    with transaction(db):
        return db.execute(
            "insert into leases (name, owner, acquired_at, expires_at) values (?, ?, ?, ?)"
            " on conflict (name) do update set owner = excluded.owner, expires_at = excluded.expires_at,"
            " acquired_at = case when leases.owner = excluded.owner then leases.acquired_at"
            " else excluded.acquired_at end"
            " where leases.owner = excluded.owner or leases.expires_at < ? returning owner",
            [name, owner, now, now + ttl_s, now]).fetchone() is not None


def renew_lease(db, name: str, owner: str, ttl_s: float) -> bool:
    """Extend `owner`'s lease; False when it is no longer theirs (it expired and someone took it)."""
    with transaction(db):
        return db.execute("update leases set expires_at = ? where name = ? and owner = ?",
                          [time.time() + ttl_s, name, owner]).rowcount == 1


def release_lease(db, name: str, owner: str) -> None:
    with transaction(db):
        db.execute("delete from leases where name = ? and owner = ?", [name, owner])


def lease(db, name: str) -> dict | None:
    """The lease row (`owner`, `acquired_at`, `expires_at`, `live`), or None when nobody ever held it or it was released."""
    row = db.execute("select owner, acquired_at, expires_at from leases where name = ?", [name]).fetchone()
    if row is None:
        return None
    return {"name": name, "owner": row[0], "acquired_at": row[1], "expires_at": row[2], "live": row[2] >= time.time()}
