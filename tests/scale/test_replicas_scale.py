"""Two real `serve` replicas on one database (issue 13, item 4): tools/replica_check.py under `make test-scale`.

200 deliveries, each sent to one replica and retried (`X-Slack-Retry-Num`) at the other, a quarter of them
racing at both, and 100 outbox messages written once while both posters poll: every question is answered
once, every outbox message posted once: on a temporary SQLite file (or BOT_SCALE_DB when set), and on one
PostgreSQL 15 (the session's server, tests/scale/conftest.py). About a minute each on 2 cores.
"""
from __future__ import annotations

import asyncio
import os

from tools import replica_check


def test_200_retried_deliveries_across_two_replicas_are_answered_once_and_the_outbox_posted_once():
    out = replica_check.check(200, 100, os.environ.get("BOT_SCALE_DB") or None, "none", 240)
    _answered_once(asyncio.run(out))


def test_the_same_on_one_postgresql(pg_url):
    """Issue 13's figure: two `serve` replicas on one PostgreSQL 15, 200 retried deliveries, 0 duplicates
    (the delivery keys and the outbox claims, FOR UPDATE SKIP LOCKED there, across two processes)."""
    out = asyncio.run(replica_check.check(200, 100, pg_url, "none", 240))
    assert out["db"] == "postgresql", out
    _answered_once(out)


def _answered_once(out: dict) -> None:
    assert out["requests_sent"] == 400 and out["acked_200"] == 400 and out["raced"] == 50, out
    assert (out["answered"], out["unanswered"], out["duplicate_answers"], out["answer_rows"]) == (200, 0, 0, 200), out
    assert set(out["answered_by"]) == {"A", "B"} and sum(out["answered_by"].values()) == 200, out  # both served
    assert (out["outbox_posted"], out["outbox_duplicates"], out["outbox_missing"]) == (100, 0, 0), out
    assert sum(out["outbox_posted_by"].values()) == 100 and out["serve_errors"] == 0, out


def test_the_check_counts_the_duplicates_of_replicas_that_share_no_database(tmp_path):
    """The negative control: with B on a database of its own, no delivery key is shared, every retry is
    answered again, and the check must say so (a check that cannot fail proves nothing)."""
    out = asyncio.run(replica_check.check(8, 0, str(tmp_path / "a.db"), "none", 60, db_b=str(tmp_path / "b.db")))
    assert out["duplicate_answers"] == 8 and out["answered_by"] and replica_check.bad(out), out
