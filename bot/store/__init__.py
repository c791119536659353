"""All SQL lives here: the database, its ordered migrations, and the queries.

One SQLite file (WAL mode, so the bot and the worker can read while one
writes) through sqlite-utils, or PostgreSQL (`BOT_DB=postgresql://…`) through
the same queries, translated by postgres.py. Callers use `from bot import
store; store.<name>`: every name is re-exported below, from the module that
owns it. One module per group of tables, because that is how the queries
fall apart: each group is written and read together (a vote with its counter
and delivery key, a job with its lease), and a module's imports say which
groups a write crosses.

    engine.py      connections (ThreadLocalDatabase), transaction, the dialect's locks, ping; no table
    migrations.py  MIGRATIONS m001..m015, migrate(), connect() (opening is migrating); `_migrations`
    postgres.py    the PostgreSQL translation layer (psycopg, imported only when a URL is opened)
    index.py       documents, passages, occurrences, embeddings, lexicon, rankers, meta, uploads
    answers.py     answers
    feedback.py    votes, corrections, opt_outs, deliveries (and answers.trained_in, set by mark_trained)
    admin.py       promotions (the version in service), audit
    jobs.py        jobs, leases
    outgoing.py    outbox, inflight
    batches.py     bulk deletes in batches (BATCH_ROWS, BATCH_PAUSE_S); no table of its own
    retention.py   forgotten; forget and the purge, deleting across answers, votes, corrections, ...
    metrics.py     counters (what /metrics reads), answer_stats, operations_counts

Imports point one way (no cycles): engine at the bottom; metrics on it; batches on metrics;
feedback on batches; retention on feedback; migrations on engine, index and metrics.
"""
from __future__ import annotations

from bot.store.admin import ServiceMoved, audit, audit_log, in_service, promotions, record_promotion
from bot.store.answers import answer, recent_answers, record_answer, thread_turns
from bot.store.batches import BATCH_PAUSE_S, BATCH_ROWS  # copies, to read: to change them, set them on batches
from bot.store.engine import ThreadLocalDatabase, ping, transaction
from bot.store.feedback import (
    Duplicate, correction, corrections, delivered, feedback_answers, first_delivery, mark_trained, opted_out,
    pending_corrections, record_correction, record_vote, review_correction, set_opt_out, votes,
)
from bot.store.index import (
    INDEX_GENERATION, bump_index_generation, document, document_passages, documents, embeddings, forget_upload,
    get_meta, index_generation, lexicon, passage_count, passages, ranker, record_upload, remove_document,
    replace_document, replace_document_meta, save_embeddings, save_lexicon, save_ranker, set_meta, uploads,
)
from bot.store.jobs import (
    ACTIVE_STATES, FINAL_STATES, acquire_lease, cancel_queued_job, claim_job, create_job, job, job_cancel_requested,
    lease, list_jobs, release_lease, renew_lease, request_job_cancel, update_job,
)
from bot.store.metrics import (
    LATENCY_BUCKETS_S, answer_counters, answer_stats, counters, operations_counts, recount_counters,
)
from bot.store.migrations import MIGRATION_LOCK, MIGRATIONS, connect, migrate
from bot.store.outgoing import (
    add_inflight, claim_outbox, clear_inflight, hand_inflight_to_outbox, inflight, mark_outbox_dropped,
    mark_outbox_sent, outbox, post_outbox, set_inflight_message,
)
from bot.store.retention import forget_user, forgotten_ids, purge_before, record_forgotten

__all__ = [
    # engine, migrations
    "ThreadLocalDatabase", "connect", "transaction", "ping", "migrate", "MIGRATIONS", "MIGRATION_LOCK",
    # index
    "INDEX_GENERATION", "bump_index_generation", "document", "document_passages", "documents", "embeddings",
    "forget_upload", "get_meta", "index_generation", "lexicon", "passage_count", "passages", "ranker",
    "record_upload", "remove_document", "replace_document", "replace_document_meta", "save_embeddings",
    "save_lexicon", "save_ranker", "set_meta", "uploads",
    # answers
    "answer", "recent_answers", "record_answer", "thread_turns",
    # feedback
    "Duplicate", "correction", "corrections", "delivered", "feedback_answers", "first_delivery", "mark_trained",
    "opted_out", "pending_corrections", "record_correction", "record_vote", "review_correction", "set_opt_out",
    "votes",
    # admin
    "ServiceMoved", "audit", "audit_log", "in_service", "promotions", "record_promotion",
    # jobs
    "ACTIVE_STATES", "FINAL_STATES", "acquire_lease", "cancel_queued_job", "claim_job", "create_job", "job",
    "job_cancel_requested", "lease", "list_jobs", "release_lease", "renew_lease", "request_job_cancel", "update_job",
    # outgoing
    "add_inflight", "claim_outbox", "clear_inflight", "hand_inflight_to_outbox", "inflight", "mark_outbox_dropped",
    "mark_outbox_sent", "outbox", "post_outbox", "set_inflight_message",
    # batches, retention, metrics
    "BATCH_PAUSE_S", "BATCH_ROWS", "forget_user", "forgotten_ids", "purge_before", "record_forgotten",
    "LATENCY_BUCKETS_S", "answer_counters", "answer_stats", "counters", "operations_counts", "recount_counters",
]
