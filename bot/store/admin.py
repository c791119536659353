"""Who changed what: the adapter pointer's moves (`promotions`, the one truth of the version in service)
and the audit trail of every privileged action (`audit`).
"""
from __future__ import annotations

import time

from bot.store.engine import _lock, transaction


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


# --- operations: the audit trail ---------------------------------------------------

def audit(db, platform: str, user: str, action: str, target: str = "", result: str = "ok", detail: str = "") -> None:
    """Record a privileged action: who, what, on what, when, and how it ended (`ok`, `refused`, `error: ...`)."""
    with transaction(db):
        db.execute("insert into audit (at, platform, user, action, target, result, detail)"
                   " values (?, ?, ?, ?, ?, ?, ?)", [time.time(), platform, user, action, target, result, detail])


def audit_log(db, limit: int = 50, action: str | None = None) -> list[dict]:
    if action:
        return list(db.query("select * from audit where action = ? order by id desc limit ?", [action, limit]))
    return list(db.query("select * from audit order by id desc limit ?", [limit]))
