"""The worker process registers every task: the training jobs' and the retention purge's, on one huey."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_worker_entry_registers_every_task_and_periodic_task(tmp_path):
    # A fresh interpreter: in this one, other tests have imported the task modules already.
    code = ("import json; from bot.ops import worker; "
            "print(json.dumps({'tasks': sorted(worker.huey._registry._registry), "
            "'periodic': sorted(t.name for t in worker.huey._registry.periodic_tasks)}))")
    env = {"PATH": "/usr/bin:/bin", "BOT_HUEY_DB": str(tmp_path / "huey.db"), "BOT_DB": str(tmp_path / "bot.db")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    names = {n.rsplit(".", 1)[-1] for n in got["tasks"]}
    assert {"train_job", "scheduled_retrain", "heartbeat", "purge_old"} <= names
    assert {n.rsplit(".", 1)[-1] for n in got["periodic"]} == {"scheduled_retrain", "heartbeat", "purge_old"}
    assert not (tmp_path / "huey.db").exists()  # registering creates no queue file


def test_jobs_alone_does_not_import_ops():
    code = "import sys; import bot.learning.jobs; print(sorted(m for m in sys.modules if m.startswith('bot.ops')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
