"""The `counters` table: what /metrics reads (bot/ops/metrics.py), kept as rows are written.

Also the two reads /metrics makes beside it: `answer_stats` (one scan of `answers`, what the
counters were first filled from) and `operations_counts`. How a change is held until its
transaction commits is in engine.py (`_bump`, `_write_counters`).
"""
from __future__ import annotations

import json
from typing import Iterable

from bot.store.engine import _bump, transaction

# --- counters: what /metrics reads, kept as rows are written -----------------------
# `answers`, `answer_latency_ms_sum` and `answer_latency_le` (platform, mode[, bound]) only ever go
# up: they count answers given, and a purge or a forget deletes rows without lowering them (a
# Prometheus counter that fell would read as a restart). `votes` (value) and `corrections` (status)
# are the rows stored now: gauges, lowered by whatever deletes the rows. Every change is an upsert
# in the transaction of the write it counts, so serve, worker and CLI processes all add to the same
# rows, a restart loses nothing, and a rolled-back write counts nothing.

# Seconds. A retrieval-only answer takes milliseconds; a CPU model many seconds;
# BOT_GENERATION_TIMEOUT (300 s) is the longest an answer may take. Changing them needs a migration
# that recounts `answer_latency_le` (answers already purged cannot be re-binned).
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_PURGED_TALLY = "metrics_purged_answers"  # the purge's meta tally before m013 (bot/ops/metrics.py then)


def _bounds_ms() -> list[float]:
    return [b * 1000 for b in LATENCY_BUCKETS_S]


def _uncount(db, name: str, rows: list) -> None:
    """Take deleted rows off gauge `name`: `rows` are the RETURNING tuples of the label column."""
    gone: dict[tuple[str, tuple], float] = {}
    for (label,) in rows:
        gone[(name, (str(label),))] = gone.get((name, (str(label),)), 0) - 1
    _bump(db, gone)


def _count_answer(db, row: dict) -> None:
    key = (row.get("platform") or "", row.get("mode") or "")
    ms = row.get("latency_ms")
    changes = {("answers", key): 1, ("answer_latency_ms_sum", key): ms or 0}
    bucket = next((b for b in _bounds_ms() if ms is not None and ms <= b), None)
    if bucket is not None:  # slower than the last bound (or unknown): only in +Inf, which is the count
        changes[("answer_latency_le", key + (repr(bucket),))] = 1
    _bump(db, changes)


def _recount(db) -> None:
    """Set the counters from the tables (one scan each): the migration that introduced them."""
    db.execute("delete from counters")
    for key, s in answer_stats(db, _bounds_ms()).items():
        cumulative = [0] + list(s["buckets"])
        _bump(db, {("answers", key): s["count"], ("answer_latency_ms_sum", key): s["sum_ms"],
                   **{("answer_latency_le", key + (repr(b),)): cumulative[i + 1] - cumulative[i]
                      for i, b in enumerate(_bounds_ms())}})
    _bump(db, {("votes", (str(v),)): n for v, n in db.execute("select value, count(*) from votes group by value")})
    _bump(db, {("corrections", (str(s),)): n
               for s, n in db.execute("select status, count(*) from corrections group by status")})


def recount_counters(db) -> None:
    """Count the counters again from the tables: after rows were written by something other than the
    store (a bulk load, tools.growth_bench). Deleted answers are no longer in the tables: they leave
    the answer counters, so on a live database Prometheus would read that as a reset."""
    with transaction(db):
        _recount(db)


def counters(db) -> dict[str, dict[tuple, float]]:
    """Every counter: `{name: {labels: value}}` (one read of a table of a few dozen rows)."""
    out: dict[str, dict[tuple, float]] = {}
    for name, labels, value in db.execute("select name, labels, value from counters").fetchall():
        out.setdefault(name, {})[tuple(json.loads(labels))] = value
    return out


def answer_counters(db, kept: dict | None = None) -> dict[tuple[str, str], dict]:
    """Answers ever given by (platform, mode), deleted ones included: `count`, `sum_ms` and cumulative
    `buckets` (answers with latency_ms <= each bound of LATENCY_BUCKETS_S), from the counters."""
    kept = counters(db) if kept is None else kept
    out = {}
    for key, n in kept.get("answers", {}).items():
        per = [kept.get("answer_latency_le", {}).get(key + (repr(b),), 0) for b in _bounds_ms()]
        cumulative = [sum(per[:i + 1]) for i in range(len(per))]
        out[key] = {"count": int(n), "sum_ms": kept.get("answer_latency_ms_sum", {}).get(key, 0.0),
                    "buckets": [int(c) for c in cumulative]}
    return out


# --- operations: metrics (bot/ops/metrics.py) ------------

def answer_stats(db, buckets_ms: Iterable[float], before: float | None = None) -> dict[tuple[str, str], dict]:
    """Answers by (platform, mode): `count`, `sum_ms` and cumulative `buckets` (answers with latency_ms <= each bound).

    One scan of `answers` (of those created before `before` when given: what a purge is about to delete)."""
    bounds = [float(b) for b in buckets_ms]  # floats, so nothing but numbers reaches the SQL text
    # case, not sum(latency_ms <= b): PostgreSQL does not sum booleans
    cols = "".join(f", sum(case when latency_ms <= {b!r} then 1 else 0 end)" for b in bounds)
    where, args = (" where created_at < ?", [before]) if before is not None else ("", [])
    rows = db.execute(f"select coalesce(platform, ''), coalesce(mode, ''), count(*), coalesce(sum(latency_ms), 0)"
                      f"{cols} from answers{where} group by 1, 2", args).fetchall()
    return {(r[0], r[1]): {"count": r[2], "sum_ms": r[3], "buckets": [n or 0 for n in r[4:]]} for r in rows}


def operations_counts(db) -> dict[str, dict]:
    """What /metrics reports as it stands: votes by value, corrections by status (from their
    counters, a few rows), jobs by state (the jobs table: one row per training run, indexed by state)."""
    kept = counters(db)
    return {
        "votes": {int(k[0]): int(v) for k, v in kept.get("votes", {}).items()},
        "corrections": {k[0]: int(v) for k, v in kept.get("corrections", {}).items()},
        "jobs": dict(db.execute("select state, count(*) from jobs group by state").fetchall()),
    }
