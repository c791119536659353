"""bot/store/ is a package of one module per table group; importing it stays light.

The PostgreSQL driver is imported when a `postgresql://` URL is opened (bot/store/postgres.py), never
by `import bot.store`: a SQLite deployment does not install it, and the chat processes import the store.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_importing_the_store_loads_neither_the_postgresql_driver_nor_a_model_library():
    # A fresh interpreter: this process may have imported any of them for other tests.
    code = ("import sys, bot.store; print(','.join(sorted({m.split('.')[0] for m in sys.modules}"
            " & {'psycopg', 'psycopg_binary', 'torch', 'transformers'})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"import bot.store loaded {out.stdout.strip()}"
