"""Slack under load: `python -m tools.slack_load [--users 20] [--requests 200] [--new-tokens N] [--json]`.

Serves the Slack app on loopback in its own thread and event loop, built as
`serve` builds it (`wiring.build_commands`, the answering pipeline of
`python -m bot ask` with its model worker), with `slack_recorder`
standing in for Slack's servers, over the bundled knowledge base indexed
into a temporary database, and the tiny model (built under BOT_CACHE_DIR if
missing). `--users` simulated users (user ids U0000...) send `--requests`
signed `/ask`s in all, each user one after another (the next once the
previous is acked), at most `--concurrency` in flight. The first request
goes out alone and the rest start once the model is generating it.

Measured: each ack (the HTTP response time of its request, which is what
Slack's 3 s limit measures) and, for every request, what became of it,
read back from what reached the recorder:

- answered: the question was posted in the channel and a final answer with
  its sources block replaced the placeholder in that question's thread (or,
  where the bot cannot post, came through the command's response URL);
- busy: the user was told "busy, try again in N s" (in the ack, through the
  response URL, as an ephemeral message, or in the thread);
- other: some other reply (an error, a refusal), neither of the above;
- lost: nothing at all by the end of `--timeout`;
- duplicated: a question posted or answered more than once, an answer
  recorded twice, or one request both answered and told busy.

Each question carries its request number, `(#007)`, so it can be followed.
The run stops once every request is accounted for (then waits `--grace`
seconds for late duplicates) or after `--timeout`. Where the model cannot
be had, a slow scripted generator stands in, and the output says so.
Exit code 1 when a request was lost, duplicated, got some other reply, or was acked after 3 s.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from bot import config
from bot.llm.generator import Generation, resolved

ROOT = Path(__file__).resolve().parent.parent
# The stand-in for Slack's servers is a test double, kept with the tests (tests/slack_recorder.py).
sys.path.insert(0, str(ROOT / "tests"))
SECRET = "load-test-signing-secret"
BUSY = "busy, try again in"  # what a rate-limited or queue-full user is told
ACK_LIMIT_MS = 3000.0  # Slack's limit for acknowledging a request
TAG_RE = re.compile(r"\(#(\d{3,})\)")


class _Timed:
    """The model, noting when it generates: acks count as 'under load' only if a generation was running."""

    def __init__(self, inner):
        self.inner, self.spans, self.active = inner, [], 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _timed(self, fn, *args):
        self.active += 1
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.spans.append((t0, time.monotonic()))
            self.active -= 1

    def generate_batch(self, requests):
        return self._timed(self.inner.generate_batch, requests)

    def generate(self, messages, max_new_tokens=None, on_token=None):
        return self._timed(self.inner.generate, messages, max_new_tokens, on_token)

    def submit(self, messages, max_new_tokens=None, on_token=None):
        return resolved(self.generate, messages, max_new_tokens, on_token)  # timed, not the inner's own


class _Scripted:
    """The stand-in when no model can be had: one question at a time, a token every 20 ms."""

    model_id, revision = "scripted/slow", "none"

    def __init__(self):
        self.lock = threading.Lock()

    def count_tokens(self, text):
        return len(text)

    def generate(self, messages, max_new_tokens=None, on_token=None):
        text = "根据资料，答案见[1]。" * 6
        with self.lock:
            for ch in text:
                time.sleep(0.02)
                if on_token:
                    on_token(ch)
        return Generation(text, 0, len(text), None)

    def submit(self, messages, max_new_tokens=None, on_token=None):
        return resolved(self.generate, messages, max_new_tokens, on_token)


@contextmanager
def _env(**values):
    """Settings for the served app (temporary adapters folder, the model preset), restored afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _model_answered_first(answerer, questions: list[str]) -> list[str]:
    """The questions rotated so that the first is one the abstention judge lets through to the model."""
    for i, q in enumerate(questions):
        if not answerer.verdict(q, answerer.searcher.search(q, answerer.k)).abstain:
            return questions[i:] + questions[:i]
    return questions


def _answerer(db, model: str):
    """(answerer as `serve` builds it, the timing wrapper, words saying what generates)."""
    from bot.answering import pipeline as answering
    from bot import wiring
    from bot.knowledge import retrieval

    reason = "asked for with --model scripted"
    if model == "tiny":
        try:
            settings = config.Settings.load()  # a tool is an entry point: it reads the settings itself
            wiring.build_tiny_model(settings.cache_dir, ROOT / "knowledge" / "docs", log=lambda *a: None)
            answerer = wiring.build_answerer(settings, db, "tiny")
            source = answerer.generator()  # loaded before the clock starts, as `serve` does at start-up
            if source is None:
                raise RuntimeError(answerer.unavailable_reason)
            inner = getattr(source, "generator", None)  # the model worker's model
            if inner is not None:
                source.generator = timed = _Timed(inner)
            else:
                answerer._generator = timed = _Timed(source)
            return answerer, timed, f"tiny model ({settings.cache_dir / 'tiny'}) on the model worker"
        except Exception as e:  # no torch, a failed build: measure the transport anyway, and say so
            reason = f"{type(e).__name__}: {e}"[:200]
    timed = _Timed(_Scripted())
    return (answering.Answerer(db, retrieval.Searcher(db), lambda: timed), timed,
            f"FALLBACK: slow scripted generator, not the model ({reason})")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))] if ordered else 0.0


def _spread(values: list[float]) -> dict:
    return {"p50": round(_percentile(values, 50), 1), "p95": round(_percentile(values, 95), 1),
            "p99": round(_percentile(values, 99), 1), "max": round(max(values, default=0.0), 1)}


class _Server(threading.Thread):
    """The bot's side: its own event loop, as in `serve`, so client and server don't share one."""

    def __init__(self, commands, api_url: str):
        super().__init__(name="slack-server", daemon=True)
        self.commands, self.api_url, self.ready = commands, api_url, threading.Event()
        self.port, self.loop, self.stop, self.error, self.dispatch_ms = 0, None, None, None, []

    def run(self):
        try:
            asyncio.run(self._serve())
        except Exception as e:
            self.error = e
            self.ready.set()

    async def _serve(self):
        from bot.chat.slack import app as slack_app

        app = slack_app.build_app(self.commands, token="xoxb-load-test", signing_secret=SECRET, api_url=self.api_url)
        dispatch = app.async_dispatch

        async def timed(req):  # bolt's own share of each ack, apart from HTTP and the client's loop
            t0 = time.perf_counter()
            try:
                return await dispatch(req)
            finally:
                self.dispatch_ms.append((time.perf_counter() - t0) * 1000)
        app.async_dispatch = timed
        runner = await slack_app.start_http(app, 0, host="127.0.0.1")
        self.port, self.loop, self.stop = runner.addresses[0][1], asyncio.get_running_loop(), asyncio.Event()
        self.ready.set()
        await self.stop.wait()
        await runner.cleanup()

    def shutdown(self):
        if self.loop and self.stop:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.join(10)


# -- what became of each request ---------------------------------------------------


def _text_of(data: dict) -> str:
    """A message's text and its blocks' texts, for looking for the busy phrase."""
    parts = [str(data.get("text") or "")]
    for block in data.get("blocks") or []:
        parts.append(str((block.get("text") or {}).get("text", "")))
        parts += [str(e.get("text", "")) for e in block.get("elements") or [] if isinstance(e, dict)]
    return "\n".join(parts)


def _answer_id(blocks: list) -> str | None:
    for block in blocks or []:
        if block.get("type") == "actions":
            for e in block.get("elements") or []:
                if e.get("value"):
                    return e["value"]
    return None


def _has_sources(blocks: list) -> bool:
    return any(b.get("block_id") == "sources" for b in blocks or [])


def account(calls, acks: dict[int, dict], user_of: dict[int, str], db_questions: list[str] = ()) -> dict:
    """What became of each request: `{"outcomes": {n: "answered"|"busy"|"other"|"lost"}, "duplicates": [...], ...}`.

    `calls` are the recorder's calls (method, data, path, reply) in arrival order; `acks[n]` holds
    request n's `status` and `body`; `user_of[n]` its user; `db_questions` the questions recorded as
    answers in the database. Pure, so it is tested on its own."""
    answered, busy, other, notes = Counter(), Counter(), Counter(), []
    roots, placeholders, answer_ids = {}, {}, Counter()
    posted = Counter()
    for c in calls:
        data = c.data
        if c.method == "chat.postMessage" and not data.get("thread_ts"):
            m = TAG_RE.search(str(data.get("text", "")))
            if m:
                n = int(m.group(1))
                posted[n] += 1
                roots[c.reply.get("ts")] = n
        elif c.method == "chat.postMessage" and data.get("thread_ts") in roots:
            n = roots[data["thread_ts"]]
            placeholders[c.reply.get("ts")] = n
            if BUSY in _text_of(data):
                busy[n] += 1
        elif c.method == "chat.update" and data.get("ts") in placeholders:
            n = placeholders[data["ts"]]
            if BUSY in _text_of(data):
                busy[n] += 1
            elif data.get("blocks"):
                if _has_sources(data["blocks"]):
                    answered[n] += 1
                    answer_ids[_answer_id(data["blocks"])] += 1
                else:
                    other[n] += 1
            elif "went wrong" in str(data.get("text", "")):
                other[n] += 1
        elif c.method == "response_url":
            m = re.search(r"/q(\d+)$", c.path)
            if not m:
                continue
            n = int(m.group(1))
            if BUSY in _text_of(data):
                busy[n] += 1
            elif _has_sources(data.get("blocks")):
                answered[n] += 1
                answer_ids[_answer_id(data["blocks"])] += 1
            else:
                other[n] += 1
    for n, ack in acks.items():
        body = ack.get("body") or ""
        if BUSY in body:
            busy[n] += 1
        elif ack.get("status") != 200:
            other[n] += 1
        elif body.strip():  # a refusal in the ack (an empty or too long question, say)
            other[n] += 1
    # Ephemeral messages name a user, not a request: each busy one is given to that user's
    # earliest request that has no outcome yet (its thread's, when it names one).
    for c in calls:
        if c.method == "chat.postEphemeral" and BUSY in _text_of(c.data):
            n = roots.get(c.data.get("thread_ts"))
            if n is None:
                mine = [k for k in sorted(acks) if user_of.get(k) == c.data.get("user")
                        and not (answered[k] or busy[k] or other[k])]
                n = mine[0] if mine else None
            if n is None:
                notes.append(f"a busy ephemeral message to {c.data.get('user')} matches no request")
                continue
            busy[n] += 1
    outcomes, duplicates = {}, []
    recorded = Counter(int(m.group(1)) for q in db_questions if (m := TAG_RE.search(q)))
    for n in sorted(acks):
        kinds = [k for k, counter in (("answered", answered), ("busy", busy), ("other", other)) if counter[n]]
        outcomes[n] = kinds[0] if kinds else "lost"
        why = []
        if len(kinds) > 1:
            why.append(" and ".join(kinds))
        if answered[n] > 1:
            why.append(f"answered {answered[n]} times")
        if busy[n] > 1:
            why.append(f"told busy {busy[n]} times")
        if posted[n] > 1:
            why.append(f"question posted {posted[n]} times")
        if recorded[n] > 1:
            why.append(f"recorded {recorded[n]} times in the database")
        if why:
            duplicates.append({"request": n, "why": "; ".join(why)})
    twice = [a for a, k in answer_ids.items() if a and k > 1]
    if twice:
        notes.append(f"answer ids posted more than once: {', '.join(sorted(twice))}")
    counts = Counter(outcomes.values())
    return {"outcomes": outcomes, "duplicates": duplicates, "answer_ids_posted_twice": twice, "notes": notes,
            "answered": counts["answered"], "busy": counts["busy"], "other": counts["other"],
            "lost": counts["lost"], "recorded": sum(recorded.values())}


async def _drive(server: _Server, recorder, timed, questions, users: int, concurrency: int, requests: int,
                 channels: int, timeout: float, grace: float):
    import aiohttp

    from slack_recorder import command_body, post_signed

    url = f"http://127.0.0.1:{server.port}/slack/events"
    base = {"token": "x", "team_id": "T0KB", "team_domain": "kb", "command": "/ask", "api_app_id": "A0KBBOT"}
    user_of = {n: f"U{(n - 1) % users:04d}" for n in range(1, requests + 1)}
    acks: dict[int, dict] = {}

    async def ask(session, n: int):
        question = f"{questions[(n - 1) % len(questions)]} (#{n:03d})"
        channel = f"C0LOAD{(n - 1) % channels}"
        body = command_body({**base, "channel_id": channel, "channel_name": channel.lower(),
                             "user_id": user_of[n], "user_name": f"user{user_of[n]}", "text": question,
                             "trigger_id": uuid.uuid4().hex, "response_url": recorder.response_url(f"q{n}")})
        start = time.monotonic()
        try:
            status, text, seconds = await post_signed(session, url, SECRET, body)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:  # no ack at all: counted, never hidden
            status, text, seconds = 0, f"{type(e).__name__}: {e}", time.monotonic() - start
        acks[n] = {"status": status, "body": text, "ms": seconds * 1000, "start": start, "end": start + seconds}

    def settled(r):
        return all(v != "lost" for v in account(r.calls, acks, user_of)["outcomes"].values())

    client_timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=client_timeout,
                                     connector=aiohttp.TCPConnector(limit=max(concurrency, 1))) as session:
        await ask(session, 1)  # the question the model is busy with when the burst starts
        deadline = time.monotonic() + 60
        while timed.active == 0 and not timed.spans and time.monotonic() < deadline:
            if acks[1]["body"].strip() or acks[1]["status"] != 200:
                break  # refused or told busy in the ack: the model will not start on it
            await asyncio.sleep(0.002)
        busy_at_start = timed.active > 0
        gate = asyncio.Semaphore(concurrency)

        async def user(u: str):
            for n in sorted(k for k, who in user_of.items() if who == u and k > 1):
                async with gate:
                    await ask(session, n)

        t0 = time.monotonic()
        await asyncio.gather(*[user(u) for u in sorted(set(user_of.values()))])
        burst_s = time.monotonic() - t0
        deadline = time.monotonic() + timeout
        while not settled(recorder) and time.monotonic() < deadline:  # polled: cheap beside the answers
            await asyncio.sleep(0.2)
        settled_s = time.monotonic() - t0
        await asyncio.sleep(grace)  # a duplicate would arrive now
    return acks, user_of, busy_at_start, burst_s, settled_s


def run(users: int = 20, requests: int = 200, *, concurrency: int | None = None, channels: int = 1,
        model: str = "tiny", new_tokens: int | None = None, context_budget: int | None = None,
        timeout: float = 300.0, grace: float = 1.0) -> dict:
    """Measure; returns the figures as a dict (what `--json` prints), `per_request` included."""
    from bot.knowledge import ingest
    from bot import store, wiring
    from slack_recorder import Recorder

    concurrency = concurrency or users
    questions = [json.loads(line)["question"] for line in
                 (ROOT / "knowledge" / "eval" / "dev.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    with tempfile.TemporaryDirectory(prefix="slack-load-") as tmp, \
            _env(BOT_ADAPTERS_DIR=Path(tmp) / "adapters", BOT_MODEL=model if model != "scripted" else "none"):
        db = store.connect(Path(tmp) / "bot.db")
        docs = ROOT / "knowledge" / "docs"
        ingest.index_paths(db, [docs], docs, progress=False)
        answerer, timed, described = _answerer(db, model)
        if new_tokens:
            answerer.max_new_tokens = new_tokens
        if context_budget:
            answerer.context_budget = context_budget
        cmds = wiring.build_commands(config.Settings.load(), db, answerer)
        # Request #1 is the question the model is busy with when the burst starts: it must be one the
        # bot answers with the model, not one it declines as not covered (abstention asks no model).
        questions = _model_answered_first(answerer, questions)

        async def main():
            recorder = await Recorder().start()
            server = _Server(cmds, recorder.api_url)
            server.start()
            await asyncio.to_thread(server.ready.wait, 60)
            if server.error:
                raise server.error
            try:
                got = await _drive(server, recorder, timed, questions, users, concurrency, requests, channels,
                                   timeout, grace)
                return got, recorder, server
            finally:
                await asyncio.to_thread(server.shutdown)
                await recorder.close()

        (acks, user_of, busy_at_start, burst_s, settled_s), recorder, server = asyncio.run(main())
        db_questions = [r[0] for r in db.execute("select question from answers")]
        source = answerer.generator()
        if hasattr(source, "close"):
            source.close()
    result = account(recorder.calls, acks, user_of, db_questions)
    ms = [a["ms"] for a in acks.values()]
    overlapping = sum(any(s < a["end"] and a["start"] < e for s, e in timed.spans) for a in acks.values())
    # Time from a request to its final answer reaching the recorder, for the answered ones.
    placed, answer_s = {}, []
    for c in recorder.calls:
        if c.method == "chat.postMessage" and not c.data.get("thread_ts") and (m := TAG_RE.search(c.data.get("text", ""))):
            placed[c.reply.get("ts")] = int(m.group(1))
        elif c.method == "chat.postMessage" and c.data.get("thread_ts") in placed:
            placed[c.reply.get("ts")] = placed[c.data["thread_ts"]]
        elif c.method == "chat.update" and _has_sources(c.data.get("blocks")) and c.data.get("ts") in placed:
            answer_s.append(c.at - acks[placed[c.data["ts"]]]["start"])
    slow = [n for n, a in acks.items() if a["status"] != 200 or a["ms"] >= ACK_LIMIT_MS]
    return {
        "users": users, "requests": requests, "concurrency": concurrency, "channels": channels,
        "generator": described, "new_tokens": answerer.max_new_tokens, "context_budget": answerer.context_budget,
        "ack_ms": _spread(ms),
        "dispatch_ms": {"p50": round(_percentile(server.dispatch_ms, 50), 1),
                        "p99": round(_percentile(server.dispatch_ms, 99), 1)},
        "acks_ok": sum(a["status"] == 200 for a in acks.values()),
        "acks_over_3s_or_failed": slow,
        "acks_while_generating": overlapping,
        "model_busy_when_burst_started": busy_at_start,
        "answered": result["answered"], "busy": result["busy"], "other": result["other"], "lost": result["lost"],
        "duplicated": len(result["duplicates"]) + len(result["answer_ids_posted_twice"]),
        "duplicates": result["duplicates"], "notes": result["notes"],
        "busy_example": next((a["body"] for a in acks.values() if BUSY in (a.get("body") or "")), None)
        or next((_text_of(c.data) for c in recorder.calls if BUSY in _text_of(c.data)), None),
        "answers_recorded": result["recorded"],
        "answer_s": {k: round(v / 1000, 2) for k, v in _spread([s * 1000 for s in answer_s]).items()},
        "streaming_updates": sum(1 for u in recorder.of("chat.update") if not u.get("blocks")),
        "generation_calls": len(timed.spans), "burst_s": round(burst_s, 2), "all_settled_s": round(settled_s, 2),
        "per_request": {str(n): {"user": user_of[n], "outcome": result["outcomes"][n], "ack_ms": round(acks[n]["ms"], 1),
                                 "status": acks[n]["status"]} for n in sorted(acks)},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.slack_load", description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=20, help="simulated users, each asking in turn (default 20)")
    p.add_argument("--requests", type=int, default=200, help="signed /ask requests in all (default 200)")
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight at once (default: --users)")
    p.add_argument("--channels", type=int, default=1, help="channels the users ask in (default 1)")
    p.add_argument("--model", choices=["tiny", "scripted"], default="tiny", help="the generator (default tiny)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens per answer at most (default: the preset's)")
    p.add_argument("--context-budget", type=int, default=None,
                   help="prompt tokens for passages (default: the preset's)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every outcome (default 300)")
    p.add_argument("--grace", type=float, default=1.0, help="seconds to watch for duplicates afterwards (default 1)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON (per request too)")
    args = p.parse_args(argv)
    if min(args.users, args.requests, args.channels, args.concurrency or 1) < 1 or args.requests > 1000:
        p.error("--users, --requests, --channels and --concurrency must be at least 1, and --requests at most 1000")
    out = run(args.users, args.requests, concurrency=args.concurrency, channels=args.channels, model=args.model,
              new_tokens=args.new_tokens, context_budget=args.context_budget, timeout=args.timeout, grace=args.grace)
    failed = bool(out["lost"] or out["duplicated"] or out["other"] or out["acks_over_3s_or_failed"])
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return int(failed)
    a, t = out["ack_ms"], out["answer_s"]
    print(f"generator: {out['generator']}; {out['new_tokens']} new tokens, {out['context_budget']} context tokens")
    print(f"{out['requests']} /ask from {out['users']} users in {out['channels']} channel(s), "
          f"{out['concurrency']} at a time; model busy when the burst started: "
          f"{out['model_busy_when_burst_started']}; acks while generating: {out['acks_while_generating']}")
    print(f"ack ms: p50 {a['p50']}  p95 {a['p95']}  p99 {a['p99']}  max {a['max']}  ({out['acks_ok']} × HTTP 200, "
          f"{len(out['acks_over_3s_or_failed'])} over 3 s or failed); of which bolt's dispatch: "
          f"p50 {out['dispatch_ms']['p50']}  p99 {out['dispatch_ms']['p99']}")
    print(f"outcomes: answered {out['answered']}, busy {out['busy']}, other {out['other']}, lost {out['lost']}, "
          f"duplicated {out['duplicated']}; {out['answers_recorded']} answers recorded; all settled in "
          f"{out['all_settled_s']} s")
    print(f"time to the final answer, s: p50 {t['p50']}  p95 {t['p95']}  max {t['max']} "
          f"({out['streaming_updates']} streaming updates, {out['generation_calls']} generate calls)")
    if out["busy_example"]:
        print(f"told busy, e.g.: {out['busy_example'][:200]}")
    for d in out["duplicates"][:10]:
        print(f"  duplicated: request #{d['request']}: {d['why']}")
    for note in out["notes"]:
        print(f"  note: {note}")
    return int(failed)


if __name__ == "__main__":
    raise SystemExit(main())
