"""The growth benchmark (tools/growth_bench.py) at 50,000 answers, against its targets, in `make test-scale`.

The million-answer run is the command itself (README, "Cost that does not grow
with the data": about 25 minutes here); this one keeps CI to a couple of
minutes and still holds a purge of 40,000 answers with another process voting
through it (SQLite, always run under `make test-scale`), and 20,000 answers on
the session's PostgreSQL 15 (tests/scale/conftest.py, about 2 minutes here).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tools/ beside bot/

pytestmark = pytest.mark.skipif(os.environ.get("BOT_SCALE_TESTS") != "1",
                                reason="a scale test: `make test-scale` runs it (BOT_SCALE_TESTS=1)")


def test_scrape_purge_and_ask_meet_their_targets_at_50000_answers(tmp_path, monkeypatch):
    from tools import growth_bench

    monkeypatch.setenv("BOT_KNOWLEDGE_DIR", str(growth_bench.DOCS))
    out = growth_bench.run(_args(db=str(tmp_path / "bot.db")))
    assert out["purge"]["answers"] > 35_000 and out["purge"]["writes"] > 50, out["purge"]
    assert out["after_purge"]["counters_kept"], out
    assert out["targets"] == {"scrape_under_100ms": True, "no_write_over_1s": True, "ask_unchanged": True}, out


def test_the_same_targets_on_postgresql_at_20000_answers(pg_url, monkeypatch):
    """The PostgreSQL branch end to end: COPY-loaded rows, the purge through bot/store/ on PostgreSQL with
    another process voting through it, the counters kept, and the three targets."""
    from tools import growth_bench

    monkeypatch.setenv("BOT_KNOWLEDGE_DIR", str(growth_bench.DOCS))
    out = growth_bench.run(_args(db=pg_url, answers=20_000, votes=6_000, corrections=500))
    assert out["engine"] == "postgresql" and out["build"]["file_mb"] > 20, out
    assert out["purge"]["answers"] > 14_000 and out["purge"]["votes"] > 3_000, out["purge"]
    assert out["purge"]["writes"] > 50 and out["purge"]["errors"] == 0, out["purge"]
    assert out["after_purge"]["counters_kept"], out
    assert out["targets"] == {"scrape_under_100ms": True, "no_write_over_1s": True, "ask_unchanged": True}, out


def _args(**over):
    import argparse

    base = dict(answers=50_000, votes=15_000, corrections=1_000, expired=0.8, asks=30, writer="process",
                db=None, keep=False, seed=13, json=True)
    return argparse.Namespace(**{**base, **over})
