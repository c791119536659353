"""The growth benchmark: `python -m tools.growth_bench [--answers 1000000] [--votes 300000] [--json]`.

Does what the bot costs grow with what it has stored? On one database:

1. the bundled knowledge base is indexed, then `ask` (retrieval-only, as with
   BOT_MODEL=none) and a /metrics scrape are timed with no answers stored;
2. `--answers` answers are bulk-loaded (in transactions of 50,000 rows) with realistic rows: what the pipeline's `record_answer` writes (the
   question, three passages of the knowledge base with their text, citations,
   an answer of a few hundred characters), a delivery key each, `--votes`
   votes and `--corrections` corrections; `--expired` of them older than the
   retention (BOT_RETENTION_DAYS' default, 180 days);
3. the scrape is timed again (and, for comparison, the full count over
   `answers` that scrapes used to run), and `ask` with the same questions;
4. the retention purge runs (`bot.ops.retention.purge`, as the worker runs it)
   while a writer in another process (`--writer thread`: a thread of this one)
   records votes one after another as the bot does, each write timed from
   its start to its commit: the longest wait is the figure.

Targets (issue 13): scrape under 100 ms; no write waits over 1 s during the
purge; `ask` as fast as against the empty database. Exit code 1 when one is missed.

On SQLite (`--db PATH`, default a temporary file) or PostgreSQL (`--db
postgresql://…` of an empty database, or `--pg`: a throwaway PostgreSQL 15
started for the run by tools/pg_server.py). The measures go through bot/store/
and bot.ops only, as the bot runs them; only the bulk loader speaks the
engine (SQLite: executemany; PostgreSQL: COPY FROM STDIN), and both load
CHUNK rows per transaction.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "knowledge" / "docs"
# Questions to time `ask` with: the development set (never the held-out test set).
QUESTIONS = ROOT / "knowledge" / "eval" / "dev.jsonl"
DAY = 86400.0
RETENTION_DAYS = 180
CHUNK = 50_000  # rows per loading transaction


def say(msg: str) -> None:
    """Progress on stderr (a million-answer run takes tens of minutes); stdout keeps the report."""
    print(f"[growth_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class SQLiteEngine:
    """The bulk loader for a SQLite file (store.connect opens and migrates it)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self, table: str, cols: list[str], rows) -> None:
        import sqlite3

        conn = sqlite3.connect(self.path)
        conn.execute("PRAGMA synchronous = OFF")  # a benchmark's fixture, not the bot's data
        sql = f"insert into {table} ({', '.join(cols)}) values ({', '.join('?' * len(cols))})"
        batch: list = []
        done = 0
        for row in rows:
            batch.append(row)
            if len(batch) >= CHUNK:
                with conn:
                    conn.executemany(sql, batch)
                done += len(batch)
                batch = []
                say(f"{table}: {done:,} rows")
        if batch:
            with conn:
                conn.executemany(sql, batch)
        conn.close()


class PostgresEngine:
    """The bulk loader for PostgreSQL: COPY … FROM STDIN through psycopg, CHUNK rows per transaction
    (a million rows of executemany would be a million round trips; COPY streams them)."""

    def __init__(self, url: str):
        self.url = url

    def load(self, table: str, cols: list[str], rows) -> None:
        import psycopg

        sql = f"copy {table} ({', '.join(chr(34) + c + chr(34) for c in cols)}) from stdin"
        with psycopg.connect(self.url) as conn:
            conn.execute("set synchronous_commit = off")  # a benchmark's fixture, not the bot's data
            batch: list = []
            done = 0
            for row in rows:
                batch.append(row)
                if len(batch) >= CHUNK:
                    self._copy(conn, sql, batch)
                    done += len(batch)
                    batch = []
                    say(f"{table}: {done:,} rows")
            if batch:
                self._copy(conn, sql, batch)
            conn.execute(f"analyze {table}")  # fresh statistics, as autovacuum would give a live table
            conn.commit()

    @staticmethod
    def _copy(conn, sql: str, batch: list) -> None:
        with conn.cursor() as cur, cur.copy(sql) as copy:
            for row in batch:
                copy.write_row(row)
        conn.commit()


def is_postgres(target: str) -> bool:
    return str(target).startswith(("postgres://", "postgresql://"))


def engine_for(target: str):
    return PostgresEngine(target) if is_postgres(target) else SQLiteEngine(Path(target))


def size_mb(db, target: str) -> int:
    """The database's size on disk: the SQLite file, or PostgreSQL's pg_database_size (tables, indexes, TOAST)."""
    if is_postgres(target):
        return round(db.execute("select pg_database_size(current_database())").fetchone()[0] / 1e6)
    return round(Path(target).stat().st_size / 1e6)


def _questions(n: int) -> list[str]:
    rows = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["question"] for r in rows[:n]]


def _answer_rows(n: int, passages: list[dict], questions: list[str], expired: float, now: float, rng):
    platforms, modes = ("slack", "discord", "cli"), ("llm", "retrieval-only")
    answer_text = "根据知识库，" + "这是一个基于检索到的段落生成的回答，引用了相关来源。" * 8 + " [1][2]"
    for i in range(n):
        shown = rng.sample(passages, 3)
        age = rng.uniform(RETENTION_DAYS + 1, RETENTION_DAYS + 180) if rng.random() < expired \
            else rng.uniform(0, RETENTION_DAYS - 1)
        yield (f"{i:012x}", now - age * DAY, rng.choice(platforms), f"C{i % 50}", "", f"U{i % 2000}",
               rng.choice(questions),
               json.dumps([{"id": p["id"], "doc": p["doc"], "heading": p["heading"], "text": p["text"]}
                           for p in shown], ensure_ascii=False),
               answer_text,
               json.dumps([{"n": k, "doc": p["doc"], "heading": p["heading"], "text": p["text"][:200]}
                           for k, p in enumerate(shown, 1)], ensure_ascii=False),
               rng.choice(modes), "", "qwen2.5-0.5b-instruct", "main", None,
               rng.lognormvariate(6, 1.5), rng.uniform(5, 60), rng.randint(300, 1500), rng.randint(20, 300))


ANSWER_COLS = ["id", "created_at", "platform", "channel", "thread", "user", "question", "passages", "answer",
               "citations", "mode", "notice", "model", "revision", "adapter", "latency_ms", "retrieval_ms",
               "prompt_tokens", "completion_tokens"]


def build(engine, db, n_answers: int, n_votes: int, n_corrections: int, expired: float, seed: int) -> dict:
    from bot import store

    rng, now = random.Random(seed), time.time()
    passages = store.passages(db)
    questions = _questions(200)
    t0 = time.perf_counter()
    say("loading answers")
    engine.load("answers", ANSWER_COLS, _answer_rows(n_answers, passages, questions, expired, now, rng))
    created = dict(db.execute("select id, created_at from answers").fetchall()) if n_votes or n_corrections else {}
    ids = list(created)
    voted = rng.sample(ids, min(n_votes, len(ids)))
    say("loading votes")
    engine.load("votes", ["answer_id", "user", "platform", "value", "created_at"],
                ((a, f"V{k % 500}", "slack", rng.choice((1, 1, -1)), created[a]) for k, a in enumerate(voted)))
    say("loading corrections")
    engine.load("corrections", ["answer_id", "user", "platform", "text", "status", "created_at"],
                ((a, "V1", "slack", "正确的答案应该是：" + "更完整的说明。" * 10, rng.choice(("pending", "accepted")),
                  created[a]) for a in rng.sample(ids, min(n_corrections, len(ids)))))
    say("loading deliveries")
    engine.load("deliveries", ["key", "created_at"], ((f"slack:Ev{a}", c) for a, c in created.items()))
    del created, ids, voted
    # The loader bypassed the writers that keep the counters: count them once, as the migration does.
    store.recount_counters(db)
    return {"load_s": round(time.perf_counter() - t0, 1)}


def time_scrape(db, n: int = 20) -> dict:
    from bot.ops import metrics

    reg = metrics.registry(db)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        metrics.exposition(reg)
        times.append(time.perf_counter() - t0)
    return {"median_ms": round(statistics.median(times) * 1000, 2), "max_ms": round(max(times) * 1000, 2)}


def time_full_count(db) -> float:
    """What a scrape cost before the counters: the count over `answers` (and votes, corrections), ms."""
    from bot import store

    t0 = time.perf_counter()
    store.answer_stats(db, [b * 1000 for b in store.LATENCY_BUCKETS_S])
    db.execute("select value, count(*) from votes group by value").fetchall()
    db.execute("select status, count(*) from corrections group by status").fetchall()
    return round((time.perf_counter() - t0) * 1000, 1)


def time_ask(db, questions: list[str]) -> dict:
    from bot import config, wiring
    from bot.answering.pipeline import Context

    settings = config.Settings.load()
    answerer = wiring.build_answerer(settings, db, model="none")
    answerer.ask(questions[0], Context(platform="cli", user="bench"))  # warm: the index is built here
    times = []
    for q in questions:
        t0 = time.perf_counter()
        answerer.ask(q, Context(platform="cli", user="bench"))
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"median_ms": round(statistics.median(times) * 1000, 1),
            "p90_ms": round(times[int(len(times) * 0.9) - 1] * 1000, 1)}


def _vote_loop(path: str, answer_ids: list[str], stop, out) -> None:
    """The bot's votes while the purge runs, one after another; each one's time from start to commit."""
    from bot import store

    db = store.connect(path)
    waits, errors, k = [], 0, 0
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            store.record_vote(db, answer_ids[k % len(answer_ids)], f"W{k}", "slack", 1)
        except Exception:  # noqa: BLE001 ("database is locked" past busy_timeout): a lost vote
            errors += 1
        waits.append(time.perf_counter() - t0)
        k += 1
        time.sleep(0.01)  # people click; the writer does not hold the lock back to back
    out.put({"writes": len(waits), "errors": errors, "max_s": max(waits, default=0.0),
             "over_500ms": sum(w > 0.5 for w in waits), "over_1s": sum(w > 1.0 for w in waits),
             "p99_s": sorted(waits)[int(len(waits) * 0.99)] if waits else 0.0})


def purge_with_writer(db, path: str, writer: str) -> dict:
    from bot.ops import retention

    young = [r[0] for r in db.execute("select id from answers where created_at > ? limit 1000",
                                      [time.time() - (RETENTION_DAYS - 2) * DAY]).fetchall()]
    if writer == "process":
        ctx = mp.get_context("spawn")  # a fresh interpreter: the serving process is another program
        stop, out = ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=_vote_loop, args=(str(path), young, stop, out))
    else:
        import queue

        stop, out = threading.Event(), queue.Queue()
        proc = threading.Thread(target=_vote_loop, args=(str(path), young, stop, out))
    proc.start()
    time.sleep(3.0 if writer == "process" else 0.5)  # its interpreter up and voting before the purge starts
    t0 = time.perf_counter()
    result = retention.purge(db, RETENTION_DAYS, adapters_dir=None, enqueue=False)
    purge_s = time.perf_counter() - t0
    time.sleep(0.3)
    stop.set()
    waits = out.get(timeout=60)
    proc.join(30)
    return {"purge_s": round(purge_s, 1), "answers": result["answers"], "votes": result["votes"],
            "corrections": result["corrections"], "writer": writer, "writes": waits["writes"],
            "errors": waits["errors"], "max_wait_ms": round(waits["max_s"] * 1000, 1),
            "writes_over_500ms": waits["over_500ms"], "writes_over_1s": waits["over_1s"],
            "p99_wait_ms": round(waits["p99_s"] * 1000, 1)}


def run(args) -> dict:
    import os

    from bot import store
    from bot.knowledge import ingest

    os.environ["BOT_MODEL"] = "none"  # retrieval-only: the figure is the store's, not a model's
    os.environ.setdefault("BOT_EMBEDDER", "none")
    tmp = None
    if args.db:
        path = args.db
    else:
        tmp = tempfile.TemporaryDirectory(prefix="growth-bench-")
        path = str(Path(tmp.name) / "bot.db")
    engine = engine_for(path)
    out: dict = {"engine": "postgresql" if is_postgres(path) else "sqlite",
                 "answers": args.answers, "votes": args.votes, "corrections": args.corrections,
                 "expired": args.expired, "batch_rows": store.BATCH_ROWS, "batch_pause_s": store.BATCH_PAUSE_S}
    try:
        db = store.connect(path)
        ingest.index_paths(db, [DOCS], DOCS, progress=False)
        questions = _questions(args.asks)
        say("timing scrape and ask on the empty database")
        out["empty"] = {"scrape": time_scrape(db), "ask": time_ask(db, questions)}
        out["build"] = build(engine, db, args.answers, args.votes, args.corrections, args.expired, args.seed)
        out["build"]["file_mb"] = size_mb(db, path)
        say(f"loaded in {out['build']['load_s']} s; timing scrape and ask again")
        full = {"scrape": time_scrape(db), "full_count_ms": time_full_count(db), "ask": time_ask(db, questions)}
        before = store.answer_counters(db)
        out["full"] = full
        say("purging with a writer voting meanwhile")
        out["purge"] = purge_with_writer(db, path, args.writer)
        out["after_purge"] = {"scrape": time_scrape(db), "counters_kept": store.answer_counters(db) == before}
    finally:
        if tmp is not None and not args.keep:
            tmp.cleanup()
        elif tmp is not None:
            out["db"] = str(path)
    out["targets"] = {
        "scrape_under_100ms": out["full"]["scrape"]["median_ms"] < 100,
        "no_write_over_1s": out["purge"]["max_wait_ms"] < 1000 and out["purge"]["errors"] == 0,
        # "unchanged": within noise on a shared 2-core machine (the median within 25 % or 5 ms).
        "ask_unchanged": out["full"]["ask"]["median_ms"]
        <= max(out["empty"]["ask"]["median_ms"] * 1.25, out["empty"]["ask"]["median_ms"] + 5),
    }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.growth_bench", description=__doc__.splitlines()[0])
    p.add_argument("--answers", type=int, default=1_000_000)
    p.add_argument("--votes", type=int, default=300_000)
    p.add_argument("--corrections", type=int, default=20_000)
    p.add_argument("--expired", type=float, default=0.8, help="share of the answers older than the retention")
    p.add_argument("--asks", type=int, default=30, help="questions of knowledge/eval/dev.jsonl timed")
    p.add_argument("--writer", choices=("process", "thread"), default="process")
    p.add_argument("--db", help="a SQLite path or a postgresql:// URL of an empty database "
                                "(default: a temporary SQLite file, deleted after)")
    p.add_argument("--pg", action="store_true", help="on a throwaway PostgreSQL 15 started for the run "
                                                      "(tools/pg_server.py; instead of --db)")
    p.add_argument("--keep", action="store_true", help="keep the temporary database; its path is printed")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.answers < 1 or args.votes < 0 or args.corrections < 0 or not 0 <= args.expired <= 1:
        p.error("--answers must be positive, --votes and --corrections not negative, --expired within 0..1")
    if args.pg and args.db:
        p.error("--pg starts its own PostgreSQL: give --db or --pg, not both")
    if args.pg:
        from tools import pg_server

        if pg_server.missing():
            p.error(f"--pg: {pg_server.missing()}")
        with tempfile.TemporaryDirectory(prefix="growth-bench-pg-") as work, \
                pg_server.running(Path(work), "growth_bench") as url:
            args.db = url
            out = run(args)
            # Lock waits the server saw (over 200 ms): none means a slow write waited on the machine, not a lock.
            out["purge"]["pg_lock_waits_over_200ms"] = len(pg_server.lock_waits(Path(work)))
        args.db = None
    else:
        out = run(args)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        e, f, pg = out["empty"], out["full"], out["purge"]
        print(f"{out['engine']}: {args.answers:,} answers, {args.votes:,} votes, {args.corrections:,} corrections "
              f"({out['build']['file_mb']:,} MB, loaded in {out['build']['load_s']} s)")
        print(f"scrape: {e['scrape']['median_ms']} ms empty, {f['scrape']['median_ms']} ms full "
              f"(max {f['scrape']['max_ms']} ms; the old full count: {f['full_count_ms']} ms)")
        print(f"ask (retrieval-only): median {e['ask']['median_ms']} ms empty, {f['ask']['median_ms']} ms full "
              f"(p90 {e['ask']['p90_ms']} / {f['ask']['p90_ms']} ms)")
        print(f"purge: {pg['answers']:,} answers, {pg['votes']:,} votes, {pg['corrections']:,} corrections in "
              f"{pg['purge_s']} s; {pg['writes']} votes by a {pg['writer']} meanwhile: longest wait "
              f"{pg['max_wait_ms']} ms, p99 {pg['p99_wait_ms']} ms, {pg['writes_over_1s']} over 1 s, "
              f"{pg['errors']} failed" + (f"; lock waits over 200 ms in the server's log: "
                                          f"{pg['pg_lock_waits_over_200ms']}" if "pg_lock_waits_over_200ms" in pg
                                          else ""))
        print(f"counters kept across the purge: {out['after_purge']['counters_kept']}; targets: {out['targets']}")
    return 0 if all(out["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
