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
- **It answers only to its own host name** (`guarded`). A web page on
  another site can make a browser send requests to 127.0.0.1 under the
  page's own name (DNS rebinding: `evil.example` re-resolved to 127.0.0.1),
  and read the answers as same-origin. Such a request carries
  `Host: evil.example`; only the name the dashboard was started on (plus
  `localhost`/`127.0.0.1`/`::1` when bound to loopback, and `--allow-host`
  names for a reverse proxy) is served. Any other gets 421 Misdirected
  Request: the request is well-formed but was aimed at a server that does
  not serve that name (RFC 9110, 15.5.20), which is exactly the case; 400 is
  kept for a missing or unparseable Host header.
- **Reads only: GET and HEAD.** POST, PUT, DELETE, PATCH and the rest get
  405 with `Allow: GET, HEAD` before Datasette sees them (it would answer a
  POST to a read-only page with a 500).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

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


LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WILDCARD = {"0.0.0.0", "::", ""}
READS = (b"GET", b"HEAD")


def split_host(header: str) -> tuple[str, int | None] | None:
    """`Host` header -> (lower-case name, port or None); None when it cannot be one."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8001
        name, _, rest = header[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (None if not rest else "x")
    else:
        if header.count(":") > 1:  # an IPv6 address must be in brackets
            return None
        name, _, port = header.partition(":")
        port = port or None
    name = name.rstrip(".")
    if not name or (port is not None and not (port.isascii() and port.isdigit() and len(port) <= 5)):
        return None
    return name, int(port) if port else None


def allowed_names(host: str, allow: Iterable[str] = ()) -> tuple[set[str], set[str]]:
    """(names that must come with the bound port, names allowed on any port): what `guarded` serves."""
    bound = {host.strip("[]").lower()} - WILDCARD
    if not bound or bound <= LOOPBACK:  # loopback, or everything: this machine's own names are fine
        bound |= LOOPBACK
    return bound, {n.strip().lower().rstrip(".") for n in allow if n.strip()}


def guarded(app, host: str, port: int, allow: Iterable[str] = ()):
    """`app` (ASGI) serving only requests named for it (`Host`) and only reads; see the module docstring."""
    bound, proxied = allowed_names(host, allow)

    async def refuse(send, status: int, text: str, headers: list | None = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), *(headers or [])]})
        await send({"type": "http.response.body", "body": text.encode()})

    async def guard(scope, receive, send):
        if scope["type"] != "http":  # lifespan: start-up and shutdown
            return await app(scope, receive, send)
        raw = [v for k, v in scope["headers"] if k == b"host"]
        named = split_host(raw[0].decode("latin-1")) if len(raw) == 1 else None
        if named is None:
            return await refuse(send, 400, "bad request: one Host header with a host name is required\n")
        name, asked_port = named
        if not (name in proxied or (name in bound and asked_port in (port, None if port == 80 else port))):
            return await refuse(send, 421, f"misdirected request: this dashboard does not serve {name!r}; "
                                           "start it with --allow-host NAME to serve another name\n")
        if scope["method"].encode() not in READS:
            return await refuse(send, 405, "method not allowed: the dashboard is read-only (GET and HEAD)\n",
                                [(b"allow", b"GET, HEAD")])
        return await app(scope, receive, send)
    return guard


def serve(db_path: Path | str, host: str = "127.0.0.1", port: int = 8001, allow: Iterable[str] = ()) -> int:
    """Run the dashboard until interrupted (the `dashboard` command)."""
    import asyncio

    import uvicorn

    if str(db_path).startswith(("postgresql://", "postgres://")):
        # Datasette reads SQLite files only; pointing it at a URL would only say "no database at …".
        print("dashboard: Datasette reads SQLite files only, and BOT_DB is a PostgreSQL URL. On PostgreSQL, "
              "run the same queries with psql (or Metabase/Grafana) as a read-only role: "
              "see the README's Dashboard paragraph", file=sys.stderr)
        return 2
    db_path = Path(db_path)
    if not db_path.is_file():
        print(f"dashboard: no database at {db_path} (set BOT_DB, or run the bot first)", file=sys.stderr)
        return 2
    ds = build(db_path)
    asyncio.run(ds.invoke_startup())
    print(f"dashboard: http://{host}:{port}/{DB_NAME} (read-only {db_path}); Ctrl-C stops it", file=sys.stderr)
    if host in WILDCARD and not allow:
        print("dashboard: listening on every address; only localhost names are served unless you add "
              "--allow-host NAME", file=sys.stderr)
    uvicorn.run(guarded(ds.app(), host, port, allow), host=host, port=port, log_level="warning", lifespan="on")
    return 0
