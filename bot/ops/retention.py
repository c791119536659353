"""Privacy retention: questions, answers and the feedback on them are deleted after BOT_RETENTION_DAYS.

The worker runs `purge_old` daily (a huey periodic task on bot.learning.queue's
huey, registered in the consumer by bot.ops.worker); `python -m bot purge` does the same now. Each purge
deletes in batches of a few thousand rows, one transaction each
(store.purge_before), so a vote written meanwhile waits a fraction of a second,
not the whole purge; the answer counters of /metrics are not lowered by it
(store's counters); it writes an audit row with the counts only: what was deleted was chat text, and the audit trail must not
become a second copy of it. The same rows leave the adapter version folders
(bot.learning.forgetting: snapshots and evaluation reports rewritten, versions trained
on them marked, a retrain queued, their weights deleted once a clean version
serves). Jobs and the audit trail hold no chat text and stay.
"""
from __future__ import annotations

import json
import logging
import time

from huey import crontab

from bot import config, store
from bot.learning.queue import huey

log = logging.getLogger(__name__)
DAY_S = 86400.0
# 04:30 worker-local time: after the nightly retrain's default 03:00 start, at the quietest hour.
PURGE_AT = {"minute": "30", "hour": "4"}


def purge(db, days: float, *, by: tuple[str, str] = ("system", "retention"), now: float | None = None,
          adapters_dir=None, enqueue: bool = True) -> dict:
    """Delete answers older than `days` days with their votes and corrections, from the database and
    from every adapter version folder (bot.learning.forgetting); the counts, audited.

    `by` is the (platform, user) recorded in the audit row: the schedule, or the CLI operator."""
    if days <= 0:
        raise ValueError(f"a purge needs a positive number of days, not {days}")
    from bot.learning import forgetting, jobs

    cutoff = (time.time() if now is None else now) - days * DAY_S
    target = f"older than {days:g} days"

    def delete() -> dict:
        counts = store.purge_before(db, cutoff)
        store.audit(db, by[0], by[1], "purge", target=target, detail=json.dumps(counts))
        return counts

    done = forgetting.erase(db, adapters_dir, forgetting.collect_before(db, cutoff),
                            delete, why="retention", by=by, target=target,
                            retrain=jobs.retrainer(db, enqueue=enqueue))
    return {"days": days, "cutoff": cutoff, **done}


@huey.periodic_task(crontab(**PURGE_AT))
def purge_old() -> dict | None:
    """The daily purge at BOT_RETENTION_DAYS; nothing when it is 0 (keep everything)."""
    # A task runs in the worker's consumer: it is an entry point, so it reads the settings itself.
    settings = config.Settings.load()
    days = settings.retention_days
    if days <= 0:
        log.info("retention purge skipped: BOT_RETENTION_DAYS=0 keeps everything")
        return None
    result = purge(store.connect(settings.db), days, adapters_dir=settings.adapters_dir)
    log.info("retention purge: %d answers, %d votes, %d corrections older than %s days deleted",
             result["answers"], result["votes"], result["corrections"], days,
             extra={k: result[k] for k in ("days", "answers", "votes", "corrections")})
    return result
