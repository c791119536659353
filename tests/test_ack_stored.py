"""Acknowledged means stored, and no placeholder is left "Thinking…".

Feedback commits its delivery key in the same transaction as its work: a
delivery whose write failed before the commit (a SQLite trigger aborts it
here, as a kill or a disk error would) leaves no key, so the resend is
stored; a resend of a stored delivery writes nothing and says nothing again.
Placeholders left by a dead process are found at `serve` start and replaced
through the outbox, on Slack's recorder (chat.update of the placeholder's ts)
and Discord's (an edit of the deferred reply, or a post when its token is gone).
"""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid

import pytest

from bot.learning import feedback
from bot.answering import inflight
from bot.chat.discord.send import discord_sender
from bot.chat.outbox import post_outbox_once
from bot.ops import serve
from bot import config, store, wiring
from bot.commands import Caller
from slack_recorder import Recorder
from chat_harness import (copy_db, deliver, discord_served, make_commands, said, slack_fixture,
                          slack_served, submit)
from fakes import ScriptedGenerator

FAIL = "fail_writes"


def fail_writes(db, table: str) -> None:
    """Until `heal`, every insert into `table` aborts its transaction inside SQLite, after the delivery key."""
    with db.conn:
        db.execute(f"create trigger {FAIL}_{table} before insert on {table}"
                   f" begin select raise(abort, 'simulated failure before commit'); end")


def heal(db, table: str) -> None:
    with db.conn:
        db.execute(f"drop trigger {FAIL}_{table}")


@pytest.fixture
def cmds(indexed_kb, tmp_path):
    return make_commands(copy_db(indexed_kb.db, tmp_path / "bot.db"), ScriptedGenerator())


def _answer(cmds, user="U0ASKER") -> str:
    return cmds.ask(Caller("slack", user, "C0GENERAL", "1700000000.000001"), "什么是边缘计算？").id


def test_the_delivery_key_commits_with_the_work_or_not_at_all(cmds):
    answer_id = _answer(cmds)
    fail_writes(cmds.db, "votes")
    with pytest.raises(Exception, match="simulated failure"):
        feedback.vote(cmds.db, answer_id, "slack", "U1", 1, delivery="slack:action:T1")
    assert not store.delivered(cmds.db, "slack:action:T1") and store.votes(cmds.db, answer_id) == []
    heal(cmds.db, "votes")
    feedback.vote(cmds.db, answer_id, "slack", "U1", 1, delivery="slack:action:T1")
    assert store.delivered(cmds.db, "slack:action:T1")
    with pytest.raises(feedback.Duplicate):
        feedback.vote(cmds.db, answer_id, "slack", "U1", -1, delivery="slack:action:T1")
    assert [v["value"] for v in store.votes(cmds.db, answer_id)] == [1]  # the resend changed nothing
    # A trusted correction is stored and accepted in the one commit that holds its key.
    fixed = feedback.correct(cmds.db, answer_id, "更正", "slack", "U2", reviewers=["slack:U2"], delivery="k2")
    with pytest.raises(feedback.Duplicate):
        feedback.correct(cmds.db, answer_id, "更正", "slack", "U2", reviewers=["slack:U2"], delivery="k2")
    assert [(c["id"], c["status"]) for c in store.corrections(cmds.db, answer_id)] == [(fixed["id"], "accepted")]
    # A review that could not be made keeps no key: the same delivery, sent again, is judged again.
    assert not store.review_correction(cmds.db, fixed["id"], "rejected", "slack:A", delivery="k3")
    assert not store.delivered(cmds.db, "k3")


def _vote(answer_id: str, trigger: str, recorder, action="vote_up") -> dict:
    click = slack_fixture("block_actions_vote")
    click.update(trigger_id=trigger, response_url=recorder.response_url(trigger))
    click["actions"][0].update(action_id=action, value=answer_id)
    return click


@pytest.mark.asyncio
async def test_a_slack_vote_that_died_before_its_commit_is_stored_on_the_resend_and_only_once(cmds):
    answer_id = await asyncio.to_thread(_answer, cmds)
    async with slack_served(cmds) as slack:
        fail_writes(cmds.db, "votes")
        click = _vote(answer_id, "Tr0DIED", slack.recorder)
        assert (await slack.interaction(click))[0] == 200
        (sorry,) = await slack.said_to("Tr0DIED")
        assert "failed on my side" in sorry["text"] and store.votes(cmds.db, answer_id) == []
        heal(cmds.db, "votes")
        # Slack sends the click again (same trigger): it is processed, not taken for a duplicate.
        assert (await slack.interaction(click))[0] == 200
        thanks = (await slack.said_to("Tr0DIED", 2))[1]
        assert "👍" in thanks["text"]
        assert [(v["user"], v["value"]) for v in store.votes(cmds.db, answer_id)] == [("U0ALICE", 1)]
        # And again, after it was stored: acked, no second row, no second reply.
        assert (await slack.interaction(click))[0] == 200
        await asyncio.sleep(0.3)
        assert len(await slack.said_to("Tr0DIED", 2)) == 2
        assert len(store.votes(cmds.db, answer_id)) == 1

        # 👎: stored before the ack, the form opens after it; its resend opens no second form.
        down = _vote(answer_id, "Tr0DOWN", slack.recorder, "vote_down")
        down["user"] = {"id": "U0BOB", "name": "bob"}
        assert (await slack.interaction(down))[0] == 200
        assert ("U0BOB", -1) in {(v["user"], v["value"]) for v in store.votes(cmds.db, answer_id)}
        await slack.recorder.wait_for(lambda r: r.of("views.open"))
        assert (await slack.interaction(down))[0] == 200
        await asyncio.sleep(0.3)
        assert slack.recorder.count("views.open") == 1


@pytest.mark.asyncio
async def test_a_slack_correction_is_acknowledged_after_its_commit_and_stored_once(cmds):
    answer_id = await asyncio.to_thread(_answer, cmds)
    form = slack_fixture("view_submission_correction")
    form["trigger_id"] = uuid.uuid4().hex
    form["view"]["private_metadata"] = answer_id
    form["view"]["state"]["values"]["correction"]["text"]["value"] = "边缘计算指在数据源附近处理数据[1]。"
    async with slack_served(cmds) as slack:
        fail_writes(cmds.db, "corrections")
        status, body, _ = await slack.interaction(form)
        assert status == 200 and "failed on my side" in body and store.corrections(cmds.db, answer_id) == []
        heal(cmds.db, "corrections")
        for _ in range(2):  # the resend, then a resend of the stored one
            status, body, _ = await slack.interaction(form)
            assert status == 200 and json.loads(body)["view"]["title"]["text"] == "Thank you"
    assert len(store.corrections(cmds.db, answer_id)) == 1


@pytest.mark.asyncio
async def test_a_discord_correction_redelivered_is_stored_once_and_one_that_failed_is_stored(cmds, monkeypatch):
    answer_id = await asyncio.to_thread(_answer, cmds)
    async with discord_served(cmds, monkeypatch) as (rec, client):
        form = submit(f"kb:correct:{answer_id}", "应为：在数据源附近处理[1]。")
        fail_writes(cmds.db, "corrections")
        deliver(client, form)
        await rec.wait_for(lambda: rec.callbacks(form["id"]))
        assert store.corrections(cmds.db, answer_id) == []
        heal(cmds.db, "corrections")
        deliver(client, form)  # the first delivery stored nothing and burnt no key
        await rec.wait_for(lambda: len(rec.callbacks(form["id"])) == 2)
        deliver(client, form)  # and this one is a duplicate: no row, no reply
        await asyncio.sleep(0.3)
        texts = [said(r) for r in rec.callbacks(form["id"])]
    assert len(texts) == 2 and "went wrong" in texts[0] and texts[1].startswith("Thanks!")
    assert [c["text"] for c in store.corrections(cmds.db, answer_id)] == ["应为：在数据源附近处理[1]。"]


def _dead_owner() -> str:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return f"{socket.gethostname()}:{int(child.stdout)}:1"


def test_only_placeholders_of_processes_without_a_live_lease_are_recovered(cmds):
    me = Caller("slack", "U1", "C1", "1.1")
    dead = store.add_inflight(cmds.db, "slack", "C1", "1.1", "U1", "什么是边缘计算？", _dead_owner(), message="1.2")
    live = store.add_inflight(cmds.db, "slack", "C1", "1.1", "U1", "q", inflight.OWNER, message="1.3")
    # A live replica on another host: its heartbeat keeps its lease renewed.
    other = store.add_inflight(cmds.db, "slack", "C1", "1.1", "U1", "q", "elsewhere:1:1:a", message="1.4")
    assert store.acquire_lease(cmds.db, inflight.lease_name("elsewhere:1:1:a"), "elsewhere:1:1:a", 60)
    reused = store.add_inflight(cmds.db, "slack", "C1", "1.1", "U1", "q", inflight.OWNER.rsplit(":", 1)[0] + ":0")
    assert inflight.begin(cmds.db, me, "q") > reused
    ids = inflight.recover(cmds.db, cmds.answerer.searcher)
    rows = {r["update_message"]: r for r in store.outbox(cmds.db)}
    assert len(ids) == 2 and set(rows) == {"1.2", None}  # the dead one, and our pid in another process
    assert rows["1.2"]["text"].startswith(inflight.RESTARTED_ZH) and "[1]" in rows["1.2"]["text"]
    assert {r["id"] for r in store.inflight(cmds.db)} >= {live, other} and dead not in {
        r["id"] for r in store.inflight(cmds.db)}
    assert inflight.recover(cmds.db, cmds.answerer.searcher) == []  # done once
    # The other host's replica dies: once its lease expires, any live replica finishes its placeholder.
    cmds.db.execute("update leases set expires_at = ? where owner = ?", [time.time() - 1, "elsewhere:1:1:a"])
    (late,) = inflight.recover(cmds.db, cmds.answerer.searcher)
    assert {r["id"]: r["update_message"] for r in store.outbox(cmds.db)}[late] == "1.4"
    assert other not in {r["id"] for r in store.inflight(cmds.db)} and live in {r["id"] for r in store.inflight(cmds.db)}
    # /forget me takes a person's questions in flight with the rest.
    cmds.forget(Caller("slack", "U1"))
    assert store.inflight(cmds.db) == []


@pytest.mark.asyncio
async def test_serve_replaces_a_dead_processes_thinking_placeholder_with_the_retrieval_answer(
        env, cmds, tmp_path, monkeypatch):
    recorder = await Recorder().start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db_path = cmds.db._path
    for name, value in {"BOT_DB": db_path, "SLACK_BOT_TOKEN": "xoxb-serve", "PORT": str(port),
                        "SLACK_SIGNING_SECRET": "secret", "SLACK_API_URL": recorder.api_url}.items():
        monkeypatch.setenv(name, value)
    for name in ("SLACK_APP_TOKEN", "DISCORD_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    store.add_inflight(cmds.db, "slack", "C1", "1700000000.000001", "U1", "What is edge computing?",
                       _dead_owner(), message="1700000000.000009")
    stop = asyncio.Event()
    task = asyncio.create_task(serve.main_async(config.Settings.load(), stop, outbox_every_s=0.05))
    try:
        (update,) = await recorder.wait_for(lambda r: r.of("chat.update"))
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await recorder.close()
    assert (update["channel"], update["ts"]) == ("C1", "1700000000.000009")
    assert update["text"].startswith("Sorry, I was restarted") and "[1]" in update["text"]
    assert recorder.count("chat.postMessage") == 0 and store.inflight(cmds.db) == []


@pytest.mark.asyncio
async def test_a_running_serve_finishes_a_replica_on_another_host_once_its_lease_expires(env, cmds, monkeypatch):
    recorder = await Recorder().start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"BOT_DB": cmds.db._path, "SLACK_BOT_TOKEN": "xoxb-serve", "PORT": str(port),
                        "SLACK_SIGNING_SECRET": "secret", "SLACK_API_URL": recorder.api_url,
                        "BOT_LEASE_TTL": "0.5"}.items():
        monkeypatch.setenv(name, value)
    for name in ("SLACK_APP_TOKEN", "DISCORD_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    other = "gpu-host-7:41:99:deadbeef"  # a replica elsewhere, answering: its heartbeat holds its lease
    assert store.acquire_lease(cmds.db, inflight.lease_name(other), other, 60)
    store.add_inflight(cmds.db, "slack", "C1", "1700000000.000001", "U1", "What is edge computing?", other,
                       message="1700000000.000009")
    stop = asyncio.Event()
    task = asyncio.create_task(serve.main_async(config.Settings.load(), stop, outbox_every_s=0.05))
    try:
        await asyncio.sleep(1.5)  # start-up recovery and two periodic rounds: a live replica is left alone
        assert recorder.count("chat.update") == 0 and len(store.inflight(cmds.db)) == 1
        assert store.lease(cmds.db, inflight.lease_name())["live"]  # this serve holds its own lease
        cmds.db.execute("update leases set expires_at = ? where owner = ?", [time.time() - 1, other])  # it died
        (update,) = await recorder.wait_for(lambda r: r.of("chat.update"), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await recorder.close()
    assert (update["channel"], update["ts"]) == ("C1", "1700000000.000009")
    assert update["text"].startswith("Sorry, I was restarted") and store.inflight(cmds.db) == []
    assert store.lease(cmds.db, inflight.lease_name()) is None  # released at stop: its answers are others' now


@pytest.mark.asyncio
async def test_discord_recovery_edits_the_deferred_reply_or_posts_when_its_token_expired(cmds, monkeypatch):
    from discord_recorder import APP_ID

    async with discord_served(cmds, monkeypatch) as (rec, client):
        rec.expired.add("gone-token")
        for token in ("live-token", "gone-token"):
            store.add_inflight(cmds.db, "discord", "1300000000000000200", "1300000000000000200", "42",
                               "什么是边缘计算？", _dead_owner(), interaction=f"{APP_ID}/{token}")
        inflight.recover(cmds.db, cmds.answerer.searcher)
        assert await post_outbox_once(wiring.StoreOutbox(cmds.db), "discord", discord_sender(client), "test") == 2
    edits = [r for r in rec.requests if r.method == "PATCH"]
    posts = rec.find("POST", r"/channels/1300000000000000200/messages")
    assert [r.path for r in edits] == [f"/webhooks/{APP_ID}/live-token/messages/@original",
                                       f"/webhooks/{APP_ID}/gone-token/messages/@original"]
    assert len(posts) == 1 and said(posts[0]).startswith(inflight.RESTARTED_ZH)
    assert said(edits[0]).startswith(inflight.RESTARTED_ZH)


class WriteLock:
    """Another connection holding the database's write lock: a real slow database."""

    def __init__(self, path):
        import sqlite3

        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc):
        self.conn.execute("ROLLBACK")
        self.conn.close()


@pytest.mark.asyncio
async def test_feedback_not_stored_within_slacks_3_s_is_not_acknowledged_then_lands_once(cmds):
    answer_id = await asyncio.to_thread(_answer, cmds)
    form = slack_fixture("view_submission_correction")
    form["view"].update(id="V0SLOW", private_metadata=answer_id)
    form["view"]["state"]["values"]["correction"]["text"]["value"] = "应为：在数据源附近处理[1]。"
    async with slack_served(cmds) as slack:
        with WriteLock(cmds.db._path):
            vote = asyncio.create_task(slack.interaction(_vote(answer_id, "Tr0SLOW", slack.recorder)))
            fix = asyncio.create_task(slack.interaction(form))
            await asyncio.sleep(3.5)  # past Slack's 3 s: bolt hands both to the catch-all listeners
        status, _, seconds = await vote
        # Held past 3 s; an ack that comes at all comes after the commit (bolt shares one `ack` between
        # the vote's listener and the catch-all it was handed to, so the vote's own late ack answers).
        assert seconds > 3.0 and (status != 200 or store.votes(cmds.db, answer_id))
        fix_status, _, _ = await fix
        assert fix_status != 200  # not acknowledged (no catch-all acks it): Slack shows the person an error
        for _ in range(100):  # the commits went on once the lock was free
            if store.votes(cmds.db, answer_id) and store.corrections(cmds.db, answer_id):
                break
            await asyncio.sleep(0.05)
        assert [v["user"] for v in store.votes(cmds.db, answer_id)] == ["U0ALICE"]
        assert not any("not one I know" in str(c.data.get("text", "")) for c in slack.recorder.calls)
        # The person submits the same form again (a new trigger id): stored once, thanked.
        form["trigger_id"] = uuid.uuid4().hex
        status, body, _ = await slack.interaction(form)
        assert status == 200 and "Already saved" in body
    assert len(store.corrections(cmds.db, answer_id)) == 1
