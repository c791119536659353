"""The database is used from worker threads (chat transports run commands off their event loop)."""
from __future__ import annotations

import concurrent.futures

from bot import store


def test_a_database_opened_on_one_thread_works_on_others(tmp_path):
    db = store.connect(tmp_path / "bot.db")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        firsts = list(pool.map(lambda _: store.first_delivery(db, "slack:event:Ev1"), range(64)))
        others = list(pool.map(lambda n: store.first_delivery(db, f"slack:event:Ev{n}"), range(2, 34)))
    # Exactly one delivery of a key is the first, however the threads interleave.
    assert firsts.count(True) == 1 and all(others)
    assert db.execute("select count(*) from deliveries").fetchone()[0] == 33
    assert db.execute("pragma foreign_keys").fetchone()[0] == 1


def test_each_thread_has_its_own_transactions(tmp_path):
    db = store.connect(tmp_path / "bot.db")
    conns = set()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for conn in pool.map(lambda _: id(db.conn), range(16)):
            conns.add(conn)
    assert id(db.conn) not in conns and 1 <= len(conns) <= 4
