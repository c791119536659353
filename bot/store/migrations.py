"""All SQL lives here: the database, its ordered migrations, and the queries.

One SQLite file (WAL mode, so the bot and the worker can read while one
writes) through sqlite-utils. Migrations are plain functions applied in order
and recorded in `_migrations`, as simonw's `llm` does: a migration, once
shipped, is never edited; a change is a new function at the end.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import sqlite_utils

from bot.store import postgres as pgdb

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def migration(fn):
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_knowledge(db: sqlite_utils.Database) -> None:
    db["documents"].create(
        {"doc": str, "source": str, "sha256": str, "size": int, "mtime": float, "indexed_at": float, "chunks": int},
        pk="doc",
    )
    # A passage is stored once however often it appears; `occurrences` says where.
    db["passages"].create({"id": int, "hash": str, "text": str, "tokens": str}, pk="id")
    db["passages"].create_index(["hash"], unique=True)
    db["occurrences"].create(
        {"doc": str, "ord": int, "heading": str, "passage_id": int},
        pk=("doc", "ord"),
        foreign_keys=[("doc", "documents", "doc"), ("passage_id", "passages", "id")],
    )
    db["occurrences"].create_index(["passage_id"])
    db["embeddings"].create(
        {"passage_id": int, "model": str, "vector": bytes},
        pk=("passage_id", "model"),
        foreign_keys=[("passage_id", "passages", "id")],
    )
    # English stem -> Chinese words of the corpus, with weights (crosslingual.py).
    db["lexicon"].create({"term": str, "zh": str, "weight": float}, pk=("term", "zh"))
    db["meta"].create({"key": str, "value": str}, pk="key")


@migration
def m002_answers(db: sqlite_utils.Database) -> None:
    # Everything needed to learn from feedback later: who asked where, what
    # they saw (passage ids and text, since the index changes), and which
    # model and adapter produced the answer.
    db["answers"].create(
        {
            "id": str, "created_at": float, "platform": str, "channel": str, "thread": str, "user": str,
            "question": str, "passages": str, "answer": str, "citations": str, "mode": str, "notice": str,
            "model": str, "revision": str, "adapter": str, "latency_ms": float, "retrieval_ms": float,
            "prompt_tokens": int, "completion_tokens": int,
        },
        pk="id",
    )
    db["answers"].create_index(["platform", "channel", "thread", "created_at"])
    db["answers"].create_index(["user", "created_at"])


@migration
def m003_feedback(db: sqlite_utils.Database) -> None:
    # One vote per person per answer (the last click wins); corrections wait
    # for review unless they come from someone trusted (the training issue).
    db["votes"].create(
        {"answer_id": str, "user": str, "platform": str, "value": int, "created_at": float},
        pk=("answer_id", "user"), foreign_keys=[("answer_id", "answers", "id")],
    )
    db["corrections"].create(
        {"id": int, "answer_id": str, "user": str, "platform": str, "text": str, "status": str,
         "created_at": float, "reviewed_by": str, "reviewed_at": float},
        pk="id", foreign_keys=[("answer_id", "answers", "id")],
    )
    db["corrections"].create_index(["answer_id"])
    db["corrections"].create_index(["status"])
    # Delivery ids already handled (Slack event ids and retries, Discord interaction ids).
    db["deliveries"].create({"key": str, "created_at": float}, pk="key")
    # Every move of the adapter pointer, so rollback knows where to go back to.
    db["promotions"].create({"id": int, "version": str, "previous": str, "action": str, "by": str, "at": float},
                            pk="id")


@migration
def m004_loop(db: sqlite_utils.Database) -> None:
    # The learning loop. `used_in`/`trained_in` name the promoted adapter that
    # learned a correction or an upvoted answer (NULL: not learned yet), so a
    # retrain knows what is new; opt-outs keep a person's data out of training;
    # jobs are the training runs; the outbox holds what a job has to say in the
    # chat, posted by the bot process so the worker never holds chat tokens.
    db["corrections"].add_column("used_in", str)
    db["answers"].add_column("trained_in", str)
    db["opt_outs"].create({"platform": str, "user": str, "created_at": float}, pk=("platform", "user"))
    db["jobs"].create(
        {"id": int, "kind": str, "state": str, "requested_by": str, "platform": str, "channel": str,
         "thread": str, "created_at": float, "started_at": float, "finished_at": float, "step": int,
         "steps": int, "loss": float, "version": str, "verdict": str, "error": str,
         "cancel_requested": str, "data_hash": str, "result": str, "runner": str},
        pk="id")
    db["jobs"].create_index(["state"])
    db["outbox"].create(
        {"id": int, "job_id": int, "platform": str, "channel": str, "thread": str, "text": str,
         "created_at": float, "claimed_at": float, "claimed_by": str, "sent_at": float},
        pk="id", foreign_keys=[("job_id", "jobs", "id")])
    db["outbox"].create_index(["platform", "sent_at"])


@migration
def m005_operations(db: sqlite_utils.Database) -> None:
    # Every privileged action (admin commands, reviews, forgets, purges), who
    # did it and how it ended, for the operator; and an index so the
    # retention purge finds old questions without a scan.
    db["audit"].create({"id": int, "at": float, "platform": str, "user": str, "action": str, "target": str,
                        "result": str, "detail": str}, pk="id")
    db["audit"].create_index(["at"])
    db["answers"].create_index(["created_at"])


@migration
def m006_outbox_errors(db: sqlite_utils.Database) -> None:
    # Why an outbox message was given up on (a channel that no longer exists, a
    # bot removed from it): such a row is done, but it was not sent.
    db["outbox"].add_column("dropped", str)


@migration
def m007_inflight(db: sqlite_utils.Database) -> None:
    # Answers being written: the placeholder each one posted ("Thinking…" on
    # Slack, a deferred interaction or nothing yet on Discord) and the process
    # that owns it, so a restart can finish what a dead process left behind.
    # The question is kept for the retrieval-only answer the restart posts.
    db["inflight"].create(
        {"id": int, "platform": str, "channel": str, "thread": str, "message": str, "interaction": str,
         "user": str, "question": str, "owner": str, "created_at": float},
        pk="id")
    db["inflight"].create_index(["owner"])
    # An outbox row that replaces a message (`update_message`: a Slack ts, a
    # Discord message id) or edits an interaction's reply (`interaction`:
    # "application_id/token") instead of posting a new one.
    db["outbox"].add_column("update_message", str)
    db["outbox"].add_column("interaction", str)


@migration
def m008_forget(db: sqlite_utils.Database) -> None:
    # Ids (never text) of answers and corrections deleted by forget or the retention purge, for a
    # few days: a training job that built its snapshot before the deletion writes its version after
    # it, and bot.learning.forgetting.after_job finds their rows there by these ids.
    db["forgotten"].create({"kind": str, "id": str, "at": float, "why": str}, pk=("kind", "id"))
    db["forgotten"].create_index(["at"])


@migration
def m009_answer_query(db: sqlite_utils.Database) -> None:
    # What retrieval searched for when it was not the question as asked: a follow-up made standalone
    # (by the model, or the question with its thread's earlier questions), an English question in
    # Chinese (bot/answering/condense.py). NULL for a question searched as it is.
    db["answers"].add_column("query", str)


@migration
def m010_ranker(db: sqlite_utils.Database) -> None:
    # The learned re-ranker (bot.knowledge.ranker), trained at index time on the indexed
    # passages: coefficients as JSON, with the index signature it was trained on.
    db["rankers"].create({"name": str, "model": str, "signature": str, "trained_at": float}, pk="name")


@migration
def m011_leases(db: sqlite_utils.Database) -> None:
    # Who holds what, until when: a training job (`job:<id>`) or the one Discord client (`discord`) is
    # held by its process while a heartbeat renews `expires_at`; a lease past it belongs to a process
    # that stopped, whatever host it ran on, so recovery needs no pid or hostname. Plain SQL (one row
    # per name, upserted with ON CONFLICT) so it ports to PostgreSQL as it is.
    db.execute("create table leases (name text primary key, owner text not null,"
               " acquired_at float not null, expires_at float not null)")


@migration
def m012_answer_abstained(db: sqlite_utils.Database) -> None:
    # 1 when the answer said the knowledge base does not cover the question (answering/abstention.py,
    # or the model said so); rows from before this column read 0.
    db["answers"].add_column("abstained", int, not_null_default=0)


@migration
def m013_counters(db: sqlite_utils.Database) -> None:
    # What /metrics reports, kept as rows are written (bot/ops/metrics.py) so that a scrape reads a
    # few rows whatever the size of `answers`: `labels` is the JSON list of the label values. Filled
    # once here from the tables (and the purge tally the collector used to add back); from now on
    # every write of an answer, vote or correction updates its counters in the same transaction.
    db["counters"].create({"name": str, "labels": str, "value": float}, pk=("name", "labels"))
    # The purge deletes old delivery keys in batches: without this, each batch would scan the table.
    db["deliveries"].create_index(["created_at"])
    _recount(db)
    purged = get_meta(db, _PURGED_TALLY)
    if purged:
        data = json.loads(purged)
        same = [float(b) for b in data.get("bounds_ms", [])] == _bounds_ms()
        for r in data["rows"]:
            key = (r["platform"], r["mode"])
            _bump(db, {("answers", key): r["count"], ("answer_latency_ms_sum", key): r["sum_ms"]})
            if same:  # buckets counted under other bounds cannot be re-binned: they fall into +Inf
                cumulative = [0] + list(r["buckets"])
                _bump(db, {("answer_latency_le", key + (repr(b),)): cumulative[i + 1] - cumulative[i]
                           for i, b in enumerate(_bounds_ms())})
        db.execute("delete from meta where key = ?", [_PURGED_TALLY])


@migration
def m014_uploads(db: sqlite_utils.Database) -> None:
    # Documents added from chat (`/kb add`): who added each, when, and what they sent, beside its row
    # in `documents` (whose `indexed_at` moves on every re-index, so it cannot say when it was added).
    # Plain SQL so it ports to PostgreSQL as it is.
    db.execute("create table uploads (doc text primary key, name text not null, added_at float not null,"
               " added_by text not null, size integer not null, sha256 text not null)")


@migration
def m015_passage_location(db: sqlite_utils.Database) -> None:
    # Where in its document a passage sits, for citations: "p. 12" (PDF), "slide 3", "sheet Revenue",
    # or the file inside a zip. On the occurrence, not the passage: the same text can sit in two places.
    db["occurrences"].add_column("location", str, not_null_default="")


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


def connect(path: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) and migrate the database; usable from any thread (see ThreadLocalDatabase).

    A `postgresql://` URL opens PostgreSQL instead, through the same queries (bot/pgdb.py)."""
    if pgdb.is_url(path):
        db = pgdb.PostgresDatabase(str(path))
        migrate(db)
        return db
    if str(path) == ":memory:":
        db = sqlite_utils.Database(":memory:")  # one private database: it cannot be shared by threads
        db.execute("PRAGMA foreign_keys = ON")
        migrate(db)
        return db
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = ThreadLocalDatabase(path)
    db.enable_wal()
    migrate(db)
    return db


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

    On PostgreSQL (bot/pgdb.py) BEGIN IMMEDIATE is a plain BEGIN at READ COMMITTED: row locks
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
    if getattr(db, "dialect", "sqlite") == pgdb.DIALECT:
        db.execute("select pg_advisory_xact_lock(hashtextextended(?, 0))",
                   [json.dumps(key, ensure_ascii=False)])


def _for_update(db) -> str:
    """` for update` on PostgreSQL: the row read is locked until commit, so a concurrent update or
    delete of it waits (or has happened, and is read); SQLite has no such clause and needs none."""
    return " for update" if getattr(db, "dialect", "sqlite") == pgdb.DIALECT else ""


_WRITERS: dict[str, threading.Lock] = {}
_WRITERS_LOCK = threading.Lock()


def _writer_lock(db) -> threading.Lock:
    """One lock per database file in this process (a :memory: database has one connection: no lock needed)."""
    path = getattr(db, "_path", None)
    if path is None:
        return threading.Lock()
    with _WRITERS_LOCK:
        return _WRITERS.setdefault(path, threading.Lock())


def migrate(db: sqlite_utils.Database) -> None:
    if getattr(db, "dialect", "sqlite") == pgdb.DIALECT:
        # Replicas starting together: one migrates, the others wait here, then find it done. A
        # session lock, not a transaction's: each migration commits on its own (SQLite: each
        # migration's BEGIN IMMEDIATE and the re-read of `_migrations` inside it do the same; here
        # `create table if not exists` itself is not safe against a concurrent create).
        db.execute("select pg_advisory_lock(?)", [MIGRATION_LOCK])
        try:
            _migrate(db)
        finally:
            db.execute("select pg_advisory_unlock(?)", [MIGRATION_LOCK])
    else:
        _migrate(db)


MIGRATION_LOCK = 0x626F74_6D6967  # "bot" "mig": the advisory lock key migrate() holds on PostgreSQL


def _migrate(db) -> None:
    with transaction(db):  # SQLite: a bare CREATE beside another process's start got "database is locked" at once
        db["_migrations"].create({"name": str, "applied_at": float}, pk="name", if_not_exists=True)
    done = {r["name"] for r in db["_migrations"].rows}
    for fn in MIGRATIONS:
        if fn.__name__ not in done:
            # One transaction per migration, recorded with it: a crash half-way leaves it unapplied
            # (`with db.conn:` would commit each statement, and a rerun would trip on what was done).
            with transaction(db):
                # Read again under the write lock: a process starting beside this one (on SQLite,
                # which has no migration lock) may have applied it since `done` was read.
                if db.execute("select 1 from _migrations where name = ?", [fn.__name__]).fetchone():
                    continue
                fn(db)
                db["_migrations"].insert({"name": fn.__name__, "applied_at": time.time()})


# --- knowledge base -------------------------------------------------------


def document(db, doc: str) -> dict | None:
    rows = list(db.query("select * from documents where doc = ?", [doc]))
    return rows[0] if rows else None


def documents(db) -> list[dict]:
    return list(db.query("select * from documents order by doc"))


def remove_document(db, doc: str) -> None:
    """Forget a document; passages no other document shares go with it."""
    with transaction(db):
        _lock(db, "index")
        db.execute("delete from occurrences where doc = ?", [doc])
        db.execute("delete from documents where doc = ?", [doc])
        _drop_orphans(db)


def _drop_orphans(db) -> None:
    orphan = "select id from passages where id not in (select passage_id from occurrences)"
    db.execute(f"delete from embeddings where passage_id in ({orphan})")
    db.execute(f"delete from passages where id in ({orphan})")


def replace_document(db, record: dict, chunks: list[tuple[str, str, str, str]]) -> list[int]:
    """Store a document's chunks (heading, text, hash, tokens[, location]) in one transaction.

    Plain SQL here rather than sqlite-utils' insert helpers: those commit on
    their own, and a crash half-way must leave the previous version intact.
    Returns the ids of passages that were new to the database.
    """
    new: list[int] = []
    with transaction(db):
        # PostgreSQL: two re-indexes at once (two replicas' /kb reindex) would both miss a new passage
        # and both insert it, or drop as orphans the passages the other is linking; one at a time.
        _lock(db, "index")
        db.execute("delete from occurrences where doc = ?", [record["doc"]])
        db.execute(
            "insert or replace into documents (doc, source, sha256, size, mtime, indexed_at, chunks)"
            " values (:doc, :source, :sha256, :size, :mtime, :indexed_at, :chunks)",
            {**record, "chunks": len(chunks)},
        )
        for ord_, (heading, text, digest, tokens, *where) in enumerate(chunks):
            row = db.execute("select id from passages where hash = ?", [digest]).fetchone()
            if row:
                pid = row[0]
            else:
                pid = db.execute(
                    "insert into passages (hash, text, tokens) values (?, ?, ?)", [digest, text, tokens]
                ).lastrowid
                new.append(pid)
            db.execute(
                "insert or ignore into occurrences (doc, ord, heading, passage_id, location) values (?, ?, ?, ?, ?)",
                [record["doc"], ord_, heading, pid, where[0] if where else ""],
            )
        _drop_orphans(db)
    return new


def replace_document_meta(db, record: dict) -> None:
    """A file touched but not changed: remember its new mtime so the next run skips it cheaply."""
    with transaction(db):
        db.execute("update documents set mtime = ?, size = ?, indexed_at = ? where doc = ?",
                   [record["mtime"], record["size"], record["indexed_at"], record["doc"]])


def passages(db) -> list[dict]:
    """Every passage with the first place it occurs (document order), for building indexes."""
    sql = """
    select p.id, p.text, p.tokens, o.doc, o.heading, o.ord, o.location
    from passages p
    join occurrences o on (o.doc, o.ord) = (
        select doc, ord from occurrences where passage_id = p.id order by doc, ord limit 1)
    order by p.id
    """
    return list(db.query(sql))


def passage_count(db) -> int:
    return db.execute("select count(*) from passages").fetchone()[0]


def embeddings(db, model: str) -> dict[int, bytes]:
    return {r[0]: r[1] for r in db.execute("select passage_id, vector from embeddings where model = ?", [model])}


def save_embeddings(db, model: str, vectors: dict[int, bytes]) -> None:
    with transaction(db):
        db.conn.executemany(
            "insert or replace into embeddings (passage_id, model, vector) values (?, ?, ?)",
            [(pid, model, v) for pid, v in vectors.items()],
        )


def lexicon(db) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for term, zh, weight in db.execute("select term, zh, weight from lexicon order by term, weight desc"):
        out.setdefault(term, []).append((zh, weight))
    return out


def save_lexicon(db, rows: Iterable[tuple[str, str, float]]) -> None:
    with transaction(db):
        _lock(db, "index")  # PostgreSQL: a concurrent delete-then-insert would mix two lexicons
        db.execute("delete from lexicon")
        db.conn.executemany("insert or replace into lexicon (term, zh, weight) values (?, ?, ?)", list(rows))


def ranker(db, name: str = "lexical") -> dict | None:
    """The stored re-ranker: {"model": JSON text, "signature": ..., "trained_at": ...}, or None."""
    rows = list(db.query("select model, signature, trained_at from rankers where name = ?", [name]))
    return rows[0] if rows else None


def save_ranker(db, model: str | None, signature: str, name: str = "lexical") -> None:
    """Store (or, with model None, remove) the re-ranker."""
    with transaction(db):
        _lock(db, "index")  # PostgreSQL: two saves at once would both delete, then both insert (a key conflict)
        db.execute("delete from rankers where name = ?", [name])
        if model is not None:
            db.execute("insert into rankers (name, model, signature, trained_at) values (?, ?, ?, ?)",
                       [name, model, signature, time.time()])


def get_meta(db, key: str) -> str | None:
    row = db.execute("select value from meta where key = ?", [key]).fetchone()
    return row[0] if row else None


def set_meta(db, key: str, value: str) -> None:
    with transaction(db):
        db.execute("insert or replace into meta (key, value) values (?, ?)", [key, value])


# --- answers --------------------------------------------------------------


def record_answer(db, row: dict) -> None:
    row = {**row, "passages": json.dumps(row["passages"], ensure_ascii=False),
           "citations": json.dumps(row["citations"], ensure_ascii=False)}
    cols = ", ".join(row)
    with transaction(db):
        db.execute(f"insert into answers ({cols}) values ({', '.join(':' + c for c in row)})", row)
        _count_answer(db, row)


def answer(db, answer_id: str) -> dict | None:
    row = db.execute("select * from answers where id = ?", [answer_id]).fetchone()
    if not row:
        return None
    cols = [d[0] for d in db.execute("select * from answers limit 0").description]
    out = dict(zip(cols, row))
    out["passages"] = json.loads(out["passages"])
    out["citations"] = json.loads(out["citations"])
    return out


def thread_turns(db, platform: str, channel: str, thread: str, limit: int = 10) -> list[tuple[str, str]]:
    """(question, answer) pairs of a conversation, oldest first."""
    if not thread:
        return []
    rows = db.execute(
        "select question, answer from answers where platform = ? and channel = ? and thread = ?"
        " order by created_at desc limit ?",
        [platform, channel, thread, limit],
    ).fetchall()
    return [(q, a) for q, a in reversed(rows)]


def recent_answers(db, platform: str, user: str, limit: int = 5) -> list[dict]:
    rows = db.execute(
        "select a.id, a.question, a.answer, a.created_at, v.value from answers a"
        " left join votes v on v.answer_id = a.id and v.user = a.user"
        " where a.platform = ? and a.user = ? order by a.created_at desc limit ?",
        [platform, user, limit]).fetchall()
    return [dict(zip(("id", "question", "answer", "created_at", "vote"), r)) for r in rows]


# --- feedback -------------------------------------------------------------


class Duplicate(Exception):
    """Raised inside a write whose delivery key is already stored: the work was done by an earlier delivery."""


def _claim(db, delivery: str | None) -> None:
    """Store `delivery` in the current transaction; a key already there means this delivery is a resend.

    Called inside the write's own `with transaction(db):`: the key and the work commit
    together or not at all, so a delivery that died before its commit leaves
    no key behind and the resend is processed, and one that committed is never
    processed twice."""
    if delivery is not None and db.execute("insert or ignore into deliveries (key, created_at) values (?, ?)",
                                           [delivery, time.time()]).rowcount != 1:
        raise Duplicate(delivery)


def delivered(db, key: str) -> bool:
    """Whether the work of delivery `key` is stored (its key commits with it)."""
    return db.execute("select 1 from deliveries where key = ?", [key]).fetchone() is not None


def record_vote(db, answer_id: str, user: str, platform: str, value: int, delivery: str | None = None) -> None:
    with transaction(db):
        _claim(db, delivery)
        # PostgreSQL: two clicks of one person at once must not both read "no vote" (the counter would
        # count two), and a forget or purge deleting this vote waits for the row lock, or has happened.
        _lock(db, "vote", answer_id, user)
        old = db.execute("select value from votes where answer_id = ? and user = ?" + _for_update(db),
                         [answer_id, user]).fetchone()
        db.execute("insert or replace into votes (answer_id, user, platform, value, created_at)"
                   " values (?, ?, ?, ?, ?)", [answer_id, user, platform, value, time.time()])
        if not old or old[0] != value:  # a changed vote moves from one value to the other
            _bump(db, {("votes", (str(value),)): 1, **({("votes", (str(old[0]),)): -1} if old else {})})


def record_correction(db, answer_id: str, user: str, platform: str, text: str, status: str = "pending",
                      delivery: str | None = None, accepted_by: str | None = None) -> int:
    """Store a correction; its id. One per person per answer while it waits: a new one from the same
    person replaces the text of their pending one (same id, one review item), so repeating it cannot
    flood the review queue. Once reviewed, a new correction is a new item. With `accepted_by`, it is
    reviewed by them in the same commit; `delivery` is the chat delivery's key, stored with it."""
    now = time.time()
    with transaction(db):  # BEGIN IMMEDIATE: two corrections from one person cannot both miss and both insert
        _claim(db, delivery)
        _lock(db, "correction", answer_id, user, platform)  # PostgreSQL: the same, by an advisory lock
        # `status = 'pending'` again outside the subquery: on PostgreSQL a review committed while this
        # waited for the row is seen there, and the reviewed text is left alone (a new item follows).
        row = status == "pending" and db.execute(
            "update corrections set text = ?, created_at = ? where id = (select id from corrections"
            " where answer_id = ? and user = ? and platform = ? and status = 'pending' order by id limit 1)"
            " and status = 'pending' returning id", [text, now, answer_id, user, platform]).fetchone()
        if row:
            cid = row[0]
        else:
            cid = db.execute(
                "insert into corrections (answer_id, user, platform, text, status, created_at) values (?, ?, ?, ?, ?, ?)",
                [answer_id, user, platform, text, status, now]).lastrowid
            _bump(db, {("corrections", (status,)): 1})
        if accepted_by:
            _review(db, cid, "accepted", accepted_by)
        return cid


def votes(db, answer_id: str) -> list[dict]:
    return [dict(r) for r in db.query("select * from votes where answer_id = ?", [answer_id])]


def corrections(db, answer_id: str | None = None, status: str | None = None) -> list[dict]:
    sql, args = "select * from corrections where 1 = 1", []
    if answer_id:
        sql, args = sql + " and answer_id = ?", args + [answer_id]
    if status:
        sql, args = sql + " and status = ?", args + [status]
    return list(db.query(sql + " order by id", args))


def first_delivery(db, key: str) -> bool:
    """True the first time `key` is seen: a retried delivery must not be answered twice."""
    with transaction(db):
        return db.execute("insert or ignore into deliveries (key, created_at) values (?, ?)",
                          [key, time.time()]).rowcount == 1


class ServiceMoved(Exception):
    """Another promotion or rollback changed the version in service after the caller read it."""

    def __init__(self, now: str | None):
        super().__init__(f"the version in service changed meanwhile (now {now or 'the base model'})")
        self.now = now


def record_promotion(db, version: str | None, previous: str | None, action: str, by: str, *,
                     check: bool = False) -> None:
    """Record that `version` replaced `previous` in service. With `check`, only if `previous` is still
    what is in service: two admins promoting at once must not both record a move from the same version
    (the second would be served while rollback's history pointed past the first); ServiceMoved otherwise."""
    with transaction(db):
        if check:
            _lock(db, "promotions")  # PostgreSQL; on SQLite BEGIN IMMEDIATE already serialises the read
            _, now = in_service(db)
            if now != previous:
                raise ServiceMoved(now)
        db.execute("insert into promotions (version, previous, action, by, at) values (?, ?, ?, ?, ?)",
                   [version, previous, action, by, time.time()])


def promotions(db) -> list[dict]:
    return list(db.query("select * from promotions order by id"))


def in_service(db) -> tuple[bool, str | None]:
    """(recorded, version): the version the latest promotion, rollback or fallback put in service (None:
    the base model); recorded is False while no move was ever recorded. The one truth every replica reads."""
    rows = list(db.query("select version from promotions order by id desc limit 1"))
    return (True, rows[0]["version"] or None) if rows else (False, None)


# --- the learning loop: review, privacy, what a snapshot reads ------------


def correction(db, correction_id: int) -> dict | None:
    rows = list(db.query("select * from corrections where id = ?", [correction_id]))
    return rows[0] if rows else None


def _review(db, correction_id: int, status: str, by: str) -> bool:
    done = db.execute(
        "update corrections set status = ?, reviewed_by = ?, reviewed_at = ? where id = ? and status = 'pending'",
        [status, by, time.time(), correction_id]).rowcount == 1
    if done:
        _bump(db, {("corrections", ("pending",)): -1, ("corrections", (status,)): 1})
    return done


class _NotDone(Exception):
    pass


def review_correction(db, correction_id: int, status: str, by: str, delivery: str | None = None) -> bool:
    """Accept or reject a pending correction; False when it is not pending (already reviewed, or gone)."""
    try:
        with transaction(db):
            _claim(db, delivery)
            if not _review(db, correction_id, status, by):
                raise _NotDone  # rolls the delivery key back too: a refused review did no work
            return True
    except _NotDone:
        return False


def pending_corrections(db, limit: int = 50) -> list[dict]:
    """Corrections waiting for review, oldest first, with the question and answer they correct."""
    return list(db.query(
        "select c.id, c.answer_id, c.user, c.platform, c.text, c.created_at, a.question, a.answer"
        " from corrections c join answers a on a.id = c.answer_id where c.status = 'pending'"
        " order by c.created_at, c.id limit ?", [limit]))


def _opt_out(db, platform: str, user: str) -> None:
    """Inside the caller's transaction (set_opt_out, forget_user)."""
    db.execute("insert or ignore into opt_outs (platform, user, created_at) values (?, ?, ?)",
               [platform, user, time.time()])


def set_opt_out(db, platform: str, user: str, out: bool = True, delivery: str | None = None) -> None:
    with transaction(db):
        _claim(db, delivery)
        if out:
            _opt_out(db, platform, user)
        else:
            db.execute("delete from opt_outs where platform = ? and user = ?", [platform, user])


def opted_out(db) -> set[tuple[str, str]]:
    return {(p, u) for p, u in db.execute("select platform, user from opt_outs")}


def forget_user(db, platform: str, user: str, delivery: str | None = None, opt_out: bool = False, *,
                batch: int | None = None) -> dict:
    """Delete a person's questions (answers rows, with all feedback on them), votes and corrections,
    and with `opt_out` opt them out of training.

    In batches of `batch` rows, one transaction each (see `BATCH_ROWS`): a
    crash half-way leaves part of it done, and running it again finishes it.
    The opt-out commits first (nothing of theirs is trained on from then on);
    the chat delivery's key commits with the last batch, so a delivery that
    died half-way is not taken for done when it is resent. The opt-out row
    stays, so their future questions stay out of training too."""
    if delivery is not None and delivered(db, delivery):
        raise Duplicate(delivery)
    if opt_out:
        with transaction(db):
            _opt_out(db, platform, user)
    counts = _delete_answers_batched(db, "platform = ? and user = ?", [platform, user], batch)
    # Their votes and corrections on other people's answers.
    counts["votes"] += _delete_batched(db, "votes", "answer_id", "platform = ? and user = ?", [platform, user],
                                       batch, gauge="value", key_filter="platform = ? and user = ?")
    counts["corrections"] += _delete_batched(db, "corrections", "id", "platform = ? and user = ?", [platform, user],
                                             batch, gauge="status")
    with transaction(db):
        _claim(db, delivery)
        # A question still being answered (or left by a killed process) is theirs too: no apology follows.
        db.execute("delete from inflight where platform = ? and user = ?", [platform, user])
        # The documents they added stay (the team's knowledge), no longer naming who added them.
        db.execute("update uploads set added_by = 'forgotten' where added_by = ?", [f"{platform}:{user}"])
    return counts


def feedback_answers(db) -> list[dict]:
    """Every answer that has a vote or an accepted correction, with its `votes` and accepted `corrections`.

    What a training snapshot is made from; `passages` are the ones the asker saw."""
    rows = list(db.query(
        "select * from answers where id in (select answer_id from votes)"
        " or id in (select answer_id from corrections where status = 'accepted') order by created_at, id"))
    votes_by: dict[str, list[dict]] = {}
    for v in db.query("select * from votes order by created_at"):
        votes_by.setdefault(v["answer_id"], []).append(v)
    fixes_by: dict[str, list[dict]] = {}
    for c in db.query("select * from corrections where status = 'accepted' order by created_at, id"):
        fixes_by.setdefault(c["answer_id"], []).append(c)
    for r in rows:
        r["passages"] = json.loads(r["passages"] or "[]")
        r["votes"], r["corrections"] = votes_by.get(r["id"], []), fixes_by.get(r["id"], [])
    return rows


def mark_trained(db, version: str, correction_ids: Iterable[int], answer_ids: Iterable[str], *,
                 batch: int | None = None) -> None:
    """Record that promoted adapter `version` learned these corrections and upvoted answers."""
    # In batches (a training set can hold tens of thousands of upvoted answers); a crash half-way
    # leaves some unmarked, and the next retrain counts those as new: nothing is lost.
    for sql, ids in (("update corrections set used_in = ? where id = ? and used_in is null", list(correction_ids)),
                     ("update answers set trained_in = ? where id = ? and trained_in is null", list(answer_ids))):
        for chunk in _chunks(ids, batch or BATCH_ROWS):
            with transaction(db):
                db.conn.executemany(sql, [(version, i) for i in chunk])


# --- training jobs and their outbox ----------------------------------------

ACTIVE_STATES = ("running", "training", "evaluating")
FINAL_STATES = ("promoted", "rejected", "skipped", "failed", "cancelled")


def create_job(db, kind: str, requested_by: str, platform: str = "", channel: str = "", thread: str = "") -> int:
    with transaction(db):
        return db.execute(
            "insert into jobs (kind, state, requested_by, platform, channel, thread, created_at)"
            " values (?, 'queued', ?, ?, ?, ?, ?)",
            [kind, requested_by, platform, channel, thread, time.time()]).lastrowid


def job(db, job_id: int) -> dict | None:
    rows = list(db.query("select * from jobs where id = ?", [job_id]))
    return rows[0] if rows else None


def list_jobs(db, limit: int = 20, states: Iterable[str] | None = None) -> list[dict]:
    sql, args = "select * from jobs", []
    if states:
        states = list(states)
        sql += f" where state in ({', '.join('?' * len(states))})"
        args += states
    return list(db.query(sql + " order by id desc limit ?", args + [limit]))


def claim_job(db, job_id: int) -> bool:
    """queued -> running, once: True for the one caller that got the job (a job id runs at most once)."""
    with transaction(db):
        return db.execute("update jobs set state = 'running', started_at = ? where id = ? and state = 'queued'",
                          [time.time(), job_id]).rowcount == 1


def update_job(db, job_id: int, **fields) -> None:
    if not fields:
        return
    if fields.get("state") in FINAL_STATES:
        fields.setdefault("finished_at", time.time())
    cols = ", ".join(f"{k} = :{k}" for k in fields)
    with transaction(db):
        db.execute(f"update jobs set {cols} where id = :_id", {**fields, "_id": job_id})


def cancel_queued_job(db, job_id: int, by: str) -> bool:
    with transaction(db):
        return db.execute(
            "update jobs set state = 'cancelled', cancel_requested = ?, finished_at = ?, error = ?"
            " where id = ? and state = 'queued'", [by, time.time(), f"cancelled by {by}", job_id]).rowcount == 1


def request_job_cancel(db, job_id: int, by: str) -> bool:
    """Ask a running job to stop at its next training step."""
    states = ", ".join(f"'{s}'" for s in ACTIVE_STATES)
    with transaction(db):
        return db.execute(f"update jobs set cancel_requested = ? where id = ? and state in ({states})",
                          [by, job_id]).rowcount == 1


def job_cancel_requested(db, job_id: int) -> str | None:
    row = db.execute("select cancel_requested from jobs where id = ?", [job_id]).fetchone()
    return row[0] if row else None


def post_outbox(db, job_id: int | None, platform: str, channel: str, thread: str, text: str, *,
                update_message: str | None = None, interaction: str | None = None) -> int:
    with transaction(db):
        return _outbox_row(db, job_id, platform, channel, thread, text, update_message, interaction)


def _outbox_row(db, job_id, platform, channel, thread, text, update_message=None, interaction=None) -> int:
    return db.execute(
        "insert into outbox (job_id, platform, channel, thread, text, created_at, update_message, interaction)"
        " values (?, ?, ?, ?, ?, ?, ?, ?)",
        [job_id, platform, channel, thread, text, time.time(), update_message, interaction]).lastrowid


# --- answers in flight: placeholders a restart must finish -------------------

def add_inflight(db, platform: str, channel: str, thread: str, user: str, question: str, owner: str, *,
                 message: str | None = None, interaction: str | None = None) -> int:
    """Record a placeholder as it is posted (`message`: its Slack ts or Discord id; `interaction`:
    "application_id/token" of a deferred Discord reply); `clear_inflight` when the answer lands."""
    with transaction(db):
        return db.execute(
            "insert into inflight (platform, channel, thread, message, interaction, user, question, owner, created_at)"
            " values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [platform, channel, thread, message, interaction, user, question, owner, time.time()]).lastrowid


def set_inflight_message(db, inflight_id: int, message: str) -> None:
    with transaction(db):
        db.execute("update inflight set message = ? where id = ?", [message, inflight_id])


def clear_inflight(db, inflight_id: int) -> None:
    with transaction(db):
        db.execute("delete from inflight where id = ?", [inflight_id])


def inflight(db, platform: str | None = None) -> list[dict]:
    if platform is None:
        return list(db.query("select * from inflight order by id"))
    return list(db.query("select * from inflight where platform = ? order by id", [platform]))


def hand_inflight_to_outbox(db, inflight_id: int, text: str) -> int | None:
    """Replace a dead process's placeholder through the outbox: the outbox row and the removal of the
    placeholder's record commit together (a crash between them neither loses nor doubles the answer).
    None when the row is gone (another process recovered it first)."""
    with transaction(db):
        row = db.execute("select platform, channel, thread, message, interaction from inflight where id = ?",
                         [inflight_id]).fetchone()
        if row is None or db.execute("delete from inflight where id = ?", [inflight_id]).rowcount != 1:
            return None
        platform, channel, thread, message, interaction = row
        return _outbox_row(db, None, platform, channel, thread, text, message, interaction)


def claim_outbox(db, platform: str, claimer: str, limit: int = 20, lease_s: float = 60.0) -> list[dict]:
    """Unsent messages for `platform`, oldest first, claimed by `claimer` for `lease_s` seconds.

    A claim that is not marked sent within the lease (the poster crashed) is
    offered again, so a message is posted at least once; two bot processes
    never claim the same row at the same time."""
    now = time.time()
    # PostgreSQL: rows another poster is claiming right now are passed over, not waited for (SQLite's
    # one writer at a time needs no such clause).
    skip = " for update skip locked" if getattr(db, "dialect", "sqlite") == pgdb.DIALECT else ""
    with transaction(db):
        cur = db.execute(
            "update outbox set claimed_by = ?, claimed_at = ? where id in ("
            " select id from outbox where platform = ? and sent_at is null"
            f" and (claimed_at is null or claimed_at < ?) order by id limit ?{skip}) returning *",
            [claimer, now, platform, now - lease_s, limit])
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    return sorted(rows, key=lambda r: r["id"])


def mark_outbox_sent(db, ids: Iterable[int]) -> None:
    with transaction(db):
        db.conn.executemany("update outbox set sent_at = ? where id = ?", [(time.time(), i) for i in ids])


def mark_outbox_dropped(db, outbox_id: int, why: str) -> None:
    """Give up on a message that can never be posted: done (not offered again), and says why."""
    with transaction(db):
        db.execute("update outbox set sent_at = ?, dropped = ? where id = ?", [time.time(), why[:300], outbox_id])


def outbox(db, job_id: int | None = None) -> list[dict]:
    if job_id is None:
        return list(db.query("select * from outbox order by id"))
    return list(db.query("select * from outbox where job_id = ? order by id", [job_id]))


# --- operations: audit trail and retention -----------------------------------

def audit(db, platform: str, user: str, action: str, target: str = "", result: str = "ok", detail: str = "") -> None:
    """Record a privileged action: who, what, on what, when, and how it ended (`ok`, `refused`, `error: ...`)."""
    with transaction(db):
        db.execute("insert into audit (at, platform, user, action, target, result, detail)"
                   " values (?, ?, ?, ?, ?, ?, ?)", [time.time(), platform, user, action, target, result, detail])


def audit_log(db, limit: int = 50, action: str | None = None) -> list[dict]:
    if action:
        return list(db.query("select * from audit where action = ? order by id desc limit ?", [action, limit]))
    return list(db.query("select * from audit order by id desc limit ?", [limit]))


def record_forgotten(db, answer_ids: Iterable[str], correction_ids: Iterable[int], why: str, *,
                     batch: int | None = None) -> None:
    now = time.time()
    rows = [("answer", a, now, why) for a in answer_ids] + [("correction", str(c), now, why) for c in correction_ids]
    for chunk in _chunks(rows, batch or BATCH_ROWS):  # a purge forgets hundreds of thousands of ids
        with transaction(db):
            db.conn.executemany("insert or replace into forgotten (kind, id, at, why) values (?, ?, ?, ?)", chunk)


def forgotten_ids(db, keep_s: float) -> tuple[set[str], set[int]]:
    """Answer and correction ids forgotten within `keep_s` seconds; older ones are dropped here."""
    _delete_batched(db, "forgotten", ("kind", "id"), "at < ?", [time.time() - keep_s])
    rows = db.execute("select kind, id from forgotten").fetchall()
    return {i for k, i in rows if k == "answer"}, {int(i) for k, i in rows if k == "correction"}


def purge_before(db, cutoff: float, *, batch: int | None = None) -> dict:
    """Delete questions (answers rows) older than `cutoff`, with the votes and corrections on them,
    and older delivery keys; in batches of `batch` answers, one transaction each (`BATCH_ROWS`).
    Audit rows and jobs stay: they hold no chat text."""
    counts = _delete_answers_batched(db, "created_at < ?", [cutoff], batch, order="created_at")
    _delete_batched(db, "deliveries", "key", "created_at < ?", [cutoff], batch)
    _delete_batched(db, "inflight", "id", "created_at < ?", [cutoff], batch)
    return counts


# --- bulk deletes in batches ---------------------------------------------------
# A bulk job in one transaction holds the write lock for its whole run: the retention purge of
# 240,000 answers held it 20 s, and a vote waited out its 10 s busy_timeout and was lost. So every
# bulk job goes in batches of BATCH_ROWS rows, one transaction each, and pauses BATCH_PAUSE_S
# between them. The pause is what lets another writer in: a waiting process sleeps in SQLite's
# busy handler in growing steps of up to 100 ms, so a purge that took the lock back at once would
# find it free again before the waiter woke; a gap of 100 ms always holds one of its retries.

BATCH_ROWS = 1000
BATCH_PAUSE_S = 0.1


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        if i:
            time.sleep(BATCH_PAUSE_S)
        yield items[i:i + size]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _delete_answers_batched(db, where: str, args: list, batch: int | None, order: str = "id") -> dict:
    """Delete the answers matching `where`, with every vote and correction on them, batch by batch."""
    batch = batch or BATCH_ROWS
    counts = {"answers": 0, "votes": 0, "corrections": 0}
    while True:
        with transaction(db):
            # PostgreSQL: the answers are locked first, so a vote or correction being written on one of
            # them (its foreign key check holds a share lock) commits before the deletes read, or waits
            # and then fails as on SQLite; without it the answer's delete would fail on that new row.
            ids = [r[0] for r in db.execute(f"select id from answers where {where} order by {order} limit ?"
                                            + _for_update(db), args + [batch]).fetchall()]
            if ids:
                marks = _marks(len(ids))
                votes = db.execute(f"delete from votes where answer_id in ({marks}) returning value", ids).fetchall()
                fixes = db.execute(f"delete from corrections where answer_id in ({marks}) returning status",
                                   ids).fetchall()
                counts["answers"] += db.execute(f"delete from answers where id in ({marks})", ids).rowcount
                counts["votes"] += len(votes)
                counts["corrections"] += len(fixes)
                _uncount(db, "votes", votes)
                _uncount(db, "corrections", fixes)
        if len(ids) < batch:
            return counts
        time.sleep(BATCH_PAUSE_S)


def _delete_batched(db, table: str, key: str | tuple[str, ...], where: str, args: list, batch: int | None = None,
                    *, gauge: str | None = None, key_filter: str = "") -> int:
    """Delete the rows of `table` matching `where`, `batch` at a time (by `key`, a column or a few);
    the rows' `gauge` column values are taken off their counters. `key_filter` narrows the delete
    where `key` alone is not unique (a vote is keyed by answer and user). The number deleted."""
    batch = batch or BATCH_ROWS
    cols = ", ".join(key) if isinstance(key, tuple) else key
    target = f"({cols})" if isinstance(key, tuple) else cols
    done = 0
    while True:
        with transaction(db):
            keys = db.execute(f"select {cols} from {table} where {where} limit ?", args + [batch]).fetchall()
            if keys:
                width = len(key) if isinstance(key, tuple) else 1
                marks = ", ".join(["(" + _marks(width) + ")" if width > 1 else "?"] * len(keys))
                flat = [v for k in keys for v in k]
                extra, extra_args = (f" and {key_filter}", args) if key_filter else ("", [])
                returning = f" returning {gauge}" if gauge else ""
                cur = db.execute(f"delete from {table} where {target} in ({marks}){extra}{returning}",
                                 flat + extra_args)
                if gauge:
                    gone = cur.fetchall()
                    _uncount(db, table, gone)
                    done += len(gone)
                else:
                    done += cur.rowcount
        if len(keys) < batch:
            return done
        time.sleep(BATCH_PAUSE_S)


# --- operations: health and metrics (bot/ops/health.py, bot/ops/metrics.py) ------------

def ping(path: Path | str, timeout: float = 2.0) -> int:
    """Open the database file afresh, read-only, and run a real query: the number of migrations applied.

    A fresh connection, not the process's cached ones: those keep working on a
    file that was deleted or moved away, so only a new open shows whether the
    next connection (a new thread, a restart) would find the database."""
    if pgdb.is_url(path):
        return pgdb.ping(str(path), timeout)
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, timeout=timeout)
    try:
        return conn.execute("select count(*) from _migrations").fetchone()[0]
    finally:
        conn.close()


def answer_stats(db, buckets_ms: Iterable[float], before: float | None = None) -> dict[tuple[str, str], dict]:
    """Answers by (platform, mode): `count`, `sum_ms` and cumulative `buckets` (answers with latency_ms <= each bound).

    One scan of `answers` (of those created before `before` when given: what a purge is about to delete)."""
    bounds = [float(b) for b in buckets_ms]  # floats, so nothing but numbers reaches the SQL text
    # case, not sum(latency_ms <= b): PostgreSQL does not sum booleans
    cols = "".join(f", sum(case when latency_ms <= {b!r} then 1 else 0 end)" for b in bounds)
    where, args = (" where created_at < ?", [before]) if before is not None else ("", [])
    rows = db.execute(f"select coalesce(platform, ''), coalesce(mode, ''), count(*), coalesce(sum(latency_ms), 0)"
                      f"{cols} from answers{where} group by 1, 2", args).fetchall()
    return {(r[0], r[1]): {"count": r[2], "sum_ms": r[3], "buckets": [n or 0 for n in r[4:]]} for r in rows}


def operations_counts(db) -> dict[str, dict]:
    """What /metrics reports as it stands: votes by value, corrections by status (from their
    counters, a few rows), jobs by state (the jobs table: one row per training run, indexed by state)."""
    kept = counters(db)
    return {
        "votes": {int(k[0]): int(v) for k, v in kept.get("votes", {}).items()},
        "corrections": {k[0]: int(v) for k, v in kept.get("corrections", {}).items()},
        "jobs": dict(db.execute("select state, count(*) from jobs group by state").fetchall()),
    }


# --- leases: liveness by heartbeat, whatever host the holder runs on -----------

def acquire_lease(db, name: str, owner: str, ttl_s: float) -> bool:
    """Take lease `name` for `owner` for `ttl_s` seconds: True when it was free, expired, or already
    `owner`'s (then renewed); False while another owner holds it. One statement, so two processes
    racing for a free lease cannot both get it."""
    now = time.time()
    with transaction(db):
        return db.execute(
            "insert into leases (name, owner, acquired_at, expires_at) values (?, ?, ?, ?)"
            " on conflict (name) do update set owner = excluded.owner, expires_at = excluded.expires_at,"
            " acquired_at = case when leases.owner = excluded.owner then leases.acquired_at"
            " else excluded.acquired_at end"
            " where leases.owner = excluded.owner or leases.expires_at < ? returning owner",
            [name, owner, now, now + ttl_s, now]).fetchone() is not None


def renew_lease(db, name: str, owner: str, ttl_s: float) -> bool:
    """Extend `owner`'s lease; False when it is no longer theirs (it expired and someone took it)."""
    with transaction(db):
        return db.execute("update leases set expires_at = ? where name = ? and owner = ?",
                          [time.time() + ttl_s, name, owner]).rowcount == 1


def release_lease(db, name: str, owner: str) -> None:
    with transaction(db):
        db.execute("delete from leases where name = ? and owner = ?", [name, owner])


def lease(db, name: str) -> dict | None:
    """The lease row (`owner`, `acquired_at`, `expires_at`, `live`), or None when nobody ever held it or it was released."""
    row = db.execute("select owner, acquired_at, expires_at from leases where name = ?", [name]).fetchone()
    if row is None:
        return None
    return {"name": name, "owner": row[0], "acquired_at": row[1], "expires_at": row[2], "live": row[2] >= time.time()}


# --- the index generation: replicas reload when another one re-indexed ----------

INDEX_GENERATION = "index_generation"


def bump_index_generation(db) -> int:
    """Count one more re-index (the new generation): every replica's searcher reloads when it sees it."""
    with transaction(db):
        return int(db.execute(
            "insert into meta (key, value) values (?, '1') on conflict (key) do update"
            " set value = cast(cast(meta.value as integer) + 1 as text) returning value",
            [INDEX_GENERATION]).fetchone()[0])


def index_generation(db) -> int:
    """The index generation as stored (0: never re-indexed through `bump_index_generation`)."""
    row = db.execute("select value from meta where key = ?", [INDEX_GENERATION]).fetchone()
    return int(row[0]) if row else 0


# --- counters: what /metrics reads, kept as rows are written -----------------------
# `answers`, `answer_latency_ms_sum` and `answer_latency_le` (platform, mode[, bound]) only ever go
# up: they count answers given, and a purge or a forget deletes rows without lowering them (a
# Prometheus counter that fell would read as a restart). `votes` (value) and `corrections` (status)
# are the rows stored now: gauges, lowered by whatever deletes the rows. Every change is an upsert
# in the transaction of the write it counts, so serve, worker and CLI processes all add to the same
# rows, a restart loses nothing, and a rolled-back write counts nothing.

# Seconds. A retrieval-only answer takes milliseconds; a CPU model many seconds;
# BOT_GENERATION_TIMEOUT (300 s) is the longest an answer may take. Changing them needs a migration
# that recounts `answer_latency_le` (answers already purged cannot be re-binned).
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_PURGED_TALLY = "metrics_purged_answers"  # the purge's meta tally before m013 (bot/ops/metrics.py then)


def _bounds_ms() -> list[float]:
    return [b * 1000 for b in LATENCY_BUCKETS_S]


def _bump(db, changes: dict[tuple[str, tuple], float]) -> None:
    """Add each delta to its counter, in the caller's transaction: held until its end (`transaction`)."""
    pending = getattr(_PENDING, "by_db", {}).get(id(db))
    if pending is None:  # outside `transaction` (none of this module's callers): at once
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


def _uncount(db, name: str, rows: list) -> None:
    """Take deleted rows off gauge `name`: `rows` are the RETURNING tuples of the label column."""
    gone: dict[tuple[str, tuple], float] = {}
    for (label,) in rows:
        gone[(name, (str(label),))] = gone.get((name, (str(label),)), 0) - 1
    _bump(db, gone)


def _count_answer(db, row: dict) -> None:
    key = (row.get("platform") or "", row.get("mode") or "")
    ms = row.get("latency_ms")
    changes = {("answers", key): 1, ("answer_latency_ms_sum", key): ms or 0}
    bucket = next((b for b in _bounds_ms() if ms is not None and ms <= b), None)
    if bucket is not None:  # slower than the last bound (or unknown): only in +Inf, which is the count
        changes[("answer_latency_le", key + (repr(bucket),))] = 1
    _bump(db, changes)


def _recount(db) -> None:
    """Set the counters from the tables (one scan each): the migration that introduced them."""
    db.execute("delete from counters")
    for key, s in answer_stats(db, _bounds_ms()).items():
        cumulative = [0] + list(s["buckets"])
        _bump(db, {("answers", key): s["count"], ("answer_latency_ms_sum", key): s["sum_ms"],
                   **{("answer_latency_le", key + (repr(b),)): cumulative[i + 1] - cumulative[i]
                      for i, b in enumerate(_bounds_ms())}})
    _bump(db, {("votes", (str(v),)): n for v, n in db.execute("select value, count(*) from votes group by value")})
    _bump(db, {("corrections", (str(s),)): n
               for s, n in db.execute("select status, count(*) from corrections group by status")})


def recount_counters(db) -> None:
    """Count the counters again from the tables: after rows were written by something other than this
    module (a bulk load, tools.growth_bench). Deleted answers are no longer in the tables: they leave
    the answer counters, so on a live database Prometheus would read that as a reset."""
    with transaction(db):
        _recount(db)


def counters(db) -> dict[str, dict[tuple, float]]:
    """Every counter: `{name: {labels: value}}` (one read of a table of a few dozen rows)."""
    out: dict[str, dict[tuple, float]] = {}
    for name, labels, value in db.execute("select name, labels, value from counters").fetchall():
        out.setdefault(name, {})[tuple(json.loads(labels))] = value
    return out


def answer_counters(db, kept: dict | None = None) -> dict[tuple[str, str], dict]:
    """Answers ever given by (platform, mode), deleted ones included: `count`, `sum_ms` and cumulative
    `buckets` (answers with latency_ms <= each bound of LATENCY_BUCKETS_S), from the counters."""
    kept = counters(db) if kept is None else kept
    out = {}
    for key, n in kept.get("answers", {}).items():
        per = [kept.get("answer_latency_le", {}).get(key + (repr(b),), 0) for b in _bounds_ms()]
        cumulative = [sum(per[:i + 1]) for i in range(len(per))]
        out[key] = {"count": int(n), "sum_ms": kept.get("answer_latency_ms_sum", {}).get(key, 0.0),
                    "buckets": [int(c) for c in cumulative]}
    return out


# --- documents added from chat (`/kb add`) -------------------------------------------


def record_upload(db, doc: str, name: str, added_by: str, size: int, sha256: str) -> None:
    """Who added `doc` from chat, and when (now); a replacement is added again, by whoever replaced it."""
    with transaction(db):
        db.execute("insert into uploads (doc, name, added_at, added_by, size, sha256) values (?, ?, ?, ?, ?, ?)"
                   " on conflict (doc) do update set name = excluded.name, added_at = excluded.added_at,"
                   " added_by = excluded.added_by, size = excluded.size, sha256 = excluded.sha256",
                   [doc, name, time.time(), added_by, size, sha256])


def uploads(db) -> dict[str, dict]:
    """The documents added from chat, by document name."""
    return {r["doc"]: r for r in db.query("select * from uploads")}


def forget_upload(db, doc: str) -> None:
    with transaction(db):
        db.execute("delete from uploads where doc = ?", [doc])


def document_passages(db, doc: str, limit: int = 3) -> list[dict]:
    """A document's first passages in order (heading, text): what a sample search is made from."""
    return list(db.query("select o.heading, p.text from occurrences o join passages p on p.id = o.passage_id"
                         " where o.doc = ? order by o.ord limit ?", [doc, limit]))
