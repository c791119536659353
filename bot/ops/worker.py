"""The training worker process: `python -m bot worker` (Procfile `worker`).

One huey consumer thread (one GPU) runs every task registered on
bot.learning.queue's huey: a task registers when its module is imported, so
this module imports each task module (the jobs and the nightly retrain, the
daily retention purge); `huey_consumer bot.ops.worker.huey -w 1` gets the
same set. Recovery at start is jobs' `on_startup` hook.
"""
from __future__ import annotations

from bot import config
from bot.learning import jobs, queue  # noqa: F401 (registers train_job, scheduled_retrain, heartbeat, _on_start)
from bot.learning.queue import huey
from bot.ops import retention  # noqa: F401 (registers purge_old)

__all__ = ["huey", "main"]


def main() -> int:
    """Run the consumer until a signal stops it: the schedule, recovery at start, one job at a time."""
    from huey.consumer import Consumer

    from bot.ops import logs

    settings = config.Settings.load()  # the worker is an entry point: its settings, read once at start
    logs.setup(settings.log_format)  # BOT_LOG_FORMAT: JSON lines for a log collector, or text
    queue.cron(settings.retrain_cron)  # a bad schedule stops the worker now, by name
    queue.configure(settings)
    Consumer(huey, workers=1, periodic=True).run()
    return 0
