"""bot/store/ is a package of one module per table group; importing it stays light.

The PostgreSQL driver is imported when a `postgresql://` URL is opened (bot/store/postgres.py), never
by `import bot.store`: a SQLite deployment does not install it, and the chat processes import the store.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bot import store
from bot.store import batches

ROOT = Path(__file__).resolve().parent.parent


def test_importing_the_store_loads_neither_the_postgresql_driver_nor_a_model_library():
    # A fresh interpreter: this process may have imported any of them for other tests.
    code = ("import sys, bot.store; print(','.join(sorted({m.split('.')[0] for m in sys.modules}"
            " & {'psycopg', 'psycopg_binary', 'torch', 'transformers'})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"import bot.store loaded {out.stdout.strip()}"


def test_the_batch_size_set_on_batches_is_the_one_every_bulk_write_uses(tmp_path, monkeypatch):
    # BATCH_ROWS lives in batches.py and is read there at each call, by feedback.py and retention.py too:
    # setting it on that module (as test_growth does for the purge) reaches every bulk write.
    db = store.connect(tmp_path / "bot.db")
    monkeypatch.setattr(batches, "BATCH_ROWS", 2)
    pauses: list[float] = []
    monkeypatch.setattr(batches.time, "sleep", pauses.append)  # one pause between two batches
    store.record_forgotten(db, [f"a{i}" for i in range(5)], [7], "test")
    assert len(pauses) == 2  # 6 ids in batches of 2: three transactions
    assert store.forgotten_ids(db, keep_s=3600) == ({f"a{i}" for i in range(5)}, {7})
    pauses.clear()
    store.mark_trained(db, "v1", [1, 2, 3], ["x", "y", "z"])
    assert len(pauses) == 2  # 3 corrections, then 3 answers, each in two batches
