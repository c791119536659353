"""The Slack front end end to end over real HTTP on loopback.

Real: bolt serving on a port, signed requests, the answering pipeline over
the indexed knowledge base, SQLite on disk. Fake: Slack's servers (the
recorder in tests/slack_recorder.py) and the model, a scripted generator
that streams slowly like a busy one.
"""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import AsyncMock

import aiohttp
import pytest
import pytest_asyncio
import yaml

from bot.answering import condense, pipeline as answering
from bot import commands, config, messages, store
from bot.knowledge import retrieval
from bot.chat.slack import app as slack_app, render as slack_render
from bot.commands import Caller
from fakes import ScriptedGenerator
from slack_recorder import Recorder, command_body, event_body, interaction_body, post_signed, signed_headers

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "slack"
SECRET, TOKEN, ADMIN = "8f742231b10e8888abcd99yyyzzz85a5", "xoxb-test-token", "U0ADMIN"
ANSWER = "边缘计算是在靠近数据源的地方进行计算[1]，可以降低延迟。"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))




def acked(response) -> dict:
    """What a command's ack said: (status, body, seconds) from `post_signed`, the body bolt's JSON."""
    status, body, _ = response
    assert status == 200, body
    return json.loads(body)

@pytest.fixture(scope="module")
def searcher(indexed_kb):
    return retrieval.Searcher(indexed_kb.db)


class Harness(SimpleNamespace):
    async def command(self, name: str, text: str, user: str = "U0ALICE", trigger: str | None = None):
        fields = {**fixture("command_ask"), "command": name, "text": text, "user_id": user,
                  "trigger_id": trigger or uuid.uuid4().hex,
                  "response_url": self.recorder.response_url(f"{name[1:]}.{user}")}
        return await post_signed(self.session, self.url, SECRET, command_body(fields))

    async def event(self, envelope: dict, retry: int | None = None):
        extra = {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"} if retry else None
        return await post_signed(self.session, self.url, SECRET, event_body(envelope), json_body=True,
                                 extra_headers=extra)

    async def interaction(self, payload: dict):
        return await post_signed(self.session, self.url, SECRET, interaction_body(payload))

    def answers(self) -> list[dict]:
        return list(self.db.query("select * from answers order by created_at"))

    def finals(self, recorder=None) -> list[dict]:
        return [u for u in (recorder or self.recorder).of("chat.update") if u.get("blocks")]

    async def wait_finals(self, n: int, timeout: float = 15):
        await self.recorder.wait_for(lambda r: len(self.finals(r)) >= n, timeout)
        return self.finals()

    async def responses(self, n: int = 1, timeout: float = 10) -> dict[str, list[dict]]:
        """Messages posted to response URLs, by URL name ("train.U0BOB"), once there are `n` of them."""
        await self.recorder.wait_for(lambda r: r.count("response_url") >= n, timeout)
        said: dict[str, list[dict]] = {}
        for call in self.recorder.calls:
            if call.method == "response_url":
                said.setdefault(call.path.rsplit("/", 1)[1], []).append(call.data)
        return said


@pytest_asyncio.fixture
async def slack(kb_db, searcher, tmp_path):
    recorder = await Recorder().start()
    gen = ScriptedGenerator(ANSWER, delay=0.05, model_id="scripted/slow")  # takes its time: a piece every 50 ms
    answerer = answering.Answerer(kb_db, searcher, lambda: gen)
    cmds = commands.Commands(kb_db, answerer, admins={"slack": [ADMIN]}, adapters_dir=tmp_path / "adapters",
                             reindex=lambda: "Re-indexed: nothing changed.", enqueue=False,  # /train: no huey
                             settings=config.Settings.load())
    app = slack_app.build_app(cmds, token=TOKEN, signing_secret=SECRET, api_url=recorder.api_url,
                              update_every_s=0.2)
    runner = await slack_app.start_http(app, 0, host="127.0.0.1")
    session = aiohttp.ClientSession()
    url = "http://127.0.0.1:%d%s" % (runner.addresses[0][1], slack_app.EVENTS_PATH)
    yield Harness(recorder=recorder, gen=gen, cmds=cmds, db=kb_db, app=app, session=session, url=url)
    await session.close()
    await runner.cleanup()
    await recorder.close()


@pytest.mark.asyncio
async def test_ask_acks_at_once_and_streams_the_answer_with_sources_and_buttons(slack):
    status, body, seconds = await slack.command("/ask", "什么是边缘计算？")
    assert status == 200 and seconds < 1.0, (status, body, seconds)
    assert slack.answers() == []  # acked long before the answer exists (it takes about 1.5 s)

    # While the model is busy streaming that answer, a second question is acked just as fast.
    await slack.recorder.wait_for(lambda r: any(not u.get("blocks") for u in r.of("chat.update")))
    status, _, seconds = await slack.command("/ask", "What is edge computing?", user="U0BOB")
    assert status == 200 and seconds < 1.0 and slack.finals() == []

    await slack.wait_finals(2)
    rows = slack.answers()
    assert len(rows) == 2
    calls = slack.recorder.calls
    root, placeholder = [c for c in calls if c.method == "chat.postMessage"][:2]
    assert root.data["channel"] == "C0GENERAL" and "thread_ts" not in root.data
    assert root.data["text"] == "<@U0ALICE> asked: 什么是边缘计算？"
    assert placeholder.data["thread_ts"] == root.reply["ts"] and placeholder.data["text"] == slack_render.THINKING
    first = rows[0]
    assert (first["platform"], first["user"], first["channel"], first["thread"]) == \
        ("slack", "U0ALICE", "C0GENERAL", root.reply["ts"])
    assert all(c.token == TOKEN for c in calls)

    updates = [c for c in calls if c.method == "chat.update" and c.data["ts"] == placeholder.reply["ts"]]
    frames, final = updates[:-1], updates[-1]
    assert len(frames) >= 2 and all("blocks" not in f.data for f in frames)  # streamed as it was written
    texts = [f.data["text"].removesuffix(" ▍") for f in frames]
    assert all(ANSWER.startswith(t) for t in texts) and texts == sorted(texts, key=len)
    gaps = [b.at - a.at for a, b in zip(frames, frames[1:])]
    assert min(gaps) >= 0.2 * 0.9, gaps  # throttled to the update interval

    blocks = final.data["blocks"]
    assert ANSWER in blocks[0]["text"]["text"]
    citation = json.loads(first["citations"])[0]
    sources = next(b for b in blocks if b.get("block_id") == "sources")["elements"][0]["text"]
    assert slack_render.escape(f"[1] {citation['doc']} › {citation['heading']}") in sources
    buttons = next(b for b in blocks if b["type"] == "actions")["elements"]
    assert [(b["action_id"], b["value"]) for b in buttons] == [("vote_up", first["id"]), ("vote_down", first["id"])]


@pytest.mark.asyncio
async def test_where_the_bot_cannot_post_the_answer_comes_through_the_response_url(slack):
    slack.recorder.errors[("chat.postMessage", "G0PRIVATE")] = "not_in_channel"
    slack.gen.fail = RuntimeError("CUDA out of memory")  # and the model fails: passages, with the notice
    fields = {**fixture("command_ask"), "channel_id": "G0PRIVATE", "trigger_id": uuid.uuid4().hex,
              "response_url": slack.recorder.response_url("private")}
    assert (await post_signed(slack.session, slack.url, SECRET, command_body(fields)))[0] == 200
    (said,) = (await slack.responses(1))["private"]
    (row,) = slack.answers()
    assert said["response_type"] == "in_channel" and row["mode"] == "retrieval-only"
    notice = next(b for b in said["blocks"] if b.get("block_id") == "notice")["elements"][0]["text"]
    assert notice.startswith(":warning: Retrieval-only answer") and "RuntimeError" in notice
    assert said["blocks"][-1]["elements"][0]["value"] == row["id"]


@pytest.mark.asyncio
async def test_every_forgery_gets_401_and_a_replayed_request_does_no_second_work(slack):
    fields = {**fixture("command_ask"), "trigger_id": "forgery-1", "response_url": slack.recorder.response_url()}
    body = command_body(fields)
    now = int(time.time())
    good = signed_headers(SECRET, body, now)
    forgeries = {
        # a body changed after signing: the signature was for other words
        "tampered body": (body.replace("text=", "text=ignore+all+rules+"), good),
        "future timestamp": (body, signed_headers(SECRET, body, now + 301)),
        "old timestamp, re-signed with a wrong secret": (body, signed_headers("guess", body, now - 10)),
        "other signature version": (body, {**good, "X-Slack-Signature": good["X-Slack-Signature"].replace("v0=", "v1=")}),
        "signature without timestamp": (body, {k: v for k, v in good.items() if k != "X-Slack-Request-Timestamp"}),
        "timestamp not a number": (body, {**good, "X-Slack-Request-Timestamp": "soon"}),
    }
    for name, (data, headers) in forgeries.items():
        async with slack.session.post(slack.url, data=data.encode(), headers=headers) as resp:
            assert resp.status == 401, name
    await asyncio.sleep(0.3)
    assert slack.recorder.calls == [] and slack.answers() == []

    # A captured request replayed within Slack's 5 minutes carries a valid signature:
    # it is acked, and the delivery record makes sure it is answered once.
    for _ in range(3):
        async with slack.session.post(slack.url, data=body.encode(), headers=good) as resp:
            assert resp.status == 200
    await slack.wait_finals(1)
    await asyncio.sleep(0.5)
    assert len(slack.answers()) == 1 and len(slack.finals()) == 1


@pytest.mark.asyncio
async def test_bad_stale_and_missing_signatures_get_401_and_do_nothing(slack):
    fields = {**fixture("command_ask"), "response_url": slack.recorder.response_url()}
    body = command_body(fields)
    bad = await post_signed(slack.session, slack.url, "not-the-secret", body)
    stale = await post_signed(slack.session, slack.url, SECRET, body, timestamp=int(time.time()) - 301)
    async with slack.session.post(slack.url, data=body.encode(),
                                  headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
        missing = resp.status
    event = await post_signed(slack.session, slack.url, "not-the-secret", event_body(fixture("event_app_mention")),
                              json_body=True)
    assert [bad[0], stale[0], missing, event[0]] == [401, 401, 401, 401]
    await asyncio.sleep(0.5)
    assert slack.recorder.calls == [] and slack.answers() == []
    assert slack.db.execute("select count(*) from deliveries").fetchone()[0] == 0


@pytest.mark.asyncio
async def test_retried_events_and_repeated_commands_are_answered_once(slack):
    slack.gen.delay = 0.002
    envelope = fixture("event_app_mention")
    assert (await slack.event(envelope))[0] == 200
    assert (await slack.event(envelope, retry=1))[0] == 200
    await slack.wait_finals(1)
    # A storm of retries, all at once: still one answer.
    results = await asyncio.gather(*[slack.event(envelope, retry=1 + i % 3) for i in range(100)])
    assert {r[0] for r in results} == {200}
    trigger = uuid.uuid4().hex
    assert (await slack.command("/ask", "什么是融资？", trigger=trigger))[0] == 200
    assert (await slack.command("/ask", "什么是融资？", trigger=trigger))[0] == 200
    await slack.wait_finals(2)
    await asyncio.sleep(0.5)
    assert len(slack.answers()) == 2  # one for the event, one for the command
    # The mention's placeholder, and the command's root message and placeholder.
    assert slack.recorder.count("chat.postMessage") == 3


@pytest.mark.asyncio
async def test_thumbs_down_records_the_vote_opens_the_modal_and_stores_the_correction(slack):
    answer = await asyncio.to_thread(slack.cmds.ask, Caller("slack", "U0ALICE", "C0GENERAL", "1700000000.000001"),
                                     "什么是边缘计算？")
    down = fixture("block_actions_vote")
    down["actions"][0]["value"] = answer.id
    down["response_url"] = slack.recorder.response_url("down")
    status, _, seconds = await slack.interaction(down)
    assert status == 200 and seconds < 1.0
    await slack.recorder.wait_for(lambda r: r.of("views.open"))
    opened = slack.recorder.of("views.open")[0]
    assert opened["trigger_id"] == down["trigger_id"]
    assert opened["view"]["private_metadata"] == answer.id and opened["view"]["callback_id"] == "correction"
    for _ in range(100):
        if store.votes(slack.db, answer.id):
            break
        await asyncio.sleep(0.02)
    assert [(v["user"], v["value"]) for v in store.votes(slack.db, answer.id)] == [("U0ALICE", -1)]

    submit = fixture("view_submission_correction")
    submit["view"]["private_metadata"] = answer.id
    submit["view"]["state"]["values"]["correction"]["text"]["value"] = "边缘计算指在数据源附近处理数据[1]。"
    status, body, _ = await slack.interaction(submit)
    assert status == 200 and json.loads(body)["response_action"] == "update"
    assert [c["text"] for c in store.corrections(slack.db, answer.id)] == ["边缘计算指在数据源附近处理数据[1]。"]

    empty = fixture("view_submission_correction")
    empty["trigger_id"] = uuid.uuid4().hex
    empty["view"]["private_metadata"] = answer.id
    empty["view"]["state"]["values"]["correction"]["text"]["value"] = None
    status, body, _ = await slack.interaction(empty)
    reply = json.loads(body)
    assert reply["response_action"] == "errors" and "empty" in reply["errors"]["correction"]
    assert len(store.corrections(slack.db, answer.id)) == 1

    up = fixture("block_actions_vote")
    up.update(trigger_id=uuid.uuid4().hex, user={"id": "U0BOB", "name": "bob"},
              response_url=slack.recorder.response_url("up"))
    up["actions"][0].update(action_id="vote_up", value=answer.id)
    assert (await slack.interaction(up))[0] == 200
    (said,) = (await slack.responses(1))["up"]
    assert said["response_type"] == "ephemeral" and "👍" in said["text"]
    assert sorted((v["user"], v["value"]) for v in store.votes(slack.db, answer.id)) == [("U0ALICE", -1), ("U0BOB", 1)]
    assert slack.recorder.count("views.open") == 1  # 👍 opens nothing


@pytest.mark.asyncio
async def test_mentions_answer_in_their_thread_and_see_its_earlier_turns(slack):
    slack.gen.delay = 0.002
    thread = "1700000300.000001"
    first = fixture("event_app_mention")
    first["event"]["thread_ts"] = thread
    await slack.event(first)
    await slack.wait_finals(1)
    second = fixture("event_app_mention")
    second["event_id"] = "Ev0MENTION2"
    second["event"].update(ts="1700000350.000100", thread_ts=thread, text="<@UKBBOT> 它有什么好处？")
    await slack.event(second)
    await slack.wait_finals(2)
    assert [p["thread_ts"] for p in slack.recorder.of("chat.postMessage")] == [thread, thread]
    assert [r["thread"] for r in slack.answers()] == [thread, thread]
    assert [r["question"] for r in slack.answers()] == ["什么是边缘计算？", "它有什么好处？"]
    first_prompt, condense_call, second_prompt = slack.gen.seen  # the follow-up is made standalone first
    assert condense_call[0]["content"] == condense.SYSTEM
    assert not any(m["content"] == "什么是边缘计算？" for m in first_prompt)
    assert {"role": "user", "content": "什么是边缘计算？"} in second_prompt
    assert {"role": "assistant", "content": ANSWER} in second_prompt


@pytest.mark.asyncio
async def test_direct_messages_are_answered_and_bot_and_channel_messages_ignored(slack):
    slack.gen.delay = 0.002
    dm = fixture("event_message_im")
    assert (await slack.event(dm))[0] == 200
    await slack.wait_finals(1)
    (placeholder,) = slack.recorder.of("chat.postMessage")
    assert placeholder["channel"] == "D0ALICE" and placeholder["thread_ts"] == dm["event"]["ts"]
    ignored = []
    for i, change in enumerate([{"bot_id": "BKBBOT", "subtype": "bot_message"}, {"subtype": "message_changed"},
                                {"channel_type": "channel", "channel": "C0GENERAL"}]):
        envelope = fixture("event_message_im")
        envelope["event_id"] = f"Ev0IGNORED{i}"
        envelope["event"].update(change)
        ignored.append((await slack.event(envelope))[0])
    assert ignored == [200, 200, 200]  # acked, so Slack does not retry them
    await asyncio.sleep(0.4)
    assert len(slack.answers()) == 1 and slack.recorder.count("chat.postMessage") == 1


@pytest.mark.asyncio
async def test_admin_commands_are_refused_to_others_and_run_for_admins(slack):
    await slack.command("/train", "", user="U0BOB")
    await slack.command("/adapter", "promote x", user="U0BOB")
    await slack.command("/train", "", user=ADMIN)
    await slack.command("/adapter", "promote x", user=ADMIN)
    said = await slack.responses(4)
    (refused_train,), (refused_adapter,) = said["train.U0BOB"], said["adapter.U0BOB"]
    assert "admins only" in refused_train["text"] and refused_train["response_type"] == "ephemeral"
    assert "admins only" in refused_adapter["text"]
    (train,), (adapter,) = said[f"train.{ADMIN}"], said[f"adapter.{ADMIN}"]
    admin = Caller("slack", ADMIN, "C0GENERAL")
    (job,) = store.list_jobs(slack.db)  # the refused /train queued nothing
    assert train["text"].startswith(f"Training job #{job['id']} queued") and train["response_type"] == "in_channel"
    assert adapter["text"] == slack_render.escape(slack.cmds.adapter_promote(admin, "x").text)
    assert "admins only" not in train["text"] + adapter["text"]


@pytest.mark.asyncio
async def test_an_empty_ask_gets_a_clear_message_and_no_answer(slack):
    status, body, _ = await slack.command("/ask", "   ")
    assert status == 200 and "Please add a question" in body
    await asyncio.sleep(0.4)
    assert slack.answers() == [] and slack.recorder.count("chat.postMessage") == 0


@pytest.mark.asyncio
async def test_help_kb_jobs_and_feedback_reply_privately(slack):
    await slack.command("/help", "")
    await slack.command("/kb", "search 融资策略")
    await slack.command("/kb", "frobnicate")
    await slack.command("/jobs", "")
    said = {name.split(".")[0]: data for name, data in (await slack.responses(4)).items()}
    assert "/ask" in said["help"][0]["text"] and "&lt;question&gt;" in said["help"][0]["text"]
    kb = sorted(d["text"] for d in said["kb"])  # two /kb replies, in whichever order they finished
    assert kb[0].startswith("Use `/kb search") and kb[1].startswith("[1] ")
    assert all(d["response_type"] == "ephemeral" for ds in said.values() for d in ds)


@pytest.mark.asyncio
async def test_socket_mode_runs_the_same_listeners(slack):
    slack.gen.delay = 0.002
    handler = slack_app.socket_mode_handler(slack.app, "xapp-1-A0KBBOT-1-test")
    handler.client.send_socket_mode_response = AsyncMock()
    from slack_sdk.socket_mode.request import SocketModeRequest

    payload = {**fixture("command_ask"), "response_url": slack.recorder.response_url("socket")}
    await handler.handle(handler.client, SocketModeRequest(type="slash_commands", envelope_id="env-1",
                                                           payload=payload, accepts_response_payload=True))
    (sent,), _ = handler.client.send_socket_mode_response.call_args
    assert sent.envelope_id == "env-1"  # acked over the socket
    await slack.wait_finals(1)
    assert len(slack.answers()) == 1
    await handler.close_async()


def test_construction_is_offline_and_light():
    code = ("import sys, bot.chat.slack.app as s, bot.store as st, bot.commands as c, bot.config as cf;"
            "app = s.build_app(c.Commands(st.connect(':memory:'), None, settings=cf.Settings.load()), token='xoxb-1', signing_secret='x',"
            " api_url='http://127.0.0.1:9/api/');"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')], 'heavy import'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_manifest_declares_every_command_and_event():
    manifest = yaml.safe_load((ROOT / "slack-manifest.yml").read_text(encoding="utf-8"))
    declared = {c["command"]: c for c in manifest["features"]["slash_commands"]}
    assert set(declared) == {usage.split()[0] for usage, _ in commands.HELP}
    url = manifest["settings"]["event_subscriptions"]["request_url"]
    assert all(c["url"] == url for c in declared.values()) and url.endswith(slack_app.EVENTS_PATH)
    assert manifest["settings"]["interactivity"] == {"is_enabled": True, "request_url": url}
    assert set(manifest["settings"]["event_subscriptions"]["bot_events"]) == {"app_mention", "message.im"}
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    # Only the scopes the code uses: each Web API method the Slack package calls, and each event.
    # conversations.history/replies (/kb add finds the newest shared file) need the history scope of each
    # kind of conversation the bot reads: public and private channels and DMs.
    history = ("channels:history", "groups:history", "im:history")
    needs = {"chat_postMessage": "chat:write", "chat_postEphemeral": "chat:write", "chat_update": "chat:write",
             "files_upload_v2": "files:write", "views_open": None, "auth_test": None, "files_info": "files:read",
             "conversations_history": history, "conversations_replies": history}
    called = set()
    for path in (ROOT / "bot" / "chat" / "slack").glob("*.py"):
        called |= set(re.findall(r"client\.([a-z]+_[A-Za-z0-9_]+)\(", path.read_text(encoding="utf-8")))
    assert called <= set(needs), called - set(needs)
    wanted = {s for m in called if needs[m] for s in ((needs[m],) if isinstance(needs[m], str) else needs[m])}
    # files:read also covers the download of url_private_download, made with the bot token over HTTP.
    assert scopes == wanted | {"commands", "chat:write.public", "app_mentions:read", "im:history", "files:read"}, scopes
    assert manifest["settings"]["socket_mode_enabled"] is False


# -- the fine-tuning loop: /forget, /feedback review, /train, /jobs, the outbox ----

async def said_to(slack, name: str, n: int = 1, timeout: float = 10) -> list[dict]:
    """The messages posted to one response URL ("forget.U0ALICE"), once there are `n` of them."""
    url = f"/response/{name}"
    await slack.recorder.wait_for(lambda r: sum(c.path == url for c in r.calls) >= n, timeout)
    return [c.data for c in slack.recorder.calls if c.path == url]


async def asked(slack, user: str, question: str = "什么是边缘计算？") -> str:
    slack.gen.delay = 0
    answer = await asyncio.to_thread(slack.cmds.ask, Caller("slack", user, "C0GENERAL", "1700000000.000001"), question)
    return answer.id


@pytest.mark.asyncio
async def test_forget_me_deletes_the_callers_answers_and_opts_them_out(slack):
    from bot.learning import feedback

    mine, theirs = await asked(slack, "U0ALICE"), await asked(slack, "U0BOB")
    await asyncio.to_thread(slack.cmds.vote, Caller("slack", "U0BOB"), mine, 1)
    # Feedback commands are stored before the ack, and the ack carries the reply.
    usage = acked(await slack.command("/forget", ""))
    assert "`/forget me`" in usage["text"] and usage["response_type"] == "ephemeral"
    assert store.answer(slack.db, mine) is not None

    done = acked(await slack.command("/forget", "me"))
    assert done["response_type"] == "ephemeral" and done["text"].startswith("Deleted 1 question(s)")
    assert store.answer(slack.db, mine) is None and store.answer(slack.db, theirs) is not None
    assert [r["user"] for r in slack.answers()] == ["U0BOB"]
    assert feedback.is_opted_out(slack.db, "slack", "U0ALICE") and not feedback.is_opted_out(slack.db, "slack", "U0BOB")


@pytest.mark.asyncio
async def test_a_question_asked_through_slack_is_found_by_the_cli_forget(slack, tmp_path, monkeypatch, capsys):
    """One identity whichever door: the Slack door records slack:U0CAROL, and `forget slack:U0CAROL` finds it."""
    from bot import cli

    slack.gen.delay = 0
    await slack.command("/ask", "什么是边缘计算？", user="U0CAROL")
    await slack.wait_finals(1)
    assert [(r["platform"], r["user"]) for r in slack.answers()] == [("slack", "U0CAROL")]
    monkeypatch.setenv("BOT_DB", str(tmp_path / "bot.db"))
    monkeypatch.setenv("BOT_ADAPTERS_DIR", str(tmp_path / "adapters"))
    assert cli.main(["forget", "slack:U0CAROL", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"] == 1
    assert slack.answers() == []


@pytest.mark.asyncio
async def test_feedback_optout_and_review_is_for_admins_who_accept_a_pending_correction(slack):
    from bot.learning import feedback

    answer_id = await asked(slack, "U0ALICE")
    fixed = await asyncio.to_thread(slack.cmds.correct, Caller("slack", "U0ALICE"), answer_id,
                                    "边缘计算 <靠近数据源> & 低延迟")
    cid = fixed.correction.id
    assert fixed.correction.status == "pending"

    optout = acked(await slack.command("/feedback", "optout"))
    assert optout["text"].startswith("Done") and feedback.is_opted_out(slack.db, "slack", "U0ALICE")
    refused = acked(await slack.command("/feedback", "review", user="U0BOB"))
    assert "admins only" in refused["text"] and refused["response_type"] == "ephemeral"

    listing = acked(await slack.command("/feedback", "review", user=ADMIN))
    assert listing["response_type"] == "ephemeral" and f"#{cid} by slack:U0ALICE" in listing["text"]
    assert "&lt;靠近数据源&gt; &amp; 低延迟" in listing["text"]  # the user's text, escaped for mrkdwn
    accepted = acked(await slack.command("/feedback", f"review accept {cid}", user=ADMIN, trigger="Tr0ACCEPT"))
    assert accepted["text"] == f"Correction #{cid} accepted."
    assert store.correction(slack.db, cid)["status"] == "accepted"
    assert store.correction(slack.db, cid)["reviewed_by"] == f"slack:{ADMIN}"
    # The same delivery sent again (a retry): done once, no second reply, one audit row.
    status, body, _ = await slack.command("/feedback", f"review accept {cid}", user=ADMIN, trigger="Tr0ACCEPT")
    assert status == 200 and body == ""
    assert len(store.audit_log(slack.db, action="feedback accept")) == 1
    again = acked(await slack.command("/feedback", f"review reject {cid}", user=ADMIN))
    assert "already accepted" in again["text"] and store.correction(slack.db, cid)["status"] == "accepted"


@pytest.mark.asyncio
async def test_train_queues_a_job_for_the_channel_and_jobs_cancels_it(slack):
    await slack.command("/train", "", user=ADMIN)
    (queued,) = await said_to(slack, f"train.{ADMIN}")
    job_id = int(re.match(r"Training job #(\d+) queued", queued["text"])[1])
    assert queued["response_type"] == "in_channel"
    job = store.job(slack.db, job_id)
    assert (job["state"], job["requested_by"], job["platform"], job["channel"], job["thread"]) == \
        ("queued", f"slack:{ADMIN}", "slack", "C0GENERAL", "")

    await slack.command("/jobs", "")
    (listing,) = await said_to(slack, "jobs.U0ALICE")
    assert f"#{job_id} train queued" in listing["text"] and listing["response_type"] == "ephemeral"
    await slack.command("/jobs", f"cancel {job_id}")  # U0ALICE neither queued it nor is an admin
    refused = (await said_to(slack, "jobs.U0ALICE", 2))[1]
    assert "admins only" in refused["text"] and store.job(slack.db, job_id)["state"] == "queued"
    await slack.command("/jobs", "cancel nine")
    which = (await said_to(slack, "jobs.U0ALICE", 3))[2]
    assert which["text"].startswith("Which job?")

    await slack.command("/jobs", f"cancel #{job_id}", user=ADMIN)
    (cancelled,) = await said_to(slack, f"jobs.{ADMIN}")
    assert cancelled["text"] == f"Job #{job_id} cancelled." and cancelled["response_type"] == "in_channel"
    assert store.job(slack.db, job_id)["state"] == "cancelled"


@pytest.mark.asyncio
async def test_the_outbox_reaches_the_thread_that_asked_once_and_is_marked_sent(slack):
    from bot import wiring
    from bot.chat.outbox import post_outbox
    from bot.chat.slack.send import slack_sender

    job = store.create_job(slack.db, "train", f"slack:{ADMIN}", "slack", "C1", "123.456")
    first = store.post_outbox(slack.db, job, "slack", "C1", "123.456", "Job #1: v0001 promoted")
    in_channel = store.post_outbox(slack.db, job, "slack", "C1", "", "Job #1: <loss> 0.41 & falling")
    store.post_outbox(slack.db, job, "discord", "1", "1", "not for Slack")
    slack.recorder.errors[("chat.postMessage", "G0GONE")] = "channel_not_found"
    gone = store.post_outbox(slack.db, job, "slack", "G0GONE", "", "never deliverable")
    stop = asyncio.Event()
    poster = asyncio.create_task(post_outbox(wiring.StoreOutbox(slack.db), "slack", slack_sender(slack.app.client), 0.05,
                                             stop))
    try:
        await slack.recorder.wait_for(lambda r: r.count("chat.postMessage") >= 3)
        await asyncio.sleep(0.3)  # several more rounds: nothing is posted twice
    finally:
        stop.set()
        await asyncio.wait_for(poster, 2)
    posts = [c for c in slack.recorder.calls if c.method == "chat.postMessage"]
    assert [(p.data["channel"], p.data.get("thread_ts"), p.data["text"]) for p in posts] == [
        ("C1", "123.456", "Job #1: v0001 promoted"),
        ("C1", None, "Job #1: &lt;loss&gt; 0.41 &amp; falling"),
        ("G0GONE", None, "never deliverable")]
    assert all(p.token == TOKEN for p in posts)
    rows = {r["id"]: r for r in store.outbox(slack.db, job)}
    assert all(rows[i]["sent_at"] is not None for i in (first, in_channel, gone))  # the dropped one too
    assert [r["sent_at"] for r in rows.values() if r["platform"] == "discord"] == [None]


def _carded_adapter(root, version: str) -> None:
    """A version folder with a card (what the chart reads); its weights are not looked at."""
    folder = root / version
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 1}')
    (folder / "card.json").write_text(json.dumps({"verdict": "promoted", "loss_curve": [3.0, 2.0, 1.5], "metrics": {
        "golden": {"current": {"n": 2, "f1": 0.2, "nll": 3.0}, "candidate": {"n": 2, "f1": 0.4, "nll": 2.5}}}}))


@pytest.mark.asyncio
async def test_adapter_chart_is_uploaded_to_the_channel_as_a_png(slack):
    await slack.command("/adapter", "chart")
    (said,) = (await slack.responses(1)).values()
    assert "nothing to chart" in said[0]["text"] and slack.recorder.count("files.getUploadURLExternal") == 0

    _carded_adapter(slack.cmds.adapters_dir, "v0001")
    await slack.command("/adapter", "chart")
    await slack.recorder.wait_for(lambda r: r.count("files.completeUploadExternal") == 1)
    (upload,) = slack.recorder.of("upload")
    assert upload["bytes"].startswith(b"\x89PNG\r\n\x1a\n") and len(upload["bytes"]) > 10_000
    (done,) = slack.recorder.of("files.completeUploadExternal")
    assert done["channel_id"] == "C0GENERAL"


def test_a_long_answer_is_split_before_it_is_escaped_so_no_entity_is_cut():
    # Every & < > grows when escaped; split after escaping, `&amp;` was cut into `&am` | `p;` at 3000.
    text = "研发 R&D <原型> & 迭代；" * 400 + "\n" + "a&b" * 1500
    answer = answering.Answer("a1", text, [], "llm", None, None, 0.0)
    sections = [b["text"]["text"] for b in slack_render.answer_blocks(answer) if b["type"] == "section"]
    assert len(sections) > 2 and all(len(s) <= slack_render.SECTION_CHARS for s in sections)
    entity = re.compile(r"&(?!amp;|lt;|gt;)")
    assert [s for s in sections if entity.search(s) or re.search(r"&(a|am|amp|l|lt|g|gt)$", s)] == []
    # Nothing lost: a cut at a line end drops only that line end.
    assert slack_render.unescape("".join(sections)).replace("\n", "") == text.replace("\n", "")


def _section_chars(blocks) -> int:
    return sum(len(b["text"]["text"]) for b in blocks or [] if b["type"] == "section")


@pytest.mark.asyncio
async def test_an_answer_slack_refuses_as_one_message_follows_in_parts_with_its_sources_and_buttons(kb_db):
    from chat_harness import make_commands, slack_served

    long = "边缘计算 & <R&D> 在靠近数据源的地方计算[1]。\n" * 600  # about 20,000 characters
    cmds = make_commands(kb_db, ScriptedGenerator(long, piece=None))
    async with slack_served(cmds) as slack:
        # What Slack answers for a message's blocks past about 13,000 characters (msg_blocks_too_long).
        slack.recorder.refuse = lambda method, data: "msg_blocks_too_long" if method in (
            "chat.update", "chat.postMessage") and _section_chars(data.get("blocks")) > 13000 else None
        assert (await slack.command("/ask", "什么是边缘计算？"))[0] == 200
        below = slack_render.escape(messages.ANSWER_BELOW)
        await slack.recorder.wait_for(lambda r: any(u.get("text") == below for u in r.of("chat.update")))
        (row,) = slack.answers()
        posts = [p for p in slack.recorder.of("chat.postMessage") if p.get("blocks")]
        assert len(posts) >= 3 and all(_section_chars(p["blocks"]) <= 13000 for p in posts)
        text = "".join(b["text"]["text"] for p in posts for b in p["blocks"] if b["type"] == "section")
        assert slack_render.unescape(text).replace("\n", "") == row["answer"].replace("\n", "")  # nothing lost
        last = posts[-1]["blocks"]
        assert last[-1]["type"] == "actions" and row["id"] in str(last[-1]) and \
            [b.get("block_id") for b in last][0] == "sources"
        assert all(p["thread_ts"] == posts[0]["thread_ts"] for p in posts)
        # The placeholder keeps no "▍": its last word says where the answer went.
        placeholder = [u for u in slack.recorder.of("chat.update")][-1]
        assert placeholder["text"] == below
