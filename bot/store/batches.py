"""Bulk deletes in batches, one transaction each, with a pause between them (see below): the
retention purge, forget, and the counters they lower.
"""
from __future__ import annotations

import time

from bot.store.engine import _for_update, transaction
from bot.store.metrics import _uncount


# A bulk job in one transaction holds the write lock for its whole run: the retention purge of
# 240,000 answers held it 20 s, and a vote waited out its 10 s busy_timeout and was lost. So every
# bulk job goes in batches of BATCH_ROWS rows, one transaction each, and pauses BATCH_PAUSE_S
# between them. The pause is what lets another writer in: a waiting process sleeps in SQLite's
# busy handler in growing steps of up to 100 ms, so a purge that took the lock back at once would
# find it free again before the waiter woke; a gap of 100 ms always holds one of its retries.

BATCH_ROWS = 1000
BATCH_PAUSE_S = 0.1


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        if i:
            time.sleep(BATCH_PAUSE_S)
        yield items[i:i + size]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _delete_answers_batched(db, where: str, args: list, batch: int | None, order: str = "id") -> dict:
    """Delete the answers matching `where`, with every vote and correction on them, batch by batch."""
    batch = batch or BATCH_ROWS
    counts = {"answers": 0, "votes": 0, "corrections": 0}
    while True:
        with transaction(db):
            # PostgreSQL: the answers are locked first, so a vote or correction being written on one of
            # them (its foreign key check holds a share lock) commits before the deletes read, or waits
            # and then fails as on SQLite; without it the answer's delete would fail on that new row.
            ids = [r[0] for r in db.execute(f"select id from answers where {where} order by {order} limit ?"
                                            + _for_update(db), args + [batch]).fetchall()]
            if ids:
                marks = _marks(len(ids))
                votes = db.execute(f"delete from votes where answer_id in ({marks}) returning value", ids).fetchall()
                fixes = db.execute(f"delete from corrections where answer_id in ({marks}) returning status",
                                   ids).fetchall()
                counts["answers"] += db.execute(f"delete from answers where id in ({marks})", ids).rowcount
                counts["votes"] += len(votes)
                counts["corrections"] += len(fixes)
                _uncount(db, "votes", votes)
                _uncount(db, "corrections", fixes)
        if len(ids) < batch:
            return counts
        time.sleep(BATCH_PAUSE_S)


def _delete_batched(db, table: str, key: str | tuple[str, ...], where: str, args: list, batch: int | None = None,
                    *, gauge: str | None = None, key_filter: str = "") -> int:
    """Delete the rows of `table` matching `where`, `batch` at a time (by `key`, a column or a few);
    the rows' `gauge` column values are taken off their counters. `key_filter` narrows the delete
    where `key` alone is not unique (a vote is keyed by answer and user). The number deleted."""
    batch = batch or BATCH_ROWS
    cols = ", ".join(key) if isinstance(key, tuple) else key
    target = f"({cols})" if isinstance(key, tuple) else cols
    done = 0
    while True:
        with transaction(db):
            keys = db.execute(f"select {cols} from {table} where {where} limit ?", args + [batch]).fetchall()
            if keys:
                width = len(key) if isinstance(key, tuple) else 1
                marks = ", ".join(["(" + _marks(width) + ")" if width > 1 else "?"] * len(keys))
                flat = [v for k in keys for v in k]
                extra, extra_args = (f" and {key_filter}", args) if key_filter else ("", [])
                returning = f" returning {gauge}" if gauge else ""
                cur = db.execute(f"delete from {table} where {target} in ({marks}){extra}{returning}",
                                 flat + extra_args)
                if gauge:
                    gone = cur.fetchall()
                    _uncount(db, table, gone)
                    done += len(gone)
                else:
                    done += cur.rowcount
        if len(keys) < batch:
            return done
        time.sleep(BATCH_PAUSE_S)
