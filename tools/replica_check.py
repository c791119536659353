"""Two `serve` replicas on one database: `python -m tools.replica_check [--deliveries 200] [--outbox 100] [--db URL | --pg] [--json]`.

Starts two real `python -m bot serve` processes (Slack over HTTP, signed
requests, `SLACK_API_URL` at the loopback recorder tests/slack_recorder.py
standing in for Slack's Web API) on one database: `--db` (a SQLite path or
a `postgresql://` URL; default a temporary SQLite file), or with `--pg` a
throwaway PostgreSQL 15 started for the run (tools/pg_server.py: initdb,
pg_ctl on a free loopback port, stopped after), indexed first by
`python -m bot index`. Each replica has its own bot token, so the recorder
tells which one posted what.

Deliveries: `--deliveries` @-mentions, each a new user and event id. Each is
sent to one replica and, once acknowledged, its retry (`X-Slack-Retry-Num: 1`,
as Slack resends a delivery it believes lost) to the other; the replica
that gets the original alternates, and every fourth delivery goes to both at
once (original and retry racing). Outbox: `--outbox` messages are written
once to the database while both replicas' posters poll it.

Counted, from the recorder and the database:

- duplicate_answers: deliveries answered more than once (two messages in the
  question's thread, or two answer rows recorded for its user) (must be 0);
- unanswered: deliveries with no answer by `--timeout` (must be 0);
- outbox_duplicates / outbox_missing: outbox messages posted twice / never (must be 0);
- serve_errors: ERROR lines and tracebacks in the replicas' logs (must be 0);
- answered_by / outbox_posted_by: how the work spread over the two replicas.

Prints one JSON object (`--json`) or a short report, and exits 1 when a must-be-0 is not.
tests/scale/test_replicas_scale.py runs it under `make test-scale`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tools.serving import wait_ready

ROOT = Path(__file__).resolve().parent.parent
# The stand-in for Slack's servers is a test double, kept with the tests (tests/slack_recorder.py).
sys.path.insert(0, str(ROOT / "tests"))
SECRET = "replica-check-signing-secret"
TOKENS = {"A": "xoxb-replica-a", "B": "xoxb-replica-b"}
FIXTURE = ROOT / "tests" / "fixtures" / "slack" / "event_app_mention.json"
THINKING = "_Thinking…_"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(db: str, tmp: Path, model: str, **extra) -> dict:
    env = {**os.environ, "BOT_DB": db, "BOT_MODEL": model, "BOT_EMBEDDER": "none",
           "BOT_ADAPTERS_DIR": str(tmp / "adapters"), "SLACK_SIGNING_SECRET": SECRET, "BOT_RATE_USER": "off",
           "BOT_RATE_CHANNEL": "off", "BOT_QUEUE_MAX": "1000", "BOT_LOG_FORMAT": "text", "PYTHONPATH": str(ROOT),
           **extra}
    for name in ("SLACK_APP_TOKEN", "DISCORD_TOKEN", "BOT_REDIS_URL"):
        env.pop(name, None)
    return env


def _serve(name: str, db: str, tmp: Path, api_url: str, port: int, model: str) -> subprocess.Popen:
    env = _env(db, tmp, model, PORT=str(port), SLACK_BOT_TOKEN=TOKENS[name], SLACK_API_URL=api_url)
    return subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / f"serve-{name}.log", "w"))


def delivery(i: int) -> dict:
    """Delivery `i`: an @-mention by user R<i> with its own event id and ts; the tag (#i) follows it."""
    from slack_recorder import event_body

    envelope = json.loads(FIXTURE.read_text(encoding="utf-8"))
    ts = f"1700002{i:03d}.000100"
    envelope["event_id"] = f"EvReplica{i:05d}"
    envelope["event"].update(user=f"R{i:05d}", ts=ts, event_ts=ts, text=f"<@UKBBOT> 什么是边缘计算？(#{i:03d})")
    return {"i": i, "ts": ts, "user": f"R{i:05d}", "body": event_body(envelope), "statuses": []}


async def _send(session, url: str, d: dict, retry: bool) -> None:
    from slack_recorder import post_signed

    extra = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"} if retry else None
    status, _, _ = await post_signed(session, url, SECRET, d["body"], json_body=True, extra_headers=extra)
    d["statuses"].append(status)


def _threads(calls) -> dict[str, list[tuple[str, str]]]:
    """ts of a question -> [(token, final text)] for each message the bot posted in its thread (the last
    update of each, so a streamed placeholder counts once)."""
    posted: dict[str, tuple[str, str]] = {}  # message ts -> (question ts, token)
    final: dict[str, str] = {}
    for c in calls:
        if c.method == "chat.postMessage" and c.data.get("thread_ts"):
            posted[c.reply.get("ts")] = (c.data["thread_ts"], c.token)
            final[c.reply.get("ts")] = str(c.data.get("text", ""))
        elif c.method == "chat.update" and c.data.get("ts") in posted:
            final[c.data["ts"]] = str(c.data.get("text", ""))
    out: dict[str, list[tuple[str, str]]] = {}
    for ts, (question, token) in posted.items():
        out.setdefault(question, []).append((token, final[ts]))
    return out


def _answered(replies: list[tuple[str, str]]) -> bool:
    return any(text and text != THINKING and not text.endswith(" ▍") for _, text in replies)


async def check(deliveries: int, outbox: int, db: str | None, model: str, timeout: float,
                db_b: str | None = None) -> dict:
    """The figures above. `db_b`: replica B on a database of its own instead (the negative control of
    tests/scale/: replicas that share nothing answer every retry again, and the count must show it)."""
    from bot import store
    from slack_recorder import Recorder
    import aiohttp

    with tempfile.TemporaryDirectory(prefix="replica-check-") as tmp_name:
        tmp = Path(tmp_name)
        db = db or str(tmp / "bot.db")
        dbs = {"A": db, "B": db_b or db}
        for target in set(dbs.values()):
            index = subprocess.run([sys.executable, "-m", "bot", "index"], cwd=ROOT, env=_env(target, tmp, model),
                                   capture_output=True, text=True)
            if index.returncode != 0:
                raise RuntimeError(f"`bot index` failed: {index.stderr.strip()[-500:]}")
        conn = store.connect(db)
        recorder = await Recorder().start()
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        procs: dict[str, subprocess.Popen] = {}
        try:
            ports = {name: _port() for name in TOKENS}
            for name in TOKENS:
                procs[name] = _serve(name, dbs[name], tmp, recorder.api_url, ports[name], model)
            for name in TOKENS:
                await wait_ready(session, ports[name], procs[name])
            urls = {name: f"http://127.0.0.1:{ports[name]}/slack/events" for name in TOKENS}

            # Written once, while both replicas' posters poll every OUTBOX_EVERY_S: each must post it once.
            texts = [f"outbox message (#{n:04d})" for n in range(outbox)]
            for text in texts:
                store.post_outbox(conn, None, "slack", "C0OUTBOX", "", text)

            ds = [delivery(i) for i in range(deliveries)]
            limit = asyncio.Semaphore(16)

            async def deliver(d: dict) -> None:
                first, second = ("A", "B") if d["i"] % 2 == 0 else ("B", "A")
                async with limit:
                    if d["i"] % 4 == 3:  # the original and its retry racing at two replicas
                        await asyncio.gather(_send(session, urls[first], d, False),
                                             _send(session, urls[second], d, True))
                    else:
                        await _send(session, urls[first], d, False)
                        await _send(session, urls[second], d, True)
            t0 = time.monotonic()
            await asyncio.gather(*(deliver(d) for d in ds))
            sent_s = time.monotonic() - t0

            def done(r) -> bool:
                threads = _threads(r.calls)
                posted = Counter(c.data.get("text") for c in r.calls if c.method == "chat.postMessage"
                                 and c.data.get("channel") == "C0OUTBOX")
                return all(_answered(threads.get(d["ts"], [])) for d in ds) and all(posted[t] for t in texts)
            try:
                await recorder.wait_for(done, timeout)
            except (TimeoutError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(3.0)  # a poster round and more: late duplicates would arrive now
            elapsed_s = time.monotonic() - t0
        finally:
            for p in procs.values():
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
            await session.close()
            await recorder.close()

        by_token = {token: name for name, token in TOKENS.items()}
        threads = _threads(recorder.calls)
        rows = {d["user"]: len(store.recent_answers(conn, "slack", d["user"], 5)) for d in ds}
        duplicate = [d["i"] for d in ds if len(threads.get(d["ts"], [])) > 1 or rows[d["user"]] > 1]
        # Answered: a final message in its thread and its answer recorded (an error reply records none).
        unanswered = [d["i"] for d in ds if not _answered(threads.get(d["ts"], [])) or not rows[d["user"]]]
        answered_by = Counter(by_token.get(threads[d["ts"]][0][0], "?") for d in ds if threads.get(d["ts"]))
        outbox_posts = [c for c in recorder.calls if c.method == "chat.postMessage"
                        and c.data.get("channel") == "C0OUTBOX"]
        per_text = Counter(c.data.get("text") for c in outbox_posts)
        logs = "".join((tmp / f"serve-{n}.log").read_text(errors="replace") for n in TOKENS)
        errors = [line for line in logs.splitlines() if line.startswith(("ERROR", "Traceback"))]
        return {
            "db": "sqlite" if "://" not in db else db.split("://", 1)[0], "model": model,
            "deliveries": deliveries, "requests_sent": sum(len(d["statuses"]) for d in ds),
            "acked_200": sum(s == 200 for d in ds for s in d["statuses"]),
            "raced": sum(d["i"] % 4 == 3 for d in ds),
            "answered": deliveries - len(unanswered), "unanswered": len(unanswered),
            "duplicate_answers": len(duplicate), "duplicate_sample": duplicate[:5],
            "answer_rows": sum(rows.values()), "answered_by": dict(sorted(answered_by.items())),
            "outbox": outbox, "outbox_posted": sum(1 for t in texts if per_text[t]),
            "outbox_duplicates": sum(per_text[t] - 1 for t in texts if per_text[t] > 1),
            "outbox_missing": sum(1 for t in texts if not per_text[t]),
            "outbox_posted_by": dict(sorted(Counter(by_token.get(c.token, "?") for c in outbox_posts).items())),
            "send_s": round(sent_s, 1), "elapsed_s": round(elapsed_s, 1),
            "serve_errors": len(errors), "first_errors": sorted(set(errors))[:5],
        }


def bad(out: dict) -> bool:
    return bool(out["duplicate_answers"] or out["unanswered"] or out["outbox_duplicates"] or out["outbox_missing"]
                or out["serve_errors"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--deliveries", type=int, default=200)
    p.add_argument("--outbox", type=int, default=100, help="messages written once to the outbox")
    p.add_argument("--db", default=None, help="BOT_DB for both replicas (default: a temporary SQLite file); "
                                              "it is indexed and written to")
    p.add_argument("--pg", action="store_true", help="run on a throwaway PostgreSQL 15 started for the run "
                                                      "(instead of --db)")
    p.add_argument("--model", default="none", help="BOT_MODEL for serve (none: retrieval-only answers, fast)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for every answer")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.deliveries < 1 or args.outbox < 0:
        p.error("--deliveries must be at least 1 and --outbox at least 0")
    if args.pg and args.db:
        p.error("--pg starts its own PostgreSQL: give --db or --pg, not both")
    if args.pg:
        from tools import pg_server

        if pg_server.missing():
            p.error(f"--pg: {pg_server.missing()}")
        with tempfile.TemporaryDirectory(prefix="replica-check-pg-") as work, \
                pg_server.running(Path(work), "replica_check") as url:
            out = asyncio.run(check(args.deliveries, args.outbox, url, args.model, args.timeout))
    else:
        out = asyncio.run(check(args.deliveries, args.outbox, args.db, args.model, args.timeout))
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(f"{out['deliveries']} deliveries ({out['requests_sent']} requests, {out['raced']} raced) across 2 "
              f"serve replicas on {out['db']}: {out['duplicate_answers']} duplicate answers, "
              f"{out['unanswered']} unanswered, answered by {out['answered_by']}; outbox {out['outbox']} written "
              f"once: {out['outbox_duplicates']} posted twice, {out['outbox_missing']} never, posted by "
              f"{out['outbox_posted_by']}; {out['serve_errors']} serve errors; {out['elapsed_s']} s")
    return 1 if bad(out) else 0


if __name__ == "__main__":
    raise SystemExit(main())
