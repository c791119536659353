"""The ordered migrations, `migrate()`, and `connect` (which opens a database and migrates it).

Migrations are plain functions applied in order and recorded in `_migrations`,
as simonw's `llm` does: a migration, once shipped, is never edited; a change is
a new function at the end.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import sqlite_utils

from bot.store import postgres
from bot.store.engine import ThreadLocalDatabase, _bump, transaction
from bot.store.index import get_meta
from bot.store.metrics import _PURGED_TALLY, _bounds_ms, _recount

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


# Here rather than in engine.py: opening a database is migrating it, and the migrations write
# through engine's `transaction` (engine importing this module back would be a cycle).

def connect(path: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) and migrate the database; usable from any thread (see ThreadLocalDatabase).

    A `postgresql://` URL opens PostgreSQL instead, through the same queries (bot/store/postgres.py)."""
    if postgres.is_url(path):
        db = postgres.PostgresDatabase(str(path))
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


def migrate(db: sqlite_utils.Database) -> None:
    if getattr(db, "dialect", "sqlite") == postgres.DIALECT:
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
