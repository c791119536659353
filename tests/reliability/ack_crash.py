"""Acknowledged means stored, under kill -9: signed Slack clicks against the real `serve`, killed midway.

    python tests/reliability/ack_crash.py [--runs 3] [--clicks 300] [--questions 8] [--model tiny|none] [--seed 6]

Each run starts `python -m bot serve` (Slack over HTTP, `SLACK_API_URL` at the
loopback recorder tests/slack_recorder.py, a temporary database holding the
indexed knowledge base and 50 answers to vote on), fires `--clicks` concurrent
signed requests (👍, 👎 and correction form submissions, one user each) and
`--questions` mentions (so "Thinking…" placeholders exist), and SIGKILLs serve
once a seeded share of the clicks has had its HTTP 200. It restarts serve on
the same database, resends every request that got no 200, as Slack does, with
`X-Slack-Retry-Num` (and a sample of those that did), and counts, from the
database and the recorder:

- acknowledged_lost: clicks answered 200 whose vote or correction is not stored (must be 0);
- duplicate_rows: a click stored twice (a correction row twice; votes are one per person) (must be 0);
- duplicate_replies: a click answered twice through its response URL (must be 0);
- resends_processed: resent clicks that were not stored before and are after;
- placeholders_unanswered: "Thinking…" messages whose last update is not a final answer
  or the restart's apology (must be 0).

Prints one JSON object per run and a summary line; exit 1 when any must-be-0 is not.
`tests/reliability/test_ack_crash.py` runs a small version.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))  # slack_recorder, the stand-in for Slack's servers

from slack_recorder import Recorder, event_body, interaction_body, post_signed  # noqa: E402

import feedback_burst  # noqa: E402  (tests/reliability/: the seeded answers)
from tools.serving import wait_ready  # noqa: E402

SECRET = "ack-crash-signing-secret"
FIXTURES = ROOT / "tests" / "fixtures" / "slack"
THINKING = "_Thinking…_"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def click(run: int, i: int, recorder: Recorder) -> dict:
    """Request `i`: 👍, 👎 or a correction, by user W<i>, on answer i mod 50, with its own trigger id."""
    user, answer = f"W{i:04d}", feedback_burst.answer_id(i % feedback_burst.ANSWERS)
    trigger = f"{run}.{i:05d}.ack-crash"
    if i % 3 == 2:
        form = fixture("view_submission_correction")
        form.update(trigger_id=trigger, user={"id": user, "name": user})
        form["view"].update(id=f"V{run}{i:05d}", private_metadata=answer)
        form["view"]["state"]["values"]["correction"]["text"]["value"] = f"更正 {i}：边缘计算在靠近数据源处处理数据[1]。"
        return {"kind": "correction", "user": user, "answer": answer, "body": interaction_body(form)}
    action = "vote_up" if i % 3 == 0 else "vote_down"
    payload = fixture("block_actions_vote")
    payload.update(trigger_id=trigger, user={"id": user, "name": user},
                   response_url=recorder.response_url(f"click-{run}-{i}"))
    payload["actions"][0].update(action_id=action, value=answer)
    return {"kind": "vote", "value": 1 if action == "vote_up" else -1, "user": user, "answer": answer,
            "body": interaction_body(payload), "reply": f"/response/click-{run}-{i}"}


def question(run: int, q: int) -> dict:
    envelope = fixture("event_app_mention")
    ts = f"1700001{run:01d}{q:02d}.000100"
    envelope["event_id"] = f"Ev{run}Q{q:03d}"
    envelope["event"].update(user=f"U0Q{q:03d}", ts=ts, event_ts=ts,
                             text=f"<@UKBBOT> 什么是边缘计算？它和云计算有什么区别？（问题 {q}）")
    return {"kind": "question", "body": event_body(envelope)}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tmp: Path, db: Path, api_url: str, port: int, model: str, n: int) -> subprocess.Popen:
    env = {**os.environ, "BOT_DB": str(db), "BOT_MODEL": model, "BOT_EMBEDDER": "none",
           "BOT_ADAPTERS_DIR": str(tmp / "adapters"), "PORT": str(port), "SLACK_BOT_TOKEN": "xoxb-ack-crash",
           "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": api_url, "BOT_RATE_USER": "off",
           "BOT_RATE_CHANNEL": "off", "BOT_QUEUE_MAX": "1000", "BOT_LOG_FORMAT": "text", "PYTHONPATH": str(ROOT)}
    for name in ("SLACK_APP_TOKEN", "DISCORD_TOKEN"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / f"serve-{n}.log", "w"))


async def _send(session, url: str, req: dict, retry: int | None = None) -> int | None:
    """The HTTP status, or None when the connection died (serve killed); notes the ack's time and body."""
    extra = {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"} if retry else None
    try:
        status, text, seconds = await post_signed(session, url, SECRET, req["body"],
                                                  json_body=req["kind"] == "question", extra_headers=extra)
        req.setdefault("acks", []).append((status, round(seconds * 1000), text[:120]))
        return status
    except Exception:  # noqa: BLE001 (connection reset or refused: the kill)
        return None


def _stored(db_path: Path) -> tuple[dict, Counter]:
    from bot import store

    db = store.connect(db_path)
    votes = {(r["answer_id"], r["user"]): r["value"] for r in db.query("select * from votes")}
    fixes = Counter(r["user"] for r in db.query("select user from corrections"))
    db.conn.close()
    return votes, fixes


def _is_stored(req: dict, votes: dict, fixes: Counter) -> bool:
    if req["kind"] == "vote":
        return votes.get((req["answer"], req["user"])) == req["value"]
    return fixes[req["user"]] >= 1


def _unanswered_placeholders(recorder: Recorder) -> tuple[int, int]:
    """(placeholders posted, those whose last update is missing or a streaming frame)."""
    placeholders = [c.reply.get("ts") for c in recorder.calls
                    if c.method == "chat.postMessage" and c.data.get("text") == THINKING]
    last: dict[str, dict] = {}
    for c in recorder.calls:
        if c.method == "chat.update":
            last[c.data.get("ts")] = c.data
    left = 0
    for ts in placeholders:
        final = last.get(ts)
        if final is None or (not final.get("blocks") and str(final.get("text", "")).endswith(" ▍")):
            left += 1
    return len(placeholders), left


async def one_run(run: int, clicks: int, questions: int, model: str, seed: int, resend_share: float = 0.2) -> dict:
    from bot.knowledge import ingest
    from bot import store

    rng = random.Random(seed * 1000 + run)
    with tempfile.TemporaryDirectory(prefix="ack-crash-") as tmp_name:
        tmp = Path(tmp_name)
        db_path = tmp / "bot.db"
        db = store.connect(db_path)
        ingest.index_paths(db, [ROOT / "knowledge" / "docs"], ROOT / "knowledge" / "docs", progress=False)
        db.conn.close()
        feedback_burst._seed_answers(db_path)
        recorder = await Recorder().start()
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400))
        procs: list[subprocess.Popen] = []
        try:
            port = _port()
            proc = _serve(tmp, db_path, recorder.api_url, port, model, 1)
            procs.append(proc)
            await wait_ready(session, port, proc)
            url = f"http://127.0.0.1:{port}/slack/events"
            reqs = [click(run, i, recorder) for i in range(clicks)]
            qs = [question(run, q) for q in range(questions)]
            for q in qs:  # questions first, so their placeholders are in flight when the kill comes
                q["status"] = await _send(session, url, q)
            await recorder.wait_for(lambda r: sum(c.data.get("text") == THINKING for c in r.calls
                                                  if c.method == "chat.postMessage") >= questions, 30)
            kill_after = rng.randint(clicks * 3 // 10, clicks * 6 // 10)
            acked, killed_at = [0], [None]

            async def fire(req):
                req["status"] = await _send(session, url, req)
                if req["status"] == 200:
                    acked[0] += 1
                    if acked[0] >= kill_after and killed_at[0] is None:
                        killed_at[0] = acked[0]
                        os.killpg(proc.pid, signal.SIGKILL)
            t0 = time.monotonic()
            await asyncio.gather(*(fire(r) for r in reqs))
            burst_s = time.monotonic() - t0
            proc.wait(30)
            acknowledged = [r for r in reqs if r["status"] == 200]
            votes, fixes = _stored(db_path)  # a fresh open, as the restart sees it
            lost = [r["user"] for r in acknowledged if not _is_stored(r, votes, fixes)]
            stored_before = {r["user"] for r in reqs if _is_stored(r, votes, fixes)}

            port2 = _port()
            proc2 = _serve(tmp, db_path, recorder.api_url, port2, model, 2)
            procs.append(proc2)
            try:
                await wait_ready(session, port2, proc2)
                url2 = f"http://127.0.0.1:{port2}/slack/events"
                unacked = [r for r in reqs + qs if r["status"] != 200]
                sample = rng.sample(acknowledged, int(len(acknowledged) * resend_share))
                for r in unacked + sample:
                    r["resent"] = True
                statuses = await asyncio.gather(*(_send(session, url2, r, retry=1) for r in unacked + sample))
                # Every placeholder answered: by the first process, or by the restart's recovery.
                try:
                    await recorder.wait_for(lambda r: _unanswered_placeholders(r)[1] == 0, 60 + 10 * questions)
                except (TimeoutError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(1.0)  # late duplicates, if any, would arrive now
                placeholders, unanswered = _unanswered_placeholders(recorder)
            finally:
                os.killpg(proc2.pid, signal.SIGTERM)
                proc2.wait(30)
            votes, fixes = _stored(db_path)
            logs = "".join((tmp / f"serve-{n}.log").read_text(errors="replace") for n in (1, 2))
            errors = [line for line in logs.splitlines() if line.startswith(("ERROR", "Traceback")) or "Error:" in line]
            replies = Counter(c.path for c in recorder.calls if c.method == "response_url")
            return {
                "run": run, "clicks": clicks, "questions": questions, "model": model,
                "killed_after_acks": killed_at[0], "serve_exit": proc.returncode,
                "acknowledged": len(acknowledged), "not_acknowledged": len(reqs) - len(acknowledged),
                "acknowledged_lost": len(lost),
                "stored_but_not_acknowledged": len(stored_before - {r["user"] for r in acknowledged}),
                "resent": len(unacked) + len(sample), "resent_unacknowledged": len(unacked),
                "resent_acknowledged_sample": len(sample),
                "resend_statuses": dict(Counter(str(s) for s in statuses)),
                "resends_processed": sum(1 for r in reqs if r.get("resent") and r["user"] not in stored_before
                                         and _is_stored(r, votes, fixes)),
                "missing_after_resend": sum(1 for r in reqs if not _is_stored(r, votes, fixes)),
                "duplicate_rows": sum(n - 1 for n in fixes.values() if n > 1),
                "duplicate_replies": sum(n - 1 for n in replies.values() if n > 1),
                "placeholders": placeholders, "placeholders_unanswered": unanswered,
                "recovered_by_restart": sum(1 for c in recorder.calls if c.method == "chat.update"
                                            and str(c.data.get("text", "")).startswith(("Sorry, I was restarted",
                                                                                       "抱歉，回答时我被重新启动了"))),
                "burst_s": round(burst_s, 2),
                "ack_ms_max": max((a[1] for r in reqs for a in r.get("acks", [])), default=None),
                "lost_sample": [r.get("acks") for r in acknowledged if not _is_stored(r, votes, fixes)][:3],
                "unknown_replies": sum("not one I know" in str(c.data.get("text", "")) for c in recorder.calls),
                "serve_errors": len(errors), "first_errors": sorted(set(errors))[:5],
            }
        finally:
            for p in procs:  # a run that failed half-way leaves no serve behind
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(30)
            await session.close()
            await recorder.close()


def bad(out: dict) -> bool:
    return bool(out["acknowledged_lost"] or out["duplicate_rows"] or out["duplicate_replies"]
                or out["placeholders_unanswered"] or out["missing_after_resend"] or out["killed_after_acks"] is None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--clicks", type=int, default=300)
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--model", default="tiny", help="BOT_MODEL for serve: tiny (slow answers, placeholders in "
                                                   "flight at the kill) or none (retrieval-only)")
    p.add_argument("--seed", type=int, default=6)
    args = p.parse_args(argv)
    if args.model == "tiny":
        from bot import config
        from bot import wiring

        wiring.build_tiny_model(config.Settings.load().cache_dir, ROOT / "knowledge" / "docs", log=lambda *a: None)
    results = []
    for run in range(1, args.runs + 1):
        out = asyncio.run(one_run(run, args.clicks, args.questions, args.model, args.seed))
        print(json.dumps(out, ensure_ascii=False), flush=True)
        results.append(out)
    total = {k: sum(r[k] for r in results) for k in ("acknowledged", "acknowledged_lost", "duplicate_rows",
                                                    "duplicate_replies", "resends_processed", "placeholders",
                                                    "placeholders_unanswered", "recovered_by_restart")}
    print(json.dumps({"runs": len(results), **total}, ensure_ascii=False))
    return 1 if any(bad(r) for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
