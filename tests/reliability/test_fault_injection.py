"""Fault injection: the training worker SIGKILLed at ten seeded points of real training runs.

tests/reliability/kill_training.py runs each job in a child process on the
tiny model (3 steps, one golden question, the gate opened so every run that
gets that far promotes), stops it at the chosen point and kills it; a new
process then runs `jobs.recover`, as a restarted worker does. After every
kill: the pointer is None or names a complete, evaluated, promoted adapter
(and did so at the moment of the kill), no `.tmp-*` folder is left, the
killed job is failed, the GPU lock is free, the channel is told the truth,
and a serving model following the pointer loads what it names.
"""
from __future__ import annotations

import pytest

import kill_training  # tests/reliability/, next to this file

SEED, KILLS = 6, 10


@pytest.fixture
def served(tiny_model_dir, tmp_path):
    from bot.llm import generation

    return generation.load("tiny", cache_dir=tiny_model_dir.parent, adapters_dir=tmp_path / "adapters",
                           trainable=False)


def test_killing_the_worker_at_random_points_never_leaves_a_bad_adapter_in_service(kb_db, tiny_model_dir, served,
                                                                                   tmp_path):
    records = kill_training.run_kills(tmp_path, tiny_model_dir.parent, kills=KILLS, seed=SEED, steps=3,
                                      served=served)
    print([(r["kill"], r["killed_at"], r["state_at_kill"], r["pointer_before"], r["pointer_after"]) for r in records])
    assert len(records) == KILLS
    assert {r["kill"]: kill_training.problems(r) for r in records} == {r["kill"]: [] for r in records}
    for r in records:
        assert r["exit"] == -9 and r["killed_at"], r  # it was killed, at a point it had reached
        assert r["state_after"] == "failed" and r["recovered_jobs"] == [r["job"]]
        assert r["tmp_after"] == [] and r["litter_after"] == [] and not r["gpu_lock_held_after"]
        assert r["served"] == {"active": r["pointer_after"], "pointer_error": None}
    # The plan reached every kind of point, and the kills caught the loop in each state that matters.
    reached = {r["killed_at"].split()[0] for r in records}
    assert {"step", "saved", "eval", "before-replace", "after-replace", "before-pointer", "after-pointer",
            "after-trained", "time"} <= reached
    assert any(r["tmp_at_kill"] for r in records)  # recovery had half-written folders to remove
    assert {r["state_at_kill"] for r in records} >= {"training", "evaluating"}
    moved = [r for r in records if r["pointer_after"] != r["pointer_before"]]
    assert moved and all(r["point"] in ("after-pointer", "after-trained", "time") for r in moved)
    assert all("is in service" in r["outbox_last"] for r in moved)


def test_the_checks_after_a_kill_catch_what_would_be_wrong():
    good = {"exit": -9, "state_after": "failed", "finished_at_set": True, "job": 1, "tmp_after": [],
            "gpu_lock_held_after": False, "point": "eval", "pointer_before": "v0001", "pointer_at_kill": "v0001",
            "pointer_after": "v0001", "version": "v0002", "promotion_recorded": True,
            "outbox_last": "Job #1 failed: the worker stopped during evaluating; the adapter in service is unchanged.",
            "in_service_at_kill": {"complete": True, "verdict": "promoted", "metrics": ["golden"]},
            "in_service": {"complete": True, "verdict": "promoted", "metrics": ["golden"]},
            "versions_after": {"v0001": {"complete": True, "verdict": "promoted", "metrics": ["golden"]}},
            "served": {"active": "v0001", "pointer_error": None}}
    assert kill_training.problems(good) == []
    broken = {"exit": 0, "state_after": "evaluating", "tmp_after": [".tmp-v0002"], "gpu_lock_held_after": True,
              "pointer_after": "v0002", "promotion_recorded": False,
              "in_service": {"complete": "no adapter weights", "verdict": None, "metrics": []},
              "versions_after": {"v0002": {"complete": True, "verdict": None, "metrics": []}},
              "served": {"active": "v0001", "pointer_error": "cannot serve"}}
    found = kill_training.problems({**good, **broken})
    assert len(found) == 10, found
