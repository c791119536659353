"""Feedback and what the learning loop reads of it: votes, corrections and their review, opt-outs,
delivery keys (`deliveries`: a chat delivery's work is stored once), the training snapshot's read
(`feedback_answers`) and what a promoted adapter learned (`mark_trained`).
"""
from __future__ import annotations

import json
import time
from typing import Iterable

from bot.store import batches  # batches.BATCH_ROWS read at each call: setting it there takes effect
from bot.store.batches import _chunks
from bot.store.engine import _bump, _for_update, _lock, transaction


class Duplicate(Exception):
    """Raised inside a write whose delivery key is already stored: the work was done by an earlier delivery."""


def _claim(db, delivery: str | None) -> None:
    """Store `delivery` in the current transaction; a key already there means this delivery is a resend.

    Called inside the write's own `with transaction(db):`: the key and the work commit
    together or not at all, so a delivery that died before its commit leaves
    no key behind and the resend is processed, and one that committed is never
    processed twice."""
    if delivery is not None and db.execute("insert or ignore into deliveries (key, created_at) values (?, ?)",
                                           [delivery, time.time()]).rowcount != 1:
        raise Duplicate(delivery)


def delivered(db, key: str) -> bool:
    """Whether the work of delivery `key` is stored (its key commits with it)."""
    return db.execute("select 1 from deliveries where key = ?", [key]).fetchone() is not None


def record_vote(db, answer_id: str, user: str, platform: str, value: int, delivery: str | None = None) -> None:
    with transaction(db):
        _claim(db, delivery)
        # PostgreSQL: two clicks of one person at once must not both read "no vote" (the counter would
        # count two), and a forget or purge deleting this vote waits for the row lock, or has happened.
        _lock(db, "vote", answer_id, user)
        old = db.execute("select value from votes where answer_id = ? and user = ?" + _for_update(db),
                         [answer_id, user]).fetchone()
        db.execute("insert or replace into votes (answer_id, user, platform, value, created_at)"
                   " values (?, ?, ?, ?, ?)", [answer_id, user, platform, value, time.time()])
        if not old or old[0] != value:  # a changed vote moves from one value to the other
            _bump(db, {("votes", (str(value),)): 1, **({("votes", (str(old[0]),)): -1} if old else {})})


def record_correction(db, answer_id: str, user: str, platform: str, text: str, status: str = "pending",
                      delivery: str | None = None, accepted_by: str | None = None) -> int:
    """Store a correction; its id. One per person per answer while it waits: a new one from the same
    person replaces the text of their pending one (same id, one review item), so repeating it cannot
    flood the review queue. Once reviewed, a new correction is a new item. With `accepted_by`, it is
    reviewed by them in the same commit; `delivery` is the chat delivery's key, stored with it."""
    now = time.time()
    with transaction(db):  # BEGIN IMMEDIATE: two corrections from one person cannot both miss and both insert
        _claim(db, delivery)
        _lock(db, "correction", answer_id, user, platform)  # PostgreSQL: the same, by an advisory lock
        # `status = 'pending'` again outside the subquery: on PostgreSQL a review committed while this
        # waited for the row is seen there, and the reviewed text is left alone (a new item follows).
        row = status == "pending" and db.execute(
            "update corrections set text = ?, created_at = ? where id = (select id from corrections"
            " where answer_id = ? and user = ? and platform = ? and status = 'pending' order by id limit 1)"
            " and status = 'pending' returning id", [text, now, answer_id, user, platform]).fetchone()
        if row:
            cid = row[0]
        else:
            cid = db.execute(
                "insert into corrections (answer_id, user, platform, text, status, created_at) values (?, ?, ?, ?, ?, ?)",
                [answer_id, user, platform, text, status, now]).lastrowid
            _bump(db, {("corrections", (status,)): 1})
        if accepted_by:
            _review(db, cid, "accepted", accepted_by)
        return cid


def votes(db, answer_id: str) -> list[dict]:
    return [dict(r) for r in db.query("select * from votes where answer_id = ?", [answer_id])]


def corrections(db, answer_id: str | None = None, status: str | None = None) -> list[dict]:
    sql, args = "select * from corrections where 1 = 1", []
    if answer_id:
        sql, args = sql + " and answer_id = ?", args + [answer_id]
    if status:
        sql, args = sql + " and status = ?", args + [status]
    return list(db.query(sql + " order by id", args))


def first_delivery(db, key: str) -> bool:
    """True the first time `key` is seen: a retried delivery must not be answered twice."""
    with transaction(db):
        return db.execute("insert or ignore into deliveries (key, created_at) values (?, ?)",
                          [key, time.time()]).rowcount == 1


# --- the learning loop: review, privacy, what a snapshot reads ------------


def correction(db, correction_id: int) -> dict | None:
    rows = list(db.query("select * from corrections where id = ?", [correction_id]))
    return rows[0] if rows else None


def _review(db, correction_id: int, status: str, by: str) -> bool:
    done = db.execute(
        "update corrections set status = ?, reviewed_by = ?, reviewed_at = ? where id = ? and status = 'pending'",
        [status, by, time.time(), correction_id]).rowcount == 1
    if done:
        _bump(db, {("corrections", ("pending",)): -1, ("corrections", (status,)): 1})
    return done


class _NotDone(Exception):
    pass


def review_correction(db, correction_id: int, status: str, by: str, delivery: str | None = None) -> bool:
    """Accept or reject a pending correction; False when it is not pending (already reviewed, or gone)."""
    try:
        with transaction(db):
            _claim(db, delivery)
            if not _review(db, correction_id, status, by):
                raise _NotDone  # rolls the delivery key back too: a refused review did no work
            return True
    except _NotDone:
        return False


def pending_corrections(db, limit: int = 50) -> list[dict]:
    """Corrections waiting for review, oldest first, with the question and answer they correct."""
    return list(db.query(
        "select c.id, c.answer_id, c.user, c.platform, c.text, c.created_at, a.question, a.answer"
        " from corrections c join answers a on a.id = c.answer_id where c.status = 'pending'"
        " order by c.created_at, c.id limit ?", [limit]))


def _opt_out(db, platform: str, user: str) -> None:
    """Inside the caller's transaction (set_opt_out, forget_user)."""
    db.execute("insert or ignore into opt_outs (platform, user, created_at) values (?, ?, ?)",
               [platform, user, time.time()])


def set_opt_out(db, platform: str, user: str, out: bool = True, delivery: str | None = None) -> None:
    with transaction(db):
        _claim(db, delivery)
        if out:
            _opt_out(db, platform, user)
        else:
            db.execute("delete from opt_outs where platform = ? and user = ?", [platform, user])


def opted_out(db) -> set[tuple[str, str]]:
    return {(p, u) for p, u in db.execute("select platform, user from opt_outs")}


def feedback_answers(db) -> list[dict]:
    """Every answer that has a vote or an accepted correction, with its `votes` and accepted `corrections`.

    What a training snapshot is made from; `passages` are the ones the asker saw."""
    rows = list(db.query(
        "select * from answers where id in (select answer_id from votes)"
        " or id in (select answer_id from corrections where status = 'accepted') order by created_at, id"))
    votes_by: dict[str, list[dict]] = {}
    for v in db.query("select * from votes order by created_at"):
        votes_by.setdefault(v["answer_id"], []).append(v)
    fixes_by: dict[str, list[dict]] = {}
    for c in db.query("select * from corrections where status = 'accepted' order by created_at, id"):
        fixes_by.setdefault(c["answer_id"], []).append(c)
    for r in rows:
        r["passages"] = json.loads(r["passages"] or "[]")
        r["votes"], r["corrections"] = votes_by.get(r["id"], []), fixes_by.get(r["id"], [])
    return rows


def mark_trained(db, version: str, correction_ids: Iterable[int], answer_ids: Iterable[str], *,
                 batch: int | None = None) -> None:
    """Record that promoted adapter `version` learned these corrections and upvoted answers."""
    # In batches (a training set can hold tens of thousands of upvoted answers); a crash half-way
    # leaves some unmarked, and the next retrain counts those as new: nothing is lost.
    for sql, ids in (("update corrections set used_in = ? where id = ? and used_in is null", list(correction_ids)),
                     ("update answers set trained_in = ? where id = ? and trained_in is null", list(answer_ids))):
        for chunk in _chunks(ids, batch or batches.BATCH_ROWS):
            with transaction(db):
                db.conn.executemany(sql, [(version, i) for i in chunk])
