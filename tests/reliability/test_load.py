"""Load: 200 `/ask` from 20 simulated users against the served Slack app, over real signed HTTP on loopback.

`python -m tools.slack_load` does the work, as a user runs it: the Slack app
built as `serve` builds it, the tiny model behind the model worker, the
recorder standing in for Slack's Web API and response URLs. Every request
must be acked under Slack's 3 s and end either answered (an answer with its
sources in the question's thread) or told "busy, try again in N s"; none
lost, none answered or posted twice. The accounting itself is checked on
made-up traffic first, so a lost or doubled answer cannot go unnoticed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tools import slack_load

ROOT = Path(__file__).resolve().parents[2]
USERS, REQUESTS = 20, 200


def _call(method, data, path="", reply=None):
    return SimpleNamespace(method=method, data=data, path=path, reply=reply or {})


def _answered(n: int, root_ts: str, ph_ts: str, answer_id: str) -> list:
    return [_call("chat.postMessage", {"channel": "C0LOAD0", "text": f"<@U0000> asked: q (#{n:03d})"},
                  reply={"ts": root_ts}),
            _call("chat.postMessage", {"channel": "C0LOAD0", "thread_ts": root_ts, "text": "_Thinking…_"},
                  reply={"ts": ph_ts}),
            _call("chat.update", {"ts": ph_ts, "text": "partial ▍"}),
            _call("chat.update", {"ts": ph_ts, "text": "answer", "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": "answer"}},
                {"type": "context", "block_id": "sources", "elements": [{"type": "mrkdwn", "text": "*Sources*"}]},
                {"type": "actions", "elements": [{"action_id": "vote_up", "value": answer_id}]}]})]


def test_the_accounting_finds_lost_duplicated_and_busy_requests():
    ok = {"status": 200, "body": ""}
    acks = {n: dict(ok) for n in range(1, 8)}
    acks[3] = {"status": 200, "body": "The assistant is busy, try again in 12 s."}  # told so in the ack
    users = {n: f"U{n % 2}" for n in acks}
    busy_reply = {"text": "Sorry, busy, try again in 5 s", "response_type": "ephemeral"}
    calls = (_answered(1, "1.1", "1.2", "a1") + _answered(2, "2.1", "2.2", "a2") + _answered(2, "2.3", "2.4", "a2b")
             + [_call("response_url", busy_reply, path="/response/q4"),
                _call("chat.postEphemeral", {"user": "U1", "channel": "C", "text": "busy, try again in 3 s"})]
             + _answered(6, "6.1", "6.2", "a6")[:2]  # question and placeholder posted, no answer ever
             + _answered(7, "7.1", "7.2", "a7") + _answered(7, "7.1", "7.2", "a7")[3:])  # the final posted twice
    got = slack_load.account(calls, acks, users, db_questions=["q (#001)", "q (#002)", "q (#002)", "q (#007)"])
    assert got["outcomes"] == {1: "answered", 2: "answered", 3: "busy", 4: "busy", 5: "busy", 6: "lost",
                               7: "answered"}  # 5: the ephemeral to U1, whose earliest open request it is
    assert {d["request"]: d["why"] for d in got["duplicates"]} == {
        2: "answered 2 times; question posted 2 times; recorded 2 times in the database",
        7: "answered 2 times"}
    assert got["answer_ids_posted_twice"] == ["a7"]
    assert (got["answered"], got["busy"], got["lost"], got["other"]) == (3, 3, 1, 0)
    # A request answered and told busy is a duplicate too; a refusal in the ack is "other".
    acks[1] = {"status": 200, "body": "busy, try again in 2 s"}
    acks[5] = {"status": 200, "body": "That question is 5000 characters; the limit is 4000."}
    got = slack_load.account(calls[:4], {1: acks[1], 5: acks[5]}, users)
    assert got["outcomes"] == {1: "answered", 5: "other"}
    assert got["duplicates"] == [{"request": 1, "why": "answered and busy"}]


# As configured (BOT_RATE_USER, BOT_RATE_CHANNEL, BOT_QUEUE_MAX at their defaults), a burst of 200 in one
# channel is mostly turned away; with the limits off every question reaches the model and streams.
LIMITS = {"as-configured": {}, "limits-off": {"BOT_RATE_USER": "off", "BOT_RATE_CHANNEL": "off",
                                              "BOT_QUEUE_MAX": "1000"}}


@pytest.mark.parametrize("limits", list(LIMITS))
def test_200_asks_from_20_users_are_each_acked_in_time_and_answered_or_told_busy_once(limits, tiny_model_dir,
                                                                                    tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in LIMITS["limits-off"]}
    env.update({"BOT_CACHE_DIR": str(tiny_model_dir.parent), "BOT_EMBEDDER": "none", "PYTHONPATH": str(ROOT),
                **LIMITS[limits]})
    command = [sys.executable, "-m", "tools.slack_load", "--users", str(USERS), "--requests", str(REQUESTS),
               "--new-tokens", "16", "--context-budget", "300", "--timeout", "120", "--json"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.stdout.strip(), done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    print({k: v for k, v in out.items() if k != "per_request"})  # the figures, with -s

    assert out["generator"].startswith("tiny model"), out["generator"]  # the real model, not the stand-in
    assert out["model_busy_when_burst_started"] and out["acks_while_generating"] > 0
    per = out["per_request"]
    assert sorted(map(int, per)) == list(range(1, REQUESTS + 1))
    assert len({p["user"] for p in per.values()}) == USERS
    assert out["acks_ok"] == REQUESTS and out["acks_over_3s_or_failed"] == []
    assert out["ack_ms"]["max"] < 3000
    assert {p["outcome"] for p in per.values()} <= {"answered", "busy"}, \
        {n: p for n, p in per.items() if p["outcome"] not in ("answered", "busy")}
    assert out["answered"] + out["busy"] == REQUESTS and out["lost"] == 0 and out["other"] == 0
    assert out["duplicated"] == 0, out["duplicates"]
    assert out["answers_recorded"] == out["answered"]  # one stored answer per answered question, no more
    assert out["answered"] >= 1  # rate limits may turn many away, but the model serves some
    if limits == "limits-off":
        assert out["answered"] == REQUESTS and out["busy"] == 0
        assert out["streaming_updates"] >= 1 and out["generation_calls"] >= 2
    assert done.returncode == 0, done.stderr[-2000:]


def test_batched_generation_survives_concurrent_token_counting(tiny_model_dir, tmp_path):
    """Regression: under load, askers count prompt tokens on their own threads while the model worker
    encodes a padded batch; the fast tokenizer's padding setting is shared, so without the tokenizer
    lock in LocalGenerator some batches failed ("Unable to create tensor ... padding") and were
    answered one by one."""
    import threading

    from bot.llm import generation

    gen = generation.load("tiny", cache_dir=tiny_model_dir.parent, adapters_dir=tmp_path, trainable=False)
    chats = [[{"role": "user", "content": "短"}], [{"role": "user", "content": "长一些的问题，" * 60}]]
    stop, failures = threading.Event(), []

    def count():
        while not stop.is_set():
            gen.count_tokens("什么是边缘计算？" * 40)

    counters = [threading.Thread(target=count) for _ in range(4)]
    for t in counters:
        t.start()
    try:
        for _ in range(30):  # without the lock, about 4 in 10 of these failed
            try:
                gen.generate_batch([(m, 1, None) for m in chats])
            except ValueError as e:
                failures.append(str(e)[:80])
    finally:
        stop.set()
        for t in counters:
            t.join()
    assert failures == [], (len(failures), failures[0])
