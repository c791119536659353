"""Deleting people's data: forget (a person's questions, votes and corrections), the retention purge
(everything older than the cutoff), and the `forgotten` ids a training job checks after it.
"""
from __future__ import annotations

import time
from typing import Iterable

from bot.store import batches  # batches.BATCH_ROWS read at each call: setting it there takes effect
from bot.store.batches import _chunks, _delete_answers_batched, _delete_batched
from bot.store.engine import transaction
from bot.store.feedback import Duplicate, _claim, _opt_out, delivered


def forget_user(db, platform: str, user: str, delivery: str | None = None, opt_out: bool = False, *,
                batch: int | None = None) -> dict:
    """Delete a person's questions (answers rows, with all feedback on them), votes and corrections,
    and with `opt_out` opt them out of training.

    In batches of `batch` rows, one transaction each (see `BATCH_ROWS`): a
    crash half-way leaves part of it done, and running it again finishes it.
    The opt-out commits first (nothing of theirs is trained on from then on);
    the chat delivery's key commits with the last batch, so a delivery that
    died half-way is not taken for done when it is resent. The opt-out row
    stays, so their future questions stay out of training too."""
    if delivery is not None and delivered(db, delivery):
        raise Duplicate(delivery)
    if opt_out:
        with transaction(db):
            _opt_out(db, platform, user)
    counts = _delete_answers_batched(db, "platform = ? and user = ?", [platform, user], batch)
    # Their votes and corrections on other people's answers.
    counts["votes"] += _delete_batched(db, "votes", "answer_id", "platform = ? and user = ?", [platform, user],
                                       batch, gauge="value", key_filter="platform = ? and user = ?")
    counts["corrections"] += _delete_batched(db, "corrections", "id", "platform = ? and user = ?", [platform, user],
                                             batch, gauge="status")
    with transaction(db):
        _claim(db, delivery)
        # A question still being answered (or left by a killed process) is theirs too: no apology follows.
        db.execute("delete from inflight where platform = ? and user = ?", [platform, user])
        # The documents they added stay (the team's knowledge), no longer naming who added them.
        db.execute("update uploads set added_by = 'forgotten' where added_by = ?", [f"{platform}:{user}"])
    return counts


def record_forgotten(db, answer_ids: Iterable[str], correction_ids: Iterable[int], why: str, *,
                     batch: int | None = None) -> None:
    now = time.time()
    rows = [("answer", a, now, why) for a in answer_ids] + [("correction", str(c), now, why) for c in correction_ids]
    for chunk in _chunks(rows, batch or batches.BATCH_ROWS):  # a purge forgets hundreds of thousands of ids
        with transaction(db):
            db.conn.executemany("insert or replace into forgotten (kind, id, at, why) values (?, ?, ?, ?)", chunk)


def forgotten_ids(db, keep_s: float) -> tuple[set[str], set[int]]:
    """Answer and correction ids forgotten within `keep_s` seconds; older ones are dropped here."""
    _delete_batched(db, "forgotten", ("kind", "id"), "at < ?", [time.time() - keep_s])
    rows = db.execute("select kind, id from forgotten").fetchall()
    return {i for k, i in rows if k == "answer"}, {int(i) for k, i in rows if k == "correction"}


def purge_before(db, cutoff: float, *, batch: int | None = None) -> dict:
    """Delete questions (answers rows) older than `cutoff`, with the votes and corrections on them,
    and older delivery keys; in batches of `batch` answers, one transaction each (`BATCH_ROWS`).
    Audit rows and jobs stay: they hold no chat text."""
    counts = _delete_answers_batched(db, "created_at < ?", [cutoff], batch, order="created_at")
    _delete_batched(db, "deliveries", "key", "created_at < ?", [cutoff], batch)
    _delete_batched(db, "inflight", "id", "created_at < ?", [cutoff], batch)
    return counts
