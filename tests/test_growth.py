"""Cost that does not grow with the data: /metrics reads counters, not `answers`; bulk deletes go in batches.

Real SQLite files throughout. What a scrape reads is observed with SQLite's
authorizer (every table a statement reads is reported to it), so the test says
"no scan of answers" without timing anything; the batches are observed by a
second thread writing votes during the purge, through the same locks as the bot.
The million-row figures are `python -m tools.growth_bench` (README, Operations).
"""
from __future__ import annotations

import random
import sqlite3
import threading
import time

from prometheus_client.parser import text_string_to_metric_families

from bot import store
from bot.ops import metrics, retention
from bot.store import batches

DAY = 86400.0
PLATFORMS, MODES = ("slack", "discord", "cli"), ("llm", "retrieval-only")


def _answer(i: int, *, created_at: float, user: str | None = None, rng: random.Random) -> dict:
    return {"id": f"a{i}", "created_at": created_at, "platform": rng.choice(PLATFORMS), "channel": "C1",
            "thread": "", "user": user or f"U{i % 37}", "question": f"question {i}", "passages": [],
            "answer": "an answer [1]", "citations": [], "mode": rng.choice(MODES), "notice": "", "model": "m",
            "revision": "r", "adapter": None, "latency_ms": rng.choice([None, 10.0, 50.0, 333.0, 4000.0, 9e5]),
            "retrieval_ms": 1.0, "prompt_tokens": 1, "completion_tokens": 1}


def _fill(db, n: int, *, old: int, seed: int = 7, user: str | None = None, start: int = 0) -> None:
    """`n` answers through the store (`old` of them 40 days old), with votes (some changed) and
    corrections (some reviewed), as the bot writes them."""
    rng, now = random.Random(seed), time.time()
    for i in range(start, start + n):
        store.record_answer(db, _answer(i, created_at=now - (40 * DAY if i - start < old else DAY), user=user,
                                        rng=rng))
        if i % 2:
            store.record_vote(db, f"a{i}", "V1", "slack", rng.choice([1, -1]))
        if i % 5 == 0:
            store.record_vote(db, f"a{i}", "V1", "slack", -1)  # a changed (or repeated) vote: still one row
            store.record_vote(db, f"a{i}", "V2", "discord", 1)
        if i % 7 == 0:
            cid = store.record_correction(db, f"a{i}", "V3", "slack", f"fix {i}")
            if i % 3 == 0:
                store.review_correction(db, cid, rng.choice(["accepted", "rejected"]), "admin")


def _samples(db) -> dict:
    text = metrics.exposition(metrics.registry(db)).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith(("bot_answer", "bot_votes", "bot_corrections"))}


def _scan(db) -> tuple[dict, dict]:
    """The figures counted from the tables, the old way: answers (as given), votes and corrections (stored)."""
    return (store.answer_stats(db, [b * 1000 for b in store.LATENCY_BUCKETS_S]),
            {"votes": dict(db.execute("select value, count(*) from votes group by value").fetchall()),
             "corrections": dict(db.execute("select status, count(*) from corrections group by status").fetchall())})


def test_the_counters_equal_a_count_of_the_tables_and_deletes_never_lower_the_answer_counters(db):
    _fill(db, 600, old=250)
    answers, stored = _scan(db)
    assert store.answer_counters(db) == answers
    counts = store.operations_counts(db)
    assert {k: counts[k] for k in ("votes", "corrections")} == stored
    assert stored["votes"][1] and stored["votes"][-1] and set(stored["corrections"]) == {"pending", "accepted",
                                                                                         "rejected"}
    before = _samples(db)

    # A forget and a purge, in small batches: the stored-now gauges follow the tables down,
    # the answer counters and histogram stay where they were.
    forgot = store.forget_user(db, "slack", "U3", batch=7)
    purged = store.purge_before(db, time.time() - 30 * DAY, batch=50)
    assert forgot["answers"] > 0 and purged["answers"] > 0 and purged["votes"] > 0
    assert store.answer_counters(db) == answers
    counts = store.operations_counts(db)
    assert {k: counts[k] for k in ("votes", "corrections")} == _scan(db)[1]
    after = _samples(db)
    assert {k: v for k, v in after.items() if k[0].startswith("bot_answer")} \
        == {k: v for k, v in before.items() if k[0].startswith("bot_answer")}
    assert after[("bot_votes", (("value", "up"),))] == _scan(db)[1]["votes"].get(1, 0) \
        < before[("bot_votes", (("value", "up"),))]


def test_the_counters_survive_a_restart_and_add_up_across_processes(tmp_path):
    path = tmp_path / "bot.db"
    _fill(store.connect(path), 40, old=0)
    # A second process (here a second connection, as `worker` or the CLI opens one) adds its own.
    _fill(store.connect(path), 40, old=0, seed=8, start=40)
    reopened = store.connect(path)
    assert store.answer_counters(reopened) == _scan(reopened)[0]
    assert sum(s["count"] for s in store.answer_counters(reopened).values()) == 80


def test_a_scrape_reads_no_table_that_grows_with_the_answers(db):
    _fill(db, 300, old=100)
    read: set[str] = set()

    def authorizer(action, table, column, database, trigger):
        if action == sqlite3.SQLITE_READ:
            read.add(table)
        return sqlite3.SQLITE_OK

    db.conn.set_authorizer(authorizer)
    try:
        samples = _samples(db)
    finally:
        db.conn.set_authorizer(None)
    assert sum(v for (name, _), v in samples.items() if name == "bot_answers_total") == 300
    # `jobs` is one row per training run (and indexed by state); nothing per question is read.
    assert read and read <= {"counters", "jobs"}, read


def test_the_migration_counts_what_was_there_before_it_including_the_old_purge_tally(tmp_path):
    path = tmp_path / "bot.db"
    db = store.connect(path)
    _fill(db, 120, old=0)
    answers, _ = _scan(db)
    # The database as the previous release left it: no counters yet, and a purge tally in meta.
    tally = {"bounds_ms": [b * 1000 for b in store.LATENCY_BUCKETS_S],
             "rows": [{"platform": "slack", "mode": "llm", "count": 5, "sum_ms": 1500.0,
                       "buckets": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 4]}]}
    with store.transaction(db):
        db.execute("drop table counters")
        db.execute("drop index idx_deliveries_created_at")
        db.execute("delete from _migrations where name = 'm013_counters'")
    store.set_meta(db, "metrics_purged_answers", __import__("json").dumps(tally))
    again = store.answer_counters(store.connect(path))
    slack = answers.get(("slack", "llm"), {"count": 0, "sum_ms": 0, "buckets": [0] * 12})
    assert again[("slack", "llm")] == {"count": slack["count"] + 5, "sum_ms": slack["sum_ms"] + 1500.0,
                                       "buckets": [a + b for a, b in zip(slack["buckets"], tally["rows"][0]["buckets"])]}
    assert {k: v for k, v in again.items() if k != ("slack", "llm")} \
        == {k: v for k, v in answers.items() if k != ("slack", "llm")}
    assert store.get_meta(db, "metrics_purged_answers") is None


def test_the_purge_commits_in_batches_and_a_concurrent_writer_never_waits_for_the_whole_of_it(tmp_path, monkeypatch):
    path = tmp_path / "bot.db"
    db = store.connect(path)
    old, batch = 900, 100
    monkeypatch.setattr(batches, "BATCH_ROWS", batch)  # the purge as the worker runs it, in smaller batches
    _fill(db, old + 50, old=old)
    store.record_answer(db, _answer(99999, created_at=time.time(), rng=random.Random(1)))
    done = threading.Event()
    waits: list[float] = []
    remaining: set[int] = set()

    def writer():
        # The bot's votes, during the purge: each one sees the old answers that are left at its commit.
        wdb = store.connect(path)
        while not done.is_set():
            t0 = time.perf_counter()
            with store.transaction(wdb):
                remaining.add(wdb.execute("select count(*) from answers where created_at < ?",
                                          [time.time() - 30 * DAY]).fetchone()[0])
            store.record_vote(wdb, "a99999", "W", "slack", 1)
            waits.append(time.perf_counter() - t0)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = retention.purge(db, 30, adapters_dir=None, enqueue=False)
    finally:
        done.set()
        thread.join()
    assert result["answers"] == old
    between = remaining - {0, old}
    # Every state the writer saw is a whole number of batches done: one commit per batch of `batch`
    # answers (with their votes and corrections), and the writer got in between most of them.
    assert all((old - n) % batch == 0 for n in remaining), sorted(remaining)
    assert len(between) >= old // batch // 2, sorted(remaining)
    assert max(waits) < 1.0, max(waits)


def test_forget_in_batches_deletes_everything_of_the_person_and_keeps_the_delivery_key_for_the_end(db):
    _fill(db, 60, old=0, user="UF")
    _fill(db, 30, old=0, seed=9, start=60)
    store.record_vote(db, "a70", "UF", "slack", 1)  # their vote on someone else's answer (platform slack)
    store.record_correction(db, "a71", "UF", "slack", "their fix elsewhere")
    # U... users of _fill answer on every platform: the person is ("slack", "UF") only.
    theirs = db.execute("select count(*) from answers where platform = 'slack' and user = 'UF'").fetchone()[0]
    got = store.forget_user(db, "slack", "UF", delivery="slack:forget-1", opt_out=True, batch=4)
    assert got["answers"] == theirs > 4
    assert db.execute("select count(*) from answers where platform = 'slack' and user = 'UF'").fetchone()[0] == 0
    assert db.execute("select count(*) from votes where platform = 'slack' and user = 'UF'").fetchone()[0] == 0
    assert db.execute("select count(*) from corrections where platform = 'slack' and user = 'UF'").fetchone()[0] == 0
    assert store.delivered(db, "slack:forget-1") and ("slack", "UF") in store.opted_out(db)
    counts = store.operations_counts(db)
    assert {k: counts[k] for k in ("votes", "corrections")} == _scan(db)[1]
    try:
        store.forget_user(db, "slack", "UF", delivery="slack:forget-1", opt_out=True)
    except store.Duplicate:
        pass
    else:
        raise AssertionError("a resent forget was done twice")
