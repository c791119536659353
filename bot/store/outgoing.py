"""What is waiting to be said in the chat: the `outbox` (messages a job or a recovery posts through the
bot process, claimed under a lease) and `inflight` (placeholders of answers being written, which a
restart finishes through the outbox).
"""
from __future__ import annotations

import time
from typing import Iterable

from bot.store import postgres
from bot.store.engine import transaction


def post_outbox(db, job_id: int | None, platform: str, channel: str, thread: str, text: str, *,
                update_message: str | None = None, interaction: str | None = None) -> int:
    with transaction(db):
        return _outbox_row(db, job_id, platform, channel, thread, text, update_message, interaction)


def _outbox_row(db, job_id, platform, channel, thread, text, update_message=None, interaction=None) -> int:
    return db.execute(
        "insert into outbox (job_id, platform, channel, thread, text, created_at, update_message, interaction)"
        " values (?, ?, ?, ?, ?, ?, ?, ?)",
        [job_id, platform, channel, thread, text, time.time(), update_message, interaction]).lastrowid


# --- answers in flight: placeholders a restart must finish -------------------

def add_inflight(db, platform: str, channel: str, thread: str, user: str, question: str, owner: str, *,
                 message: str | None = None, interaction: str | None = None) -> int:
    """Record a placeholder as it is posted (`message`: its Slack ts or Discord id; `interaction`:
    "application_id/token" of a deferred Discord reply); `clear_inflight` when the answer lands."""
    with transaction(db):
        return db.execute(
            "insert into inflight (platform, channel, thread, message, interaction, user, question, owner, created_at)"
            " values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [platform, channel, thread, message, interaction, user, question, owner, time.time()]).lastrowid


def set_inflight_message(db, inflight_id: int, message: str) -> None:
    with transaction(db):
        db.execute("update inflight set message = ? where id = ?", [message, inflight_id])


def clear_inflight(db, inflight_id: int) -> None:
    with transaction(db):
        db.execute("delete from inflight where id = ?", [inflight_id])


def inflight(db, platform: str | None = None) -> list[dict]:
    if platform is None:
        return list(db.query("select * from inflight order by id"))
    return list(db.query("select * from inflight where platform = ? order by id", [platform]))


def hand_inflight_to_outbox(db, inflight_id: int, text: str) -> int | None:
    """Replace a dead process's placeholder through the outbox: the outbox row and the removal of the
    placeholder's record commit together (a crash between them neither loses nor doubles the answer).
    None when the row is gone (another process recovered it first)."""
    with transaction(db):
        row = db.execute("select platform, channel, thread, message, interaction from inflight where id = ?",
                         [inflight_id]).fetchone()
        if row is None or db.execute("delete from inflight where id = ?", [inflight_id]).rowcount != 1:
            return None
        platform, channel, thread, message, interaction = row
        return _outbox_row(db, None, platform, channel, thread, text, message, interaction)


def claim_outbox(db, platform: str, claimer: str, limit: int = 20, lease_s: float = 60.0) -> list[dict]:
    """Unsent messages for `platform`, oldest first, claimed by `claimer` for `lease_s` seconds.

    A claim that is not marked sent within the lease (the poster crashed) is
    offered again, so a message is posted at least once; two bot processes
    never claim the same row at the same time."""
    now = time.time()
    # PostgreSQL: rows another poster is claiming right now are passed over, not waited for (SQLite's
    # one writer at a time needs no such clause).
    skip = " for update skip locked" if getattr(db, "dialect", "sqlite") == postgres.DIALECT else ""
    with transaction(db):
        cur = db.execute(
            "update outbox set claimed_by = ?, claimed_at = ? where id in ("
            " select id from outbox where platform = ? and sent_at is null"
            f" and (claimed_at is null or claimed_at < ?) order by id limit ?{skip}) returning *",
            [claimer, now, platform, now - lease_s, limit])
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    return sorted(rows, key=lambda r: r["id"])


def mark_outbox_sent(db, ids: Iterable[int]) -> None:
    with transaction(db):
        db.conn.executemany("update outbox set sent_at = ? where id = ?", [(time.time(), i) for i in ids])


def mark_outbox_dropped(db, outbox_id: int, why: str) -> None:
    """Give up on a message that can never be posted: done (not offered again), and says why."""
    with transaction(db):
        db.execute("update outbox set sent_at = ?, dropped = ? where id = ?", [time.time(), why[:300], outbox_id])


def outbox(db, job_id: int | None = None) -> list[dict]:
    if job_id is None:
        return list(db.query("select * from outbox order by id"))
    return list(db.query("select * from outbox where job_id = ? order by id", [job_id]))
