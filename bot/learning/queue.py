"""The task queue: the one huey instance every task and periodic task registers on, and the GPU lock's name.

It lives apart from the tasks so that modules in different layers can
register on it without importing each other: bot.learning.jobs (training,
the nightly retrain, the heartbeat) and bot.ops.retention (the daily purge)
both import this module, and the worker process (bot.ops.worker) imports
both so its consumer runs every task. The queue is huey's SQLite file
(BOT_HUEY_DB) or Redis (BOT_REDIS_URL).
"""
from __future__ import annotations

from pathlib import Path

from huey import RedisHuey, SqliteHuey, crontab
from huey.storage import SqliteStorage

from bot import config

LOCK = "gpu"  # huey's lock_task name: one training at a time on the one GPU


class _LazySqliteStorage(SqliteStorage):
    """huey's SQLite storage, creating its file and tables on first use instead of at import:
    importing bot.learning.jobs (the CLI does, for `jobs`) must not create files."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "create_tables": False})

    def _create_connection(self):
        Path(self.filename).parent.mkdir(parents=True, exist_ok=True)
        conn = super()._create_connection()
        for sql in self.ddl:
            conn.execute(sql)
        return conn


class _SqliteHuey(SqliteHuey):
    storage_class = _LazySqliteStorage


def make_huey():
    """RedisHuey when BOT_REDIS_URL is set, else SQLite at BOT_HUEY_DB; cron in the worker's local time."""
    if url := config.get("BOT_REDIS_URL"):
        return RedisHuey("bot", url=url, utc=False)
    # timeout: seconds to wait for the queue file's lock; a submit should wait out a busy worker, not fail.
    return _SqliteHuey("bot", filename=str(config.get("BOT_HUEY_DB")), utc=False, timeout=30)


def cron(expr: str) -> dict:
    """The five crontab fields (minute hour day month weekday) as huey.crontab arguments."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"BOT_RETRAIN_CRON={expr!r}: expected 5 fields (minute hour day month weekday)")
    spec = dict(zip(("minute", "hour", "day", "month", "day_of_week"), fields))
    crontab(**spec, strict=True)  # refuse a bad field now, not at 3 a.m.
    return spec


huey = make_huey()
