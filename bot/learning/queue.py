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

from huey import Huey, SqliteHuey, crontab
from huey.storage import RedisStorage, SqliteStorage

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


_settings: config.Settings | None = None


def configure(settings: config.Settings) -> None:
    """Hand the queue the entry point's settings (the worker does, at start) before its first use."""
    global _settings
    _settings = settings


def settings() -> config.Settings:
    """The settings the queue was configured with; loaded once here when no entry point configured it
    (a process that only submits, e.g. the CLI's `train`, or a test)."""
    global _settings
    if _settings is None:
        _settings = config.Settings.load()
    return _settings


class _DeferredStorage:
    """The storage, chosen and opened on first use from `settings()`: Redis when BOT_REDIS_URL is set,
    else SQLite at BOT_HUEY_DB.

    The huey instance must exist at import, because the task decorators register on it then; its
    storage is the only part that needs the settings, so it waits until something touches the queue,
    by which time the entry point has loaded them. Importing creates no file and reads no setting."""

    def __init__(self, name: str):
        self.name, self._real = name, None

    def _storage(self):
        if self._real is None:
            s = settings()
            # timeout: seconds to wait for the queue file's lock; a submit should wait out a busy worker, not fail.
            self._real = RedisStorage(self.name, url=s.redis_url) if s.redis_url else \
                _LazySqliteStorage(self.name, filename=str(s.huey_db), timeout=30)
        return self._real

    def __getattr__(self, attr):
        return getattr(self._storage(), attr)


class _Huey(Huey):
    def create_storage(self):
        return _DeferredStorage(self.name)


def make_huey():
    """The queue, its storage deferred to first use (see _DeferredStorage); cron in the worker's local time."""
    return _Huey("bot", utc=False)


def cron(expr: str) -> dict:
    """The five crontab fields (minute hour day month weekday) as huey.crontab arguments."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"BOT_RETRAIN_CRON={expr!r}: expected 5 fields (minute hour day month weekday)")
    spec = dict(zip(("minute", "hour", "day", "month", "day_of_week"), fields))
    crontab(**spec, strict=True)  # refuse a bad field now, not at 3 a.m.
    return spec


huey = make_huey()
