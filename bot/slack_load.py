"""Slack ack latency under load: `python -m bot.slack_load [--concurrency 20] [--requests 20] [--json]`.

Serves the Slack app on loopback in its own thread and event loop (as
`serve` runs it), with `bot.slack_recorder` standing in for Slack's servers,
a real Answerer over the bundled knowledge base, and the tiny model (built
under BOT_CACHE_DIR if missing) behind the model worker. One question is
sent first and the burst starts once the model is generating it; then
`requests` signed `/ask`s go out, `concurrency` at a time. Each ack is
the HTTP response time of its request, which is what Slack's 3 s limit
measures. It stops by itself once every answer has reached the recorder
(or after `--timeout`). Where the model cannot be had, a slow scripted
generator stands in, and the output says so.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

from . import config

ROOT = Path(__file__).resolve().parent.parent
SECRET = "load-test-signing-secret"


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
        return SimpleNamespace(text=text, prompt_tokens=0, completion_tokens=len(text), adapter=None)


def _model(model: str, adapters_dir: Path):
    """(generator for the Answerer, the timing wrapper, words saying what it is)."""
    if model == "tiny":
        try:
            from . import generation, tinymodel

            cache = config.get("BOT_CACHE_DIR")
            tinymodel.build(cache, ROOT / "knowledge" / "docs", log=lambda *a: None)
            timed = _Timed(generation.load("tiny", cache_dir=cache, adapters_dir=adapters_dir, trainable=False))
            return generation.ModelWorker(timed), timed, f"tiny model ({cache / 'tiny'}) on the model worker"
        except Exception as e:  # no torch, a failed build: measure the transport anyway, and say so
            reason = f"{type(e).__name__}: {e}"[:200]
    else:
        reason = "asked for with --model scripted"
    timed = _Timed(_Scripted())
    return timed, timed, f"FALLBACK: slow scripted generator, not the model ({reason})"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))] if ordered else 0.0


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
        from . import slack_app

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


async def _drive(server: _Server, recorder, timed, questions, concurrency: int, requests: int, timeout: float):
    import aiohttp

    from .slack_recorder import command_body, post_signed

    url = f"http://127.0.0.1:{server.port}/slack/events"
    base = {"token": "x", "team_id": "T0KB", "team_domain": "kb", "channel_id": "C0LOAD", "channel_name": "load",
            "command": "/ask", "api_app_id": "A0KBBOT"}

    def finals(r):
        return sum(1 for u in r.of("chat.update") if u.get("blocks"))

    async def ask(session, n: int, question: str):
        body = command_body({**base, "user_id": f"U{n:04d}", "user_name": f"user{n}", "text": question,
                             "trigger_id": uuid.uuid4().hex, "response_url": recorder.response_url(f"q{n}")})
        start = time.monotonic()
        status, _, seconds = await post_signed(session, url, SECRET, body)
        return {"status": status, "ms": seconds * 1000, "start": start, "end": start + seconds}

    async with aiohttp.ClientSession() as session:
        await ask(session, 0, questions[0])  # the question the model is busy with when the burst starts
        deadline = time.monotonic() + 60
        while timed.active == 0 and not timed.spans and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        busy_at_start = timed.active > 0
        gate = asyncio.Semaphore(concurrency)

        async def bounded(n):
            async with gate:
                return await ask(session, n, questions[n % len(questions)])

        t0 = time.monotonic()
        acks = await asyncio.gather(*[bounded(n) for n in range(1, requests + 1)])
        burst_s = time.monotonic() - t0
        try:
            await recorder.wait_for(lambda r: finals(r) >= requests + 1, timeout)
        except asyncio.TimeoutError:
            pass
    answered_s = time.monotonic() - t0
    return acks, busy_at_start, burst_s, answered_s, finals(recorder)


def run(concurrency: int = 20, requests: int = 20, *, model: str = "tiny", new_tokens: int = 128,
        timeout: float = 300.0) -> dict:
    """Measure; returns the figures as a dict (what `--json` prints)."""
    from . import answering, commands, ingest, retrieval, store
    from .slack_recorder import Recorder

    questions = [json.loads(line)["question"] for line in
                 (ROOT / "knowledge" / "eval" / "dev.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    with tempfile.TemporaryDirectory(prefix="slack-load-") as tmp:
        db = store.connect(Path(tmp) / "bot.db")
        docs = ROOT / "knowledge" / "docs"
        ingest.index_paths(db, [docs], docs, progress=False)
        source, timed, described = _model(model, Path(tmp) / "adapters")
        answerer = answering.Answerer(db, retrieval.Searcher(db), source, max_new_tokens=new_tokens)
        answerer.generator()  # loaded before the clock starts, as `serve` does at start-up
        cmds = commands.Commands(db, answerer, adapters_dir=Path(tmp) / "adapters")

        async def main():
            recorder = await Recorder().start()
            server = _Server(cmds, recorder.api_url)
            server.start()
            await asyncio.to_thread(server.ready.wait, 60)
            if server.error:
                raise server.error
            try:
                return await _drive(server, recorder, timed, questions, concurrency, requests, timeout), recorder, server
            finally:
                await asyncio.to_thread(server.shutdown)
                await recorder.close()

        (acks, busy_at_start, burst_s, answered_s, delivered), recorder, server = asyncio.run(main())
        rows = db.execute("select count(*) from answers").fetchone()[0]
        if hasattr(source, "close"):
            source.close()
    ms = [a["ms"] for a in acks]
    overlapping = sum(any(s < a["end"] and a["start"] < e for s, e in timed.spans) for a in acks)
    return {
        "concurrency": concurrency, "requests": requests, "generator": described, "new_tokens": new_tokens,
        "ack_ms": {"p50": round(_percentile(ms, 50), 1), "p95": round(_percentile(ms, 95), 1),
                   "p99": round(_percentile(ms, 99), 1), "max": round(max(ms, default=0.0), 1)},
        "dispatch_ms": {"p50": round(_percentile(server.dispatch_ms[1:], 50), 1),
                        "p99": round(_percentile(server.dispatch_ms[1:], 99), 1)},
        "acks_ok": sum(a["status"] == 200 for a in acks),
        "acks_while_generating": overlapping,
        "model_busy_when_burst_started": busy_at_start,
        "answers_delivered": delivered - 1 if delivered else 0,  # minus the warm-up question
        "answers_recorded": rows - 1 if rows else 0,
        "streaming_updates": sum(1 for u in recorder.of("chat.update") if not u.get("blocks")),
        "generation_calls": len(timed.spans), "burst_s": round(burst_s, 2), "all_answered_s": round(answered_s, 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bot.slack_load", description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", type=int, default=20, help="requests in flight at once (default 20)")
    p.add_argument("--requests", type=int, default=20, help="signed /ask requests in all (default 20)")
    p.add_argument("--model", choices=["tiny", "scripted"], default="tiny", help="the generator (default tiny)")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens per answer at most (default 128)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the answers (default 300)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    if min(args.concurrency, args.requests) < 1 or args.requests > 1000:
        p.error("--concurrency and --requests must be at least 1, and --requests at most 1000")
    out = run(args.concurrency, args.requests, model=args.model, new_tokens=args.new_tokens, timeout=args.timeout)
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    a = out["ack_ms"]
    print(f"generator: {out['generator']}")
    print(f"{out['requests']} /ask, {out['concurrency']} at a time; model busy when the burst started: "
          f"{out['model_busy_when_burst_started']}; acks while generating: {out['acks_while_generating']}")
    print(f"ack ms: p50 {a['p50']}  p95 {a['p95']}  p99 {a['p99']}  max {a['max']}  ({out['acks_ok']} × HTTP 200); "
          f"of which bolt's dispatch: p50 {out['dispatch_ms']['p50']}  p99 {out['dispatch_ms']['p99']}")
    print(f"answers reaching the recorder: {out['answers_delivered']}/{out['requests']} in {out['all_answered_s']} s "
          f"({out['streaming_updates']} streaming updates, {out['generation_calls']} generate calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
