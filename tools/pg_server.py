"""A throwaway PostgreSQL 15 on loopback, for the tools and tests/scale/: `with running(work) as url: ...`.

`initdb` into `work/data` (trust auth, user `bot`, UTF8, C locale, no sync), `pg_ctl start` on
127.0.0.1 at a free port (socket in `work`, fsync off: a test's data, not the bot's), about 5 s;
stopped with `pg_ctl -m fast stop`. Lock waits over 200 ms go to its log
(`lock_waits`). The PostgreSQL the machine image ships (/usr/lib/postgresql/15);
initdb refuses to run as root, so as root the server's tools run as the `postgres` user.
tests/scale/conftest.py's pg_server fixture, tools/replica_check.py and tools/growth_bench.py
(`--db postgresql` / `--pg`) all start it here.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class Unavailable(RuntimeError):
    """PostgreSQL 15 or psycopg is not installed: the message says which and how to get it."""


def missing() -> str | None:
    """Why a server cannot be started here, or None when it can."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 is not installed ({PG_BIN}/initdb)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the Python package 'psycopg' is not installed (pip install '.[postgres]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start(work: Path) -> str:
    """Start a server with its data under `work` (an empty folder); its URL postgresql://bot@127.0.0.1:<port>."""
    reason = missing()
    if reason:
        raise Unavailable(reason)
    work = Path(work)
    if os.geteuid() == 0:  # the postgres user must reach the folder and own the data dir's parent
        for parent in [work, *work.parents]:
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o005)
        shutil.chown(work, "postgres")
    port = free_port()
    data, log = work / "data", work / "log"
    init = subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "bot", "-A", "trust",
                                        "-E", "UTF8", "--locale=C", "--no-sync"]), capture_output=True, text=True)
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr.strip()[-1000:]}")
    started = subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                                           f"-p {port} -c listen_addresses=127.0.0.1 -k {work} -c fsync=off"
                                           # a lock wait over 200 ms is logged: a slow write can then be
                                           # told from a slow (shared) machine, see lock_waits()
                                           " -c log_lock_waits=on -c deadlock_timeout=200ms",
                                           "start"]), capture_output=True, text=True)
    if started.returncode != 0:
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{log.read_text() if log.exists() else ''}")
    return f"postgresql://bot@127.0.0.1:{port}"


def lock_waits(work: Path) -> list[str]:
    """The server log's lines for lock waits over 200 ms so far ("… still waiting for ShareLock …")."""
    log = Path(work) / "log"
    return [line for line in log.read_text(errors="replace").splitlines() if "still waiting for" in line] \
        if log.exists() else []


def stop(work: Path) -> None:
    subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(Path(work) / "data"), "-m", "fast", "stop"]),
                   capture_output=True)


def create_database(server: str, name: str) -> str:
    """A new, empty database on `server` (a URL without a database): its URL."""
    import psycopg

    name = re.sub(r"\W", "_", name)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    return f"{server}/{name}"


@contextmanager
def running(work: Path, database: str | None = None):
    """A server for the block (stopped after, even on error): the URL of `database` (created) or the server's."""
    server = start(work)
    try:
        yield create_database(server, database) if database else server
    finally:
        stop(work)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{time.monotonic_ns() % 10**9}"
