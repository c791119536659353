"""`/metrics` in Prometheus text format: what the bot has answered, how fast, what people thought of it.

The figures are read from the database when Prometheus scrapes (a custom
collector over bot/store/'s SQL), not kept in this process: they survive a
restart, and they include what every process wrote (answers given through
the CLI, jobs the worker ran). They are not counted at the scrape: the store
keeps them in its `counters` table (bot/store/metrics.py), updated in the transaction of each write,
so a scrape reads a few dozen rows whatever the number of answers (a count
over `answers` took 0.7 s at 300,000 rows and grew with them). The live
figures (the model's queue, the adapter it serves) come from the serving
process through `live()`.

Metrics (prometheus_client adds `_total`, `_bucket`, `_info`):

- `bot_answers_total{platform, mode}`: answers given (mode `llm` or `retrieval-only`);
- `bot_answer_latency_seconds{platform, mode}`: a histogram of answer time;
- `bot_votes{value}`: stored votes, `up` and `down` (a person may change theirs, so a gauge);
- `bot_corrections{status}`: corrections `pending`, `accepted`, `rejected`;
- `bot_jobs{state}`: training jobs in each state;
- `bot_model_queue_depth`: questions waiting for the model;
- `bot_questions_in_flight`: questions being answered now (retrieving, waiting, generating);
- `bot_model_loaded`: 1 when the model is loaded, 0 while loading or retrieval-only;
- `bot_adapter_info{version, serving}`: the adapter the pointer names and the one the model serves (`base`: none);
- `bot_database_up`: 0 when the database could not be read (the other database figures are then missing).

The retention purge and `forget` delete old answers; `bot_answers_total` and
the latency histogram do not fall when they do (Prometheus would read the drop
as a counter reset and report a burst): their counters are only ever added to.
`bot_votes` and `bot_corrections` are gauges of the rows stored now, and fall.
"""
from __future__ import annotations

import logging
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.utils import floatToGoString

from bot import store

log = logging.getLogger(__name__)

# Counted into store's counters as each answer is written, so the bounds are declared there.
LATENCY_BUCKETS_S = store.LATENCY_BUCKETS_S
CONTENT_TYPE = CONTENT_TYPE_LATEST  # the text format's media type, with its version
VOTE_NAMES = {1: "up", -1: "down"}
CORRECTION_STATUSES = ("pending", "accepted", "rejected")
JOB_STATES = ("queued",) + store.ACTIVE_STATES + store.FINAL_STATES


def answer_totals(db) -> dict[tuple[str, str], dict]:
    """Answers ever given by (platform, mode), deleted ones included: `count`, `sum_ms`, cumulative `buckets`."""
    return store.answer_counters(db)


class StoreCollector:
    """A prometheus_client collector: reads the database (and `live()`) at each scrape."""

    def __init__(self, db, live: Callable[[], dict] | None = None):
        """`live()` returns `{"queue_depth", "in_flight", "model_loaded", "adapter": {"in_service", "serving"}}`
        (health.Health.live; any may be missing)."""
        self.db, self.live = db, live or dict

    def collect(self):
        up = GaugeMetricFamily("bot_database_up", "1 when the database could be read at this scrape.")
        try:
            totals, counts = answer_totals(self.db), store.operations_counts(self.db)
        except Exception as e:  # noqa: BLE001 (locked past the timeout, gone, corrupt): say so, serve the rest
            log.warning("metrics: database unreadable: %s: %s", type(e).__name__, e)
            up.add_metric([], 0)
            yield up
        else:
            up.add_metric([], 1)
            yield up
            yield from self._answers(totals)
            yield from self._counts(counts)
        yield from self._live(self.live())

    def _answers(self, totals):
        answers = CounterMetricFamily("bot_answers", "Answers given, by platform and mode.",
                                      labels=["platform", "mode"])
        latency = HistogramMetricFamily("bot_answer_latency_seconds", "Time to answer a question, whole pipeline.",
                                        labels=["platform", "mode"])
        for (platform, mode), s in sorted(totals.items()):
            answers.add_metric([platform, mode], s["count"])
            buckets = [(floatToGoString(b), n) for b, n in zip(LATENCY_BUCKETS_S, s["buckets"])]
            latency.add_metric([platform, mode], buckets + [("+Inf", s["count"])], sum_value=s["sum_ms"] / 1000)
        yield answers
        yield latency

    def _counts(self, counts):
        votes = GaugeMetricFamily("bot_votes", "Votes stored now, by value.", labels=["value"])
        by_value = {name: counts["votes"].get(v, 0) for v, name in VOTE_NAMES.items()}
        for name, n in by_value.items():
            votes.add_metric([name], n)
        yield votes
        corrections = GaugeMetricFamily("bot_corrections", "Corrections stored now, by review status.",
                                        labels=["status"])
        for status in sorted(set(CORRECTION_STATUSES) | set(counts["corrections"])):
            corrections.add_metric([str(status)], counts["corrections"].get(status, 0))
        yield corrections
        jobs = GaugeMetricFamily("bot_jobs", "Training jobs, by state.", labels=["state"])
        for state in JOB_STATES + tuple(sorted(set(counts["jobs"]) - set(JOB_STATES), key=str)):
            jobs.add_metric([str(state)], counts["jobs"].get(state, 0))
        yield jobs

    def _live(self, live: dict):
        if live.get("queue_depth") is not None:
            yield GaugeMetricFamily("bot_model_queue_depth", "Questions waiting for the model.",
                                    value=live["queue_depth"])
        if live.get("in_flight") is not None:
            yield GaugeMetricFamily("bot_questions_in_flight", "Questions being answered now: retrieving, "
                                    "waiting for the model, generating.", value=live["in_flight"])
        if "model_loaded" in live:
            yield GaugeMetricFamily("bot_model_loaded", "1 when the model is loaded and answering.",
                                    value=int(bool(live["model_loaded"])))
        if "adapter" in live:
            adapter = live["adapter"]
            yield InfoMetricFamily("bot_adapter", "The adapter in service (pointer) and the one the model serves.",
                                   value={"version": adapter.get("in_service") or "base",
                                          "serving": adapter.get("serving") or "base"})


def registry(db, live: Callable[[], dict] | None = None) -> CollectorRegistry:
    """A registry of its own for one serving process: the store collector and the process's CPU and memory."""
    reg = CollectorRegistry(auto_describe=False)  # no describe: nothing is read until a scrape
    reg.register(StoreCollector(db, live))
    ProcessCollector(registry=reg)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format (blocking: it queries the database)."""
    return generate_latest(reg)
