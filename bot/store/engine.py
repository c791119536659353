"""The database itself: one connection per thread, transactions, the engine's dialect, and ping.

What every table group's module writes through: `transaction` (one BEGIN IMMEDIATE on this thread's
connection, writers of one process queued on a lock, counter changes held until the commit), `_lock`
and `_for_update` (what a read-then-write needs on PostgreSQL), and `ping` (a fresh read-only open,
for /health). Opening a database is migrating it: `connect` is in bot/store/migrations.py.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from bot.store import postgres


class ThreadLocalDatabase(sqlite_utils.Database):
    """A database file with one sqlite3 connection per thread.

    The chat transports run commands on worker threads (`asyncio.to_thread`)
    while the database is opened on the main thread; sqlite3 refuses a
    connection from another thread, and one connection shared across threads
    would mix their transactions (one thread's commit or rollback taking
    another's half-done writes) and their `rowcount`s (which `first_delivery`
    relies on). A connection per thread, in WAL mode, gives each thread its
    own transactions; `busy_timeout` makes writers wait their turn.
    """

    def __init__(self, path: Path | str):
        self._path, self._local = str(path), threading.local()
        super().__init__(self._open())

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path)
        # synchronous=FULL: a vote the user was told is saved survives a power cut too, not only a
        # killed process; feedback writes are few, so the fsync per commit costs nothing noticeable.
        for pragma in ("busy_timeout = 10000", "foreign_keys = ON", "synchronous = FULL", "recursive_triggers = ON"):
            conn.execute(f"PRAGMA {pragma}")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:  # type: ignore[override]
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
        return conn

    @conn.setter
    def conn(self, value: sqlite3.Connection) -> None:
        self._local.conn = value


@contextmanager
def transaction(db):
    """One transaction on this thread's connection: every statement in the block commits together, or none.

    `with db.conn:` alone is not one: sqlite-utils 4 commits each `db.execute`
    that opens an implicit transaction as soon as it returns, so a block of
    them was a series of commits (a delivery key could outlive the vote it
    keyed). An explicit BEGIN turns that off for the block; IMMEDIATE takes
    the write lock at once, so a transaction that reads before it writes
    never fails to upgrade its lock (SQLITE_BUSY, which busy_timeout does not retry).

    Writers of one process queue on a lock first: SQLite's busy handler sleeps
    in growing steps (up to 100 ms) between tries, so threads contending inside
    SQLite leave the file idle between commits; a queue hands the lock on at
    once (300 concurrent votes: the slowest waited over 3 s without it).

    On PostgreSQL (bot/store/postgres.py) BEGIN IMMEDIATE is a plain BEGIN at READ COMMITTED: row locks
    instead of one file lock, so writers of other rows no longer wait for each other. What that
    changes for a transaction that reads before it writes is handled where it does (`_lock`,
    `_for_update`); counter changes (`_bump`) are held until the end of the block and written then,
    in one order, so that no two transactions lock counter rows in opposite orders (a deadlock on
    PostgreSQL) and a hot counter row is locked for the commit only, not the whole transaction."""
    conn = db.conn
    with _writer_lock(db):
        conn.execute("BEGIN IMMEDIATE")
        pending = _PENDING.__dict__.setdefault("by_db", {})
        pending[id(db)] = {}
        try:
            yield conn
            _write_counters(db, pending.pop(id(db)))
        except BaseException:
            pending.pop(id(db), None)
            conn.rollback()
            raise
        conn.commit()


# Counter changes of this thread's open transaction, per database (see `transaction`, `_bump`).
_PENDING = threading.local()


def _lock(db, *key) -> None:
    """Serialise, until the end of the current transaction, the transactions that take the same `key`.

    For a read-then-write whose row may not exist yet (a first vote, a first pending correction):
    there is no row for `select … for update` to lock. SQLite needs nothing: BEGIN IMMEDIATE already
    holds the one write lock. PostgreSQL (READ COMMITTED): a transaction-scoped advisory lock on a
    64-bit hash of the key (a collision only makes two unrelated writes wait for each other)."""
    if getattr(db, "dialect", "sqlite") == postgres.DIALECT:
        db.execute("select pg_advisory_xact_lock(hashtextextended(?, 0))",
                   [json.dumps(key, ensure_ascii=False)])


def _for_update(db) -> str:
    """` for update` on PostgreSQL: the row read is locked until commit, so a concurrent update or
    delete of it waits (or has happened, and is read); SQLite has no such clause and needs none."""
    return " for update" if getattr(db, "dialect", "sqlite") == postgres.DIALECT else ""


_WRITERS: dict[str, threading.Lock] = {}
_WRITERS_LOCK = threading.Lock()


def _writer_lock(db) -> threading.Lock:
    """One lock per database file in this process (a :memory: database has one connection: no lock needed)."""
    path = getattr(db, "_path", None)
    if path is None:
        return threading.Lock()
    with _WRITERS_LOCK:
        return _WRITERS.setdefault(path, threading.Lock())


def ping(path: Path | str, timeout: float = 2.0) -> int:
    """Open the database file afresh, read-only, and run a real query: the number of migrations applied.

    A fresh connection, not the process's cached ones: those keep working on a
    file that was deleted or moved away, so only a new open shows whether the
    next connection (a new thread, a restart) would find the database."""
    if postgres.is_url(path):
        return postgres.ping(str(path), timeout)
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, timeout=timeout)
    try:
        return conn.execute("select count(*) from _migrations").fetchone()[0]
    finally:
        conn.close()


# Counter changes wait in the open transaction and are written at its commit (see `transaction`), so
# the holding and the writing live here with it; what the counters are is bot/store/metrics.py.

def _bump(db, changes: dict[tuple[str, tuple], float]) -> None:
    """Add each delta to its counter, in the caller's transaction: held until its end (`transaction`)."""
    pending = getattr(_PENDING, "by_db", {}).get(id(db))
    if pending is None:  # outside `transaction` (none of the store's callers): at once
        _write_counters(db, changes)
        return
    for key, delta in changes.items():
        pending[key] = pending.get(key, 0) + delta


def _write_counters(db, changes: dict[tuple[str, tuple], float]) -> None:
    """The upserts, in (name, labels) order: transactions lock counter rows in one order (portable
    upsert: SQLite, PostgreSQL)."""
    rows = sorted((name, json.dumps(list(labels), ensure_ascii=False), delta)
                  for (name, labels), delta in changes.items() if delta)
    if rows:
        db.conn.executemany("insert into counters (name, labels, value) values (?, ?, ?) on conflict (name, labels)"
                            " do update set value = counters.value + excluded.value", rows)
