"""PostgreSQL behind the same interface the store (bot/store/) already uses: `BOT_DB=postgresql://…`.

The seam: a thin layer over psycopg 3, not SQLAlchemy Core. Measured before choosing: store.py (now
bot/store/) held every query of the project (one stray pair in learning/forgetting.py), about 110 statements
of plain SQL with `?` and `:name` placeholders, `on conflict … do update`, `returning`; the
sqlite-utils table helpers (`db["x"].create`, `create_index`, `add_column`, `.rows`, `.insert`)
appear 44 times, all in the migrations and `migrate()`; no code outside the store touches them.
Rewriting 110 statements as SQLAlchemy expressions would be a second copy of the queries while the
port is under way (and the shipped migrations must never be edited); a layer that translates the
one copy keeps every query where it is, on both engines. What the layer does:

- `?` -> `%s`, `:name` -> `%(name)s`, a literal `%` -> `%%` (psycopg's placeholder syntax);
- the column `user`, a reserved word in PostgreSQL (a bare `user` there is `current_user`!), is
  quoted as `"user"` wherever it appears as a word outside string literals;
- SQLite's `insert or ignore` -> `on conflict do nothing`, and `insert or replace` -> `on conflict
  (primary key) do update set` every other column (the key read from the catalogue);
- `lastrowid`: an insert into a table with an identity `id` gets `returning id`;
- `BEGIN IMMEDIATE` -> `BEGIN` (READ COMMITTED; see store.transaction (engine.py) for what that changes);
- `db["x"].create/create_index/add_column/.rows/.insert`: the subset of sqlite-utils' table API the
  migrations use, emitting PostgreSQL DDL (str text, int bigint, float double precision, bytes
  bytea; an int primary key `id` is an identity column, as SQLite's INTEGER PRIMARY KEY is a rowid).

What stays per engine is said in bot/store/ where it differs (`dialect`: the outbox claim's
FOR UPDATE SKIP LOCKED, `ping`). SQL the layer does not know (a PRAGMA, `rowid`) fails loudly on
PostgreSQL rather than being guessed at. One connection per thread, autocommit outside an explicit
transaction: the same contract as store.ThreadLocalDatabase. psycopg is imported when a
PostgreSQL URL is opened, never at import time.
"""
from __future__ import annotations

import re
import threading

DIALECT = "postgresql"

_TYPES = {str: "text", int: "bigint", float: "double precision", bytes: "bytea", bool: "boolean"}

# String literals, quoted identifiers, placeholders, `%`, words: everything the translation looks at.
_TOKEN = re.compile(r"""('(?:[^']|'')*')|("(?:[^"]|"")*")|(\?)|(?<!:):([A-Za-z_]\w*)|(%)|([A-Za-z_]\w*)""")
_INSERT = re.compile(r"^\s*insert\s+(or\s+(ignore|replace)\s+)?into\s+(\w+)\s*(\(([^)]*)\))?", re.I)


def is_url(target) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Cursor:
    """The part of sqlite3.Cursor the store uses: fetchone/fetchall/iteration, rowcount, lastrowid, description."""

    def __init__(self, cur, returns_id: bool):
        self._cur, self.lastrowid = cur, None
        self.rowcount = cur.rowcount
        if returns_id:
            row = cur.fetchone()
            self.lastrowid = row[0] if row else None
        self.description = [(c.name, None, None, None, None, None, None) for c in cur.description or []]

    def fetchone(self):
        return self._cur.fetchone() if self._cur.description and self.lastrowid is None else None

    def fetchall(self):
        return self._cur.fetchall() if self._cur.description and self.lastrowid is None else []

    def __iter__(self):
        return iter(self.fetchall())


class Connection:
    """One psycopg connection (autocommit) with sqlite3's execute/executemany/commit/rollback."""

    def __init__(self, db: "PostgresDatabase", raw):
        self._db, self.raw = db, raw

    def execute(self, sql: str, params=None) -> Cursor:
        text, returns_id = self._db.translate(sql)
        cur = self.raw.cursor()
        cur.execute(text, _params(params))
        return Cursor(cur, returns_id)

    def executemany(self, sql: str, rows) -> None:
        text, _ = self._db.translate(sql)
        rows = [_params(r) for r in rows]
        if rows:
            self.raw.cursor().executemany(text, rows)

    def commit(self) -> None:
        self.raw.execute("COMMIT")

    def rollback(self) -> None:
        self.raw.execute("ROLLBACK")


def _params(params):
    if params is None:
        return None
    return dict(params) if isinstance(params, dict) else list(params)


class Table:
    """`db["name"]`: the subset of sqlite_utils.Table the migrations and `migrate()` call."""

    def __init__(self, db: "PostgresDatabase", name: str):
        self.db, self.name = db, name

    def create(self, columns: dict, pk=None, foreign_keys=(), if_not_exists: bool = False) -> None:
        keys = (pk,) if isinstance(pk, str) else tuple(pk or ())
        defs = []
        for col, kind in columns.items():
            if keys == (col,) and col == "id" and kind is int:  # SQLite's INTEGER PRIMARY KEY: a rowid
                defs.append(f"{_q(col)} bigint generated by default as identity primary key")
            else:
                defs.append(f"{_q(col)} {_TYPES[kind]}")
        if keys and not (keys == ("id",) and columns.get("id") is int):
            defs.append(f"primary key ({', '.join(map(_q, keys))})")
        for col, other, other_col in foreign_keys:
            defs.append(f"foreign key ({_q(col)}) references {_q(other)} ({_q(other_col)})")
        exists = "if not exists " if if_not_exists else ""
        self.db.execute(f"create table {exists}{_q(self.name)} ({', '.join(defs)})")
        self.db.forget_schema()

    def create_index(self, columns, unique: bool = False) -> None:
        name = f"idx_{self.name}_{'_'.join(columns)}"  # sqlite-utils' naming, so both engines agree
        self.db.execute(f"create {'unique ' if unique else ''}index {_q(name)} on {_q(self.name)}"
                        f" ({', '.join(map(_q, columns))})")

    def add_column(self, name: str, kind, not_null_default=None) -> None:
        extra = "" if not_null_default is None else f" not null default {int(not_null_default)!r}" \
            if isinstance(not_null_default, (int, float)) else f" not null default '{not_null_default}'"
        self.db.execute(f"alter table {_q(self.name)} add column {_q(name)} {_TYPES[kind]}{extra}")
        self.db.forget_schema()

    @property
    def rows(self):
        return self.db.query(f"select * from {_q(self.name)}")

    def insert(self, row: dict) -> None:
        cols = ", ".join(map(_q, row))
        self.db.execute(f"insert into {_q(self.name)} ({cols}) values ({', '.join(':' + c for c in row)})", row)


class PostgresDatabase:
    """A PostgreSQL database with the interface the store uses of sqlite_utils.Database:
    `execute`, `query` (dicts), `conn` (this thread's connection), `db["table"]`."""

    dialect = DIALECT

    def __init__(self, url: str):
        import psycopg  # only here: `import bot.store` must not need the driver

        self.url, self._psycopg, self._local = url, psycopg, threading.local()
        self._schema: dict[str, tuple[tuple[str, ...], bool]] | None = None
        self._lock = threading.Lock()
        self.conn  # connect now: a wrong URL or a server that is down fails at start, clearly

    @property
    def conn(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.raw.closed:
            conn = self._local.conn = Connection(self, self._psycopg.connect(self.url, autocommit=True))
        return conn

    def execute(self, sql: str, params=None) -> Cursor:
        return self.conn.execute(sql, params)

    def query(self, sql: str, params=None):
        cur = self.execute(sql, params)
        cols = [d[0] for d in cur.description]
        for row in cur.fetchall():
            yield dict(zip(cols, row))

    def __getitem__(self, name: str) -> Table:
        return Table(self, name)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.raw.close()

    # --- translation ---------------------------------------------------------------

    def forget_schema(self) -> None:
        self._schema = None

    def _table(self, name: str) -> tuple[tuple[str, ...], bool]:
        """(primary key columns, whether `id` is an identity column) of `name`, from the catalogue."""
        with self._lock:
            if self._schema is None:
                raw = self.conn.raw
                keys: dict[str, list[str]] = {}
                for table, col in raw.execute(
                        "select c.relname, a.attname from pg_index i join pg_class c on c.oid = i.indrelid"
                        " join pg_namespace n on n.oid = c.relnamespace and n.nspname = current_schema()"
                        " join lateral unnest(i.indkey) with ordinality k(attnum, pos) on true"
                        " join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum"
                        " where i.indisprimary order by c.relname, k.pos").fetchall():
                    keys.setdefault(table, []).append(col)
                identity = {t for (t,) in raw.execute(
                    "select table_name from information_schema.columns where table_schema = current_schema()"
                    " and column_name = 'id' and is_identity = 'YES'").fetchall()}
                self._schema = {t: (tuple(k), t in identity) for t, k in keys.items()}
            return self._schema.get(name, ((), False))

    def translate(self, sql: str) -> tuple[str, bool]:
        """SQLite-flavoured SQL as the store writes it -> (PostgreSQL SQL, whether it returns a new id)."""
        if re.match(r"\s*begin\s+immediate\s*$", sql, re.I):
            return "BEGIN", False
        suffix, returns_id = "", False
        m = _INSERT.match(sql)
        if m:
            table, cols = m.group(3), [c.strip().strip('"') for c in (m.group(5) or "").split(",") if c.strip()]
            keys, identity = self._table(table)
            if m.group(2):
                sql = sql[:m.start(1)] + sql[m.end(1):]  # drop `or ignore` / `or replace`
                if m.group(2).lower() == "ignore":
                    suffix = " on conflict do nothing"
                else:
                    if not keys:
                        raise ValueError(f"insert or replace into {table}: no primary key to replace on")
                    rest = [c for c in cols if c not in keys]
                    suffix = (f" on conflict ({', '.join(map(_q, keys))}) do "
                              + (f"update set {', '.join(f'{_q(c)} = excluded.{_q(c)}' for c in rest)}"
                                 if rest else "nothing"))
            elif identity and not re.search(r"\breturning\b", sql, re.I):
                suffix, returns_id = " returning id", True
        out, pos = [], 0
        for t in _TOKEN.finditer(sql):
            out.append(sql[pos:t.start()])
            pos = t.end()
            literal, ident, qmark, name, pct, word = t.groups()
            if literal is not None:
                out.append(literal.replace("%", "%%"))
            elif ident is not None:
                out.append(ident.replace("%", "%%"))
            elif qmark:
                out.append("%s")
            elif name is not None:
                out.append(f"%({name})s")
            elif pct:
                out.append("%%")
            elif word.lower() == "user":
                out.append('"user"')
            else:
                out.append(word)
        out.append(sql[pos:])
        return "".join(out).rstrip().rstrip(";") + suffix, returns_id


def ping(url: str, timeout: float = 2.0) -> int:
    """A fresh connection and a real query (the number of migrations applied), as store.ping does for a file."""
    import psycopg

    with psycopg.connect(url, connect_timeout=max(1, int(timeout))) as conn:
        return conn.execute("select count(*) from _migrations").fetchone()[0]
