"""`python -m bot dashboard`: the bot's database in Datasette, read-only, with canned queries for the operator.

How it is opened, and why:

- **Mutable, read-only connections, not immutable.** The bot and the worker
  keep writing the file while the dashboard is open, in WAL mode. Datasette's
  immutable mode (`-i`, SQLite's `immutable=1`) tells SQLite the file never
  changes: it takes no locks and ignores the `-wal` file, so it would miss
  every row not yet checkpointed and could read a page as a checkpoint
  rewrites it. Datasette's default (mutable) mode opens `mode=ro`
  connections instead: they take read locks and read through the WAL, so
  the dashboard sees each commit at once and can never write the file.
- **`PRAGMA query_only` on every connection to it** (a `prepare_connection`
  hook). Datasette opens a read-write connection only for a canned query
  marked `write: true`; none here is, and should one be added later (or
  through `--metadata`), SQLite still refuses its write.
- Custom SQL stays allowed: Datasette runs it only as a single SELECT, on the
  `mode=ro` connections, under its time limit.
- It listens on 127.0.0.1 by default: the tables hold what people asked.
"""
from __future__ import annotations

import sys
from pathlib import Path

from datasette import hookimpl

DB_NAME = "bot"  # the database's name in URLs (/bot/...), whatever the file is called
_FLAG = "_bot_read_only"  # set on our Datasette instances; the hook touches no other


def _ts(column: str) -> str:
    """A unix-time column as UTC text, for people."""
    return f"strftime('%Y-%m-%d %H:%M:%S', {column}, 'unixepoch')"


QUERIES: dict[str, dict] = {
    "thumbs_down_rate_per_adapter": {
        "title": "Thumbs-down rate per adapter",
        "description": "Answers and votes by the adapter that produced the answer ((base model): none); "
                       "down_rate is down votes over all votes.",
        "sql": f"""
select
  coalesce(a.adapter, '(base model)') as adapter,
  count(distinct a.id) as answers,
  count(v.answer_id) as votes,
  coalesce(sum(v.value > 0), 0) as up,
  coalesce(sum(v.value < 0), 0) as down,
  round(1.0 * sum(v.value < 0) / nullif(count(v.answer_id), 0), 3) as down_rate,
  {_ts('min(a.created_at)')} as first_answer,
  {_ts('max(a.created_at)')} as last_answer
from answers a left join votes v on v.answer_id = a.id
group by 1
order by max(a.created_at) desc
""".strip(),
    },
    "recent_corrections": {
        "title": "Recent corrections",
        "description": "The latest 200 corrections with their review status, who reviewed them, "
                       "and the adapter that learned them (used_in).",
        "sql": f"""
select
  c.id, {_ts('c.created_at')} as created, c.status, c.platform, c.user,
  c.answer_id, a.adapter as answered_by, a.question, c.text as correction,
  c.reviewed_by, {_ts('c.reviewed_at')} as reviewed, c.used_in
from corrections c left join answers a on a.id = c.answer_id
order by c.created_at desc, c.id desc
limit 200
""".strip(),
    },
    "job_history": {
        "title": "Training job history",
        "description": "Every training job, newest first: state, verdict, version, timing, and why it failed.",
        "sql": f"""
select
  id, kind, state, verdict, version, requested_by,
  {_ts('created_at')} as created, {_ts('started_at')} as started, {_ts('finished_at')} as finished,
  round(finished_at - started_at, 1) as seconds, step, steps, loss, error
from jobs
order by id desc
""".strip(),
    },
    "audit_log": {
        "title": "Audit log",
        "description": "Privileged actions (admin commands, reviews, forgets, purges), newest first.",
        "sql": f"""
select id, {_ts('at')} as at, platform, user, action, target, result, detail
from audit
order by id desc
limit 500
""".strip(),
    },
}

METADATA = {
    "title": "Knowledge-base bot (read-only)",
    "description": "The bot's database, opened read-only. Canned queries: thumbs-down rate per adapter, "
                   "recent corrections, job history, audit log.",
    "databases": {DB_NAME: {"queries": QUERIES}},
}


@hookimpl
def prepare_connection(conn, database, datasette):
    """Datasette hook (this module is registered as a plugin by `build`): the bot's database is query_only."""
    if database == DB_NAME and getattr(datasette, _FLAG, False):
        conn.execute("PRAGMA query_only = 1")


def build(db_path: Path | str, metadata: dict | None = None):
    """A Datasette over `db_path`, read-only, with the canned queries (call `await ds.invoke_startup()` before use)."""
    from datasette.app import Datasette
    from datasette.database import Database
    from datasette.plugins import pm

    if not pm.is_registered(sys.modules[__name__]):
        pm.register(sys.modules[__name__], name="bot-dashboard-read-only")
    ds = Datasette(metadata=metadata or METADATA, settings={"sql_time_limit_ms": 3000})
    setattr(ds, _FLAG, True)
    # Mutable: mode=ro connections that read through the WAL (see the module docstring).
    ds.add_database(Database(ds, path=str(Path(db_path).resolve()), is_mutable=True), name=DB_NAME)
    return ds


def serve(db_path: Path | str, host: str = "127.0.0.1", port: int = 8001) -> int:
    """Run the dashboard until interrupted (the `dashboard` command)."""
    import asyncio

    import uvicorn

    db_path = Path(db_path)
    if not db_path.is_file():
        print(f"dashboard: no database at {db_path} (set BOT_DB, or run the bot first)", file=sys.stderr)
        return 2
    ds = build(db_path)
    asyncio.run(ds.invoke_startup())
    print(f"dashboard: http://{host}:{port}/{DB_NAME} (read-only {db_path}); Ctrl-C stops it", file=sys.stderr)
    uvicorn.run(ds.app(), host=host, port=port, log_level="warning", lifespan="on")
    return 0
