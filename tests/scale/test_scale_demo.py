"""The combined figure of "Scaling out" (`python -m tools.scale_demo`), run for real under `make test-scale`:
redis-server, a vLLM CPU server, the web role in its own process (no torch), and `python -m bot worker`.

It starts its own vLLM server: the suite's shared one serves a random-weights model LoRA cannot learn on,
and one server serves one base model; this one serves the tiny recipe with 32-wide heads, which the worker
trains on. The gate must promote, and the running server (same pid) must serve the promoted version."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if not os.environ.get("BOT_SCALE_TESTS"):
    pytest.skip("real-engine tests run under `make test-scale` (BOT_SCALE_TESTS=1)", allow_module_level=True)

from tools import vllm_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent


def test_a_job_queued_on_redis_by_the_web_role_is_promoted_by_a_worker_and_served_by_the_running_vllm(tmp_path):
    # Under `make test-scale` a missing engine fails (the module is skipped anywhere else): see conftest.py.
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make scale-deps installs it)", pytrace=False)
    if not vllm_server.VLLM_PYTHON.is_file():
        pytest.fail(f"no vLLM venv at {vllm_server.VLLM_PYTHON.parent.parent} (make vllm-venv)", pytrace=False)
    r = subprocess.run([sys.executable, "-m", "tools.scale_demo", "--json", "--questions", "3",
                        "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    print(r.stderr[-4000:])
    assert r.stdout.strip(), r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["verdict"] == "promoted" and out["version"], out["reasons"]
    assert out["queued_in_redis"] >= 1  # the job waited in Redis: the web role trained nothing itself
    assert out["web_torch_imported"] is False
    assert out["vllm_never_restarted"] and out["version"] in out["vllm_served_after"]
    assert all(row["adapter_before"] is None and row["adapter_after"] == out["version"] for row in out["rows"])
    assert out["f1_after"] > out["f1_before"], out["rows"]  # the corrections moved the served answers
    assert r.returncode == 0 and out["ok"]
