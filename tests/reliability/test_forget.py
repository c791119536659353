"""Forgetting reaches every copy, on a real training run of the tiny model (tests/reliability/forget_check.py).

Alice's and Bob's corrections train v0001, which the gate promotes; `forget slack:UALICE` leaves no
file under the adapters folder holding her text, marks v0001 and queues a retrain; the retrain
starts from the base model (v0001 has no clean ancestor) and, once promoted, v0001's weights are
gone. Forgetting Bob then leaves nothing to train on: the base model serves and v0002's weights go.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_forget_leaves_no_copy_and_the_marked_weights_go_after_the_clean_promotion(tiny_model_dir, tmp_path):
    env = {"BOT_CACHE_DIR": str(tiny_model_dir.parent), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(HERE / "forget_check.py"), "--steps", "60", "--json",
                           "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=1500,
                          env=env, cwd=tmp_path)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({k: r[k] for k in ("first", "forget", "retrain", "forget_bob", "seconds")}, ensure_ascii=False))
    assert r["first"]["verdict"] == "promoted" and r["alice_files_before"]  # her text was there to find
    f = r["forget"]
    assert (f["answers"], f["corrections"]) == (1, 1)
    assert f["alice_files_after"] == [] and f["marked"] == ["v0001"] and f["retrain_job"] is not None
    assert [v["marked"] for v in f["listing"]] == [True]
    t = r["retrain"]
    assert t["alice_files"] == []
    if t["verdict"] == "promoted":
        assert t["in_service"] == t["version"] and t["weights"] == {"v0001": False, t["version"]: True}
    else:  # a rejected clean candidate: the marked version serves, with its weights, until an operator acts
        assert t["verdict"] == "rejected" and t["in_service"] == "v0001" and t["weights"]["v0001"] is True
    b = r["forget_bob"]
    assert b["bob_files_after"] == [] and b["retrain_job"] is not None
    if t["verdict"] == "promoted":
        assert b["verdict"] == "skipped" and b["in_service"] is None and not any(b["weights"].values())
    assert not r["audit_holds_text"] and r["ok"] and proc.returncode == 0
