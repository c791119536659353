"""bot/store/ is a package of one module per table group: a setting of the module that owns it reaches
every module that uses it. (That `import bot.store` loads no PostgreSQL driver and no model library is
tests/test_architecture.py's fresh-interpreter check.)
"""
from __future__ import annotations

from bot import store
from bot.store import batches


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
