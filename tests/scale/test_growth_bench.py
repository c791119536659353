"""The growth benchmark (tools/growth_bench.py) at 50,000 answers, against its targets, in `make test-scale`.

The million-answer run is the command itself (README, "Cost that does not grow
with the data": about 25 minutes here); this one keeps CI to a couple of
minutes and still holds a purge of 40,000 answers with another process voting
through it. Needs nothing but SQLite: under `make test-scale` it always runs.
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


def _args(**over):
    import argparse

    base = dict(answers=50_000, votes=15_000, corrections=1_000, expired=0.8, asks=30, writer="process",
                db=None, keep=False, seed=13, json=True)
    return argparse.Namespace(**{**base, **over})
