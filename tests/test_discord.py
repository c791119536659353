"""The Discord front end, against a recorder standing in for Discord's servers.

Discord's REST API and gateway are the only fakes (tests/discord_recorder.py,
payloads from tests/fixtures/discord). The command layer, the answering
pipeline, retrieval and SQLite are real; a scripted generator stands in for
the model, as in test_answering.py.
"""
from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import AsyncMock

import discord
import pytest
import pytest_asyncio
import yarl
from discord.gateway import DiscordWebSocket

from bot.answering import pipeline as answering
from bot import commands, config, store
from bot.chat.discord import app as discord_app
from bot.knowledge import retrieval
from bot.chat.discord.render import CITATION
from discord_recorder import APP_ID, Recorder, fixture
from fakes import ScriptedGenerator

TOKEN = "MTMwMDAwMDAwMDAwMDAwMDAwMQ.test.token"
GUILD, CHANNEL, THREAD, DM = "1300000000000000100", "1300000000000000200", "1300000000000000300", "1300000000000000700"
USER, ADMIN_USER, ADMIN_ROLE, TEAM_ROLE = ("1300000000000000400", "1300000000000000401",
                                           "1300000000000000500", "1300000000000000600")
EDGE = "边缘计算是在靠近数据源的地方进行计算[1]，可降低延迟[2]。"
_ids = itertools.count(1310000000000001000)


def scripted(*replies) -> ScriptedGenerator:
    """The model: replies with scripted texts in order (EDGE when given none), all at once (nothing streams)."""
    return ScriptedGenerator(*(replies or (EDGE,)), piece=None, adapter="v0001")


def _no_ws(text: str) -> str:
    return re.sub(r"\s", "", text)


# -- unit: the command callbacks with a fake interaction -----------------------

@pytest.fixture
def db_path(indexed_kb, tmp_path):
    """A private copy of the indexed knowledge base (the session's copy stays read-only)."""
    path = tmp_path / "bot.db"
    dst = sqlite3.connect(path)
    indexed_kb.db.conn.backup(dst)
    dst.close()
    return path


def make_commands(db_path, gen) -> commands.Commands:
    db = store.connect(db_path)
    return commands.Commands(db, answering.Answerer(db, retrieval.Searcher(db), lambda: gen),
                             admins={"discord": [ADMIN_USER, ADMIN_ROLE]}, adapters_dir=db_path.parent / "adapters",
                             reindex=lambda: "Re-indexed: nothing changed.", enqueue=False,  # /train: no huey
                             settings=config.Settings.load())


def fake_interaction(client, user=42, channel=7):
    return SimpleNamespace(id=next(_ids), client=client, user=SimpleNamespace(id=user),
                           application_id=int(APP_ID), token="interaction-token",
                           channel=SimpleNamespace(id=channel), channel_id=channel,
                           response=AsyncMock(), followup=AsyncMock())


@pytest.mark.asyncio
async def test_ask_callback_defers_then_follows_up_with_buttons(db_path):
    client = discord_app.build_client(make_commands(db_path, scripted(EDGE)))
    inter = fake_interaction(client)
    await client.tree.get_command("ask").callback(inter, question="什么是边缘计算？")
    inter.response.defer.assert_awaited_once_with(thinking=True)
    (content,), kw = inter.followup.send.await_args
    row = client.kb.db.execute("select id, platform, user, channel, thread from answers").fetchall()
    assert len(row) == 1 and row[0][1:] == ("discord", "42", "7", "7")
    assert "边缘计算是在靠近数据源的地方进行计算[1]" in content and "[1] " in content
    assert [b.custom_id for b in kw["view"].children] == [f"kb:vote:up:{row[0][0]}", f"kb:vote:down:{row[0][0]}"]
    assert store.inflight(client.kb.db) == []  # the answer landed: nothing left for a restart to finish


@pytest.mark.asyncio
async def test_ask_callback_refuses_an_empty_question_without_answering(db_path):
    client = discord_app.build_client(make_commands(db_path, scripted()))
    inter = fake_interaction(client)
    await client.tree.get_command("ask").callback(inter, question="   ")
    (text,), kw = inter.response.send_message.await_args
    assert "Please add a question" in text and kw == {"ephemeral": True}
    inter.response.defer.assert_not_awaited()
    assert client.kb.db.execute("select count(*) from answers").fetchone()[0] == 0


def test_the_package_imports_no_sdk_and_the_transport_no_model_library():
    code = ("import sys, bot, bot.commands; assert 'discord' not in sys.modules, 'discord'\n"
            "import bot.chat.discord.app; bad = {'torch', 'transformers'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


# -- over HTTP: discord.py against the recorder --------------------------------

@pytest_asyncio.fixture
async def rec(monkeypatch, caplog):
    """The recorder, with discord.py pointed at it; a test fails on any error the bot logs."""
    caplog.set_level(logging.ERROR)
    recorder = Recorder()
    base = await recorder.start()
    monkeypatch.setattr(discord.http.Route, "BASE", base + "/api/v10")
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(base.replace("http", "ws", 1) + "/gateway"))
    yield recorder
    await recorder.stop()
    assert not recorder.unhandled, recorder.unhandled
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest_asyncio.fixture
async def bot(rec, db_path):
    """Builds logged-in clients (REST only) over the same database; each call is a fresh process's client."""
    made = []

    async def make(gen=None):
        client = discord_app.build_client(make_commands(db_path, gen or scripted()))
        await client.login(TOKEN)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def new_payload(name: str) -> dict:
    """A fixture payload with a fresh interaction id and token, as every real delivery has."""
    payload = fixture(name)
    payload["id"] = str(next(_ids))
    payload["token"] = f"token-{payload['id']}"
    return payload


def slash(name: str, options=(), *, user=USER, roles=(TEAM_ROLE,)) -> dict:
    payload = new_payload("interaction_command.json")
    payload["data"].update(name=name, options=list(options))
    payload["member"]["user"]["id"], payload["member"]["roles"] = user, list(roles)
    return payload


def ask(question: str, **kw) -> dict:
    return slash("ask", [{"name": "question", "type": 3, "value": question}], **kw)


def click(message: dict, value: str) -> dict:
    """A click on the 👍 or 👎 of a message the bot posted (the recorded follow-up body)."""
    payload = new_payload("interaction_component.json")
    payload["message"].update(content=message["content"], components=message["components"])
    ids = [b["custom_id"] for row in message["components"] for b in row["components"]]
    payload["data"]["custom_id"] = next(i for i in ids if i.startswith(f"kb:vote:{value}:"))
    return payload


def submit(modal: dict, value: str) -> dict:
    """The submission of a modal the bot opened (the recorded type-9 callback's data)."""
    payload = new_payload("interaction_modal_submit.json")
    field = modal["components"][0]["component"]["custom_id"]
    payload["data"] = {"custom_id": modal["custom_id"], "components": [
        {"type": 18, "id": 1, "component": {"type": 4, "id": 2, "custom_id": field, "value": value}}]}
    return payload


def deliver(client, payload: dict, event: str = "INTERACTION_CREATE") -> None:
    """Hand a gateway event to the client exactly as its websocket reader does."""
    client._connection.parsers[event](copy.deepcopy(payload))


async def answered(rec, payload, n: int = 1):
    """The interaction's callbacks and follow-ups once it has `n` of them in all."""
    await rec.wait_for(lambda: len(rec.callbacks(payload["id"])) + len(rec.followups(payload["token"])) >= n)
    return rec.callbacks(payload["id"]), rec.followups(payload["token"])


def ephemeral(request) -> bool:
    body = request.json.get("data", request.json) if "type" in request.json else request.json
    return bool((body.get("flags") or 0) & 64)


@pytest.mark.asyncio
async def test_ask_is_deferred_then_followed_up_with_answer_sources_and_buttons(rec, bot):
    client = await bot(scripted(EDGE))
    payload = ask("什么是边缘计算？")
    deliver(client, payload)
    callbacks, followups = await answered(rec, payload, 2)
    assert [c.json["type"] for c in callbacks] == [5] and not ephemeral(callbacks[0])
    assert rec.requests.index(callbacks[0]) < rec.requests.index(followups[0])
    (row,) = store.recent_answers(client.kb.db, "discord", USER)
    answer = store.answer(client.kb.db, row["id"])
    assert (answer["channel"], answer["thread"]) == (CHANNEL, CHANNEL)
    content = followups[0].json["content"]
    assert content.startswith("边缘计算是在靠近数据源的地方进行计算[1]，可降低延迟[2]。")
    for c in answer["citations"]:
        assert f"[{c['n']}] {c['doc']} › {c['heading']}" in content
    buttons = followups[0].json["components"][0]["components"]
    assert [b["custom_id"] for b in buttons] == [f"kb:vote:up:{row['id']}", f"kb:vote:down:{row['id']}"]
    assert [b["emoji"]["name"] for b in buttons] == ["👍", "👎"]


@pytest.mark.asyncio
async def test_a_long_answer_arrives_in_several_messages_with_no_citation_split(rec, bot):
    long = "".join(f"第{i}点：边缘计算把计算放在靠近数据源的地方，可以降低延迟并节省带宽[{i % 3 + 1}]。"
                   for i in range(120))
    assert len(long) > 4000
    client = await bot(scripted(long))
    payload = ask("边缘计算有哪些好处？")
    deliver(client, payload)
    await rec.wait_for(lambda: any(f.json.get("components") for f in rec.followups(payload["token"])))
    followups = [f.json for f in rec.followups(payload["token"])]
    assert len(followups) >= 3 and all(len(f["content"]) <= 2000 for f in followups)
    assert [bool(f.get("components")) for f in followups] == [False] * (len(followups) - 1) + [True]
    for f in followups:
        assert not re.search(r"\[\d*$", f["content"]) and not re.match(r"^\d*\]", f["content"])
    joined = "\n".join(f["content"] for f in followups)
    assert _no_ws(joined).startswith(_no_ws(long))
    assert len(CITATION.findall(joined)) >= len(CITATION.findall(long))


@pytest.mark.asyncio
async def test_buttons_and_the_correction_form_work_after_a_restart(rec, bot):
    before = await bot(scripted(EDGE))
    payload = ask("什么是边缘计算？")
    deliver(before, payload)
    _, (message,) = await answered(rec, payload, 2)
    answer_id = re.search(r"kb:vote:up:([0-9a-f]+)", str(message.json["components"]))[1]
    await before.close()

    after = await bot()  # a new process: new client, new command layer, same database
    up = click(message.json, "up")
    deliver(after, up)
    (thanks,), _ = await answered(rec, up)
    assert thanks.json["type"] == 4 and ephemeral(thanks) and "Thanks" in thanks.json["data"]["content"]
    assert [(v["user"], v["value"]) for v in store.votes(after.kb.db, answer_id)] == [(USER, 1)]

    down = click(message.json, "down")
    deliver(after, down)
    (modal,), _ = await answered(rec, down)
    assert modal.json["type"] == 9 and modal.json["data"]["custom_id"] == f"kb:correct:{answer_id}"
    assert [(v["user"], v["value"]) for v in store.votes(after.kb.db, answer_id)] == [(USER, -1)]

    form = submit(modal.json["data"], "边缘计算是把计算放在靠近数据产生的地方（见术语表）。")
    deliver(after, form)
    (saved,), _ = await answered(rec, form)
    assert saved.json["type"] == 4 and ephemeral(saved) and "correction is saved" in saved.json["data"]["content"]
    await asyncio.sleep(0.1)  # the live modal and the fallback both saw it: still one reply, one row
    assert len(rec.callbacks(form["id"])) == 1
    (row,) = store.corrections(after.kb.db, answer_id)
    assert (row["user"], row["platform"], row["status"]) == (USER, "discord", "pending")
    assert row["text"].startswith("边缘计算是把计算放在")

    await after.close()
    again = await bot()  # a form opened before a restart and submitted after it
    late = submit(modal.json["data"], "补充：也叫雾计算。")
    deliver(again, late)
    (saved,), _ = await answered(rec, late)
    assert "correction is saved" in saved.json["data"]["content"]
    assert [r["text"] for r in store.corrections(again.kb.db, answer_id)][-1] == "补充：也叫雾计算。"


@pytest.mark.asyncio
async def test_bad_corrections_and_unknown_answers_get_a_clear_private_message(rec, bot):
    client = await bot(scripted(EDGE))
    payload = ask("什么是边缘计算？")
    deliver(client, payload)
    _, (message,) = await answered(rec, payload, 2)
    answer_id = re.search(r"kb:vote:up:([0-9a-f]+)", str(message.json["components"]))[1]
    modal = {"custom_id": f"kb:correct:{answer_id}", "components": [{"component": {"custom_id": "correction"}}]}
    cases = [(modal, "   ", "The correction is empty"), (modal, "长" * 9000, "the limit is 8000"),
             (dict(modal, custom_id="kb:correct:abcdef123456"), "text", "no longer exists")]
    for form, value, expected in cases:
        sent = submit(form, value)
        deliver(client, sent)
        (reply,), _ = await answered(rec, sent)
        assert reply.json["type"] == 4 and ephemeral(reply) and expected in reply.json["data"]["content"]
    assert store.corrections(client.kb.db) == []
    stale = click({**message.json, "components": [{"type": 1, "components": [
        {"type": 2, "style": 2, "custom_id": "kb:vote:down:abcdef123456", "emoji": {"name": "👎"}}]}]}, "down")
    deliver(client, stale)
    (reply,), _ = await answered(rec, stale)
    assert reply.json["type"] == 4 and ephemeral(reply) and "no longer exists" in reply.json["data"]["content"]


@pytest.mark.asyncio
@pytest.mark.parametrize("user, roles, admin", [(USER, (TEAM_ROLE,), False), (ADMIN_USER, (), True),
                                                (USER, (TEAM_ROLE, ADMIN_ROLE), True)])
async def test_train_is_refused_privately_to_others_and_run_for_admins(rec, bot, user, roles, admin):
    client = await bot()
    payload = slash("train", user=user, roles=roles)
    deliver(client, payload)
    (deferred,), (reply,) = await answered(rec, payload, 2)
    assert deferred.json["type"] == 5 and not ephemeral(deferred)
    deleted = rec.find("DELETE", rf"/webhooks/{APP_ID}/{payload['token']}/messages/@original")
    if admin:
        job_id = int(re.match(r"Training job #(\d+) queued", reply.json["content"])[1])
        assert not ephemeral(reply) and not deleted
        job = store.job(client.kb.db, job_id)
        assert (job["state"], job["requested_by"], job["platform"], job["channel"], job["thread"]) == \
            ("queued", f"discord:{user}", "discord", CHANNEL, CHANNEL)
    else:
        assert "admins only" in reply.json["content"] and ephemeral(reply)
        assert deleted and rec.requests.index(deleted[0]) < rec.requests.index(reply)
        assert store.list_jobs(client.kb.db) == []


@pytest.mark.asyncio
async def test_an_empty_question_gets_a_clear_message_and_no_answer(rec, bot):
    client = await bot()
    payload = ask("   ")
    deliver(client, payload)
    (reply,), _ = await answered(rec, payload)
    assert reply.json["type"] == 4 and ephemeral(reply) and "Please add a question" in reply.json["data"]["content"]
    await asyncio.sleep(0.1)
    assert rec.followups(payload["token"]) == []
    assert client.kb.db.execute("select count(*) from answers").fetchone()[0] == 0


@pytest.mark.asyncio
async def test_a_redelivered_interaction_is_answered_once(rec, bot):
    client = await bot(scripted(EDGE, EDGE))
    payload = ask("什么是边缘计算？")
    deliver(client, payload)
    deliver(client, payload)
    await answered(rec, payload, 2)
    await asyncio.sleep(0.2)
    assert len(rec.callbacks(payload["id"])) == 1 and len(rec.followups(payload["token"])) == 1
    assert client.kb.db.execute("select count(*) from answers").fetchone()[0] == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("name, options, expected", [
    ("help", [], "/ask"), ("jobs", [], "No training jobs"),
    ("kb", [{"type": 1, "name": "search", "options": [{"type": 3, "name": "query", "value": "边缘计算"}]}], "[1] "),
    ("adapter", [{"type": 3, "name": "action", "value": "list"}], "No adapter versions"),
])
async def test_private_commands_are_deferred_and_answered_ephemerally(rec, bot, name, options, expected):
    client = await bot()
    payload = slash(name, options)
    deliver(client, payload)
    (deferred,), (reply,) = await answered(rec, payload, 2)
    assert deferred.json["type"] == 5 and ephemeral(deferred)
    assert ephemeral(reply) and expected in reply.json["content"]


@pytest.mark.asyncio
async def test_feedback_lists_recent_answers_with_their_buttons(rec, bot):
    client = await bot(scripted(EDGE, EDGE))
    for q in ("什么是边缘计算？", "边缘计算有什么好处？"):
        payload = ask(q)
        deliver(client, payload)
        await answered(rec, payload, 2)
    payload = slash("feedback")
    deliver(client, payload)
    _, (reply,) = await answered(rec, payload, 2)
    ids = [r["id"] for r in store.recent_answers(client.kb.db, "discord", USER)]
    assert ephemeral(reply) and "边缘计算有什么好处" in reply.json["content"]
    rows = [[b["custom_id"] for b in row["components"]] for row in reply.json["components"]]
    assert rows == [[f"kb:vote:up:{i}", f"kb:vote:down:{i}"] for i in ids]


# -- mentions and DMs (gateway events) -----------------------------------------

def mention(text: str, *, author_bot=False, mentions_me=True) -> dict:
    payload = fixture("message_create_mention.json")
    payload["id"] = str(next(_ids))
    payload["content"] = (f"<@{APP_ID}> " if mentions_me else "") + text
    payload["author"]["bot"] = author_bot
    if not mentions_me:
        payload["mentions"] = []
    return payload


@pytest.mark.asyncio
async def test_mentions_in_a_thread_are_answered_in_it_with_the_earlier_turns(rec, bot):
    # the follow-up costs one condense call (its standalone question) before its answer
    gen = scripted("FairScale 是分布式训练框架[1]。", "FairScale 有什么好处？", "它能提高训练效率[1]。")
    client = await bot(gen)
    deliver(client, fixture("guild_create.json"), "GUILD_CREATE")  # as the gateway sends on connect
    sent = lambda: rec.find("POST", rf"/channels/{THREAD}/messages")  # noqa: E731
    first = mention("FairScale 是什么？")
    deliver(client, first, "MESSAGE_CREATE")
    (reply,) = await rec.wait_for(sent)
    assert str(reply.json["message_reference"]["message_id"]) == first["id"]
    assert reply.json["content"].startswith("FairScale 是分布式训练框架[1]。")
    assert reply.json["components"][0]["components"][0]["custom_id"].startswith("kb:vote:up:")
    assert rec.find("POST", rf"/channels/{THREAD}/typing")
    deliver(client, mention("它有什么好处？"), "MESSAGE_CREATE")
    await rec.wait_for(lambda: len(sent()) == 2)
    second = gen.seen[2]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[1]["content"] == "FairScale 是什么？" and second[3]["content"].endswith("它有什么好处？")
    rows = client.kb.db.execute("select channel, thread, user from answers").fetchall()
    assert rows == [(CHANNEL, THREAD, USER)] * 2

    deliver(client, mention("FairScale?", author_bot=True), "MESSAGE_CREATE")
    deliver(client, mention("FairScale?", mentions_me=False), "MESSAGE_CREATE")
    await asyncio.sleep(0.2)
    assert len(sent()) == 2 and len(gen.seen) == 3
    deliver(client, mention(""), "MESSAGE_CREATE")  # a bare mention: say how to ask
    await rec.wait_for(lambda: len(sent()) == 3)
    assert "Please add a question" in sent()[-1].json["content"] and len(gen.seen) == 3


@pytest.mark.asyncio
async def test_direct_messages_are_answered(rec, bot):
    client = await bot(scripted("FairScale is a distributed training library [1]."))
    dm = fixture("message_create_dm.json")
    deliver(client, dm, "MESSAGE_CREATE")
    (reply,) = await rec.wait_for(lambda: rec.find("POST", rf"/channels/{DM}/messages"))
    assert reply.json["content"].startswith("FairScale is a distributed training library [1].")
    assert "**Sources**\n[1] " in reply.json["content"]
    assert client.kb.db.execute("select channel, thread from answers").fetchall() == [(DM, DM)]


# -- serving and registering ---------------------------------------------------

@pytest.mark.asyncio
async def test_serving_connects_to_the_gateway_answers_and_never_syncs(rec, db_path):
    client = discord_app.build_client(make_commands(db_path, scripted(EDGE)))
    task = asyncio.create_task(discord_app.start(client, TOKEN))
    try:
        await rec.wait_for(lambda: rec.identify)
        intents = discord.Intents._from_value(rec.identify["intents"])
        assert intents.guilds and intents.guild_messages and intents.dm_messages and not intents.message_content
        payload = ask("什么是边缘计算？")
        await rec.dispatch("INTERACTION_CREATE", payload)
        _, (message,) = await answered(rec, payload, 2)
        assert "kb:vote:up:" in str(message.json["components"])
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert client.is_closed()
    assert not rec.find("PUT", r"/applications/.*") and not rec.find("POST", r"/applications/.*")


@pytest.mark.asyncio
async def test_sync_commands_registers_the_tree_globally_or_to_one_guild(rec):
    names = await discord_app.sync_commands(TOKEN)
    assert names == ["ask", "kb", "feedback", "forget", "train", "jobs", "adapter", "help"]
    (put,) = rec.find("PUT", rf"/applications/{APP_ID}/commands")
    schema = {c["name"]: c for c in put.json}
    action, correction = schema["feedback"]["options"]
    assert [c["value"] for c in action["choices"]] == ["list", "optout", "optin", "review", "accept", "reject"]
    assert not action.get("required") and (correction["name"], correction["type"]) == ("correction_id", 4)
    (what,) = schema["forget"]["options"]
    assert what["required"] and [c["value"] for c in what["choices"]] == ["me"]
    (cancel,) = schema["jobs"]["options"]
    assert (cancel["name"], cancel["type"], cancel.get("required", False)) == ("cancel", 4, False)
    assert all(len(c["description"]) <= 100 and all(len(o["description"]) <= 100 for o in c.get("options", []))
               for c in put.json)
    # Within Discord's limits as written, not as discord.py cut them (it shortens past 100 with "…").
    texts = [(c["name"], c["description"]) for c in put.json] + [
        (f'{c["name"]} {o["name"]}', o["description"]) for c in put.json for o in c.get("options", [])] + [
        (f'{c["name"]} {o["name"]} {s["name"]}', s["description"])
        for c in put.json for o in c.get("options", []) for s in o.get("options", [])]
    assert [name for name, text in texts if not 1 <= len(text) <= 100 or text.endswith("…")] == []
    assert all(re.fullmatch(r"[-_a-z0-9]{1,32}", name) for name, _ in texts for name in name.split())
    assert all(len(o.get("choices", [])) <= 25 and all(len(ch["name"]) <= 100 for ch in o.get("choices", []))
               for c in put.json for o in c.get("options", []))
    assert [o["name"] for o in schema["kb"]["options"]] == ["search", "reindex", "add", "list", "remove"]
    add = next(o for o in schema["kb"]["options"] if o["name"] == "add")
    assert [(o["name"], o["type"], o["required"]) for o in add["options"]] == [("file", 11, True)]  # an attachment
    action, version = schema["adapter"]["options"]
    assert [c["value"] for c in action["choices"]] == ["list", "chart", "promote", "rollback"] and action["required"]
    assert version["name"] == "version" and not version.get("required")
    assert await discord_app.sync_commands(TOKEN, guild_id=int(GUILD)) == names
    assert rec.find("PUT", rf"/applications/{APP_ID}/guilds/{GUILD}/commands")
    assert not rec.find("GET", r"/gateway.*")


# -- the fine-tuning loop: /forget, /feedback review, /jobs cancel, the outbox --------

def opt(name: str, value, kind: int = 3) -> dict:
    return {"name": name, "type": kind, "value": value}


async def ask_and_wait(rec, client, question="什么是边缘计算？", **kw) -> str:
    payload = ask(question, **kw)
    deliver(client, payload)
    await answered(rec, payload, 2)
    return store.recent_answers(client.kb.db, "discord", kw.get("user", USER))[0]["id"]


async def reply_to(rec, client, payload) -> tuple:
    deliver(client, payload)
    (deferred,), (reply,) = await answered(rec, payload, 2)
    return deferred, reply


async def stored_reply(rec, client, payload) -> str:
    """A feedback command's one response: acknowledged means stored, so the first response waits for the
    commit and is the result itself (type 4), not a deferral; its text is returned."""
    deliver(client, payload)
    (reply,), followups = await answered(rec, payload, 1)
    assert reply.json["type"] == 4 and ephemeral(reply) and not followups, reply.json
    return reply.json["data"]["content"]


@pytest.mark.asyncio
async def test_forget_me_deletes_the_callers_answers_and_opts_them_out(rec, bot):
    from bot.learning import feedback

    client = await bot(scripted(EDGE, EDGE))
    mine = await ask_and_wait(rec, client)
    theirs = await ask_and_wait(rec, client, user=ADMIN_USER, roles=())
    reply = await stored_reply(rec, client, slash("forget", [opt("what", "me")]))
    assert reply.startswith("Deleted 1 question(s)")
    assert store.answer(client.kb.db, mine) is None and store.answer(client.kb.db, theirs) is not None
    assert feedback.is_opted_out(client.kb.db, "discord", USER)
    assert not feedback.is_opted_out(client.kb.db, "discord", ADMIN_USER)


@pytest.mark.asyncio
async def test_a_question_asked_through_discord_is_found_by_the_cli_forget(rec, bot, db_path, monkeypatch, capsys):
    """One identity whichever door: the Discord door records discord:USER, and `forget discord:USER` finds it."""
    import json

    from bot import cli

    client = await bot(scripted(EDGE))
    mine = await ask_and_wait(rec, client)
    assert (store.answer(client.kb.db, mine)["platform"], store.answer(client.kb.db, mine)["user"]) == ("discord", USER)
    monkeypatch.setenv("BOT_DB", str(db_path))
    monkeypatch.setenv("BOT_ADAPTERS_DIR", str(db_path.parent / "adapters"))
    assert cli.main(["forget", f"discord:{USER}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"] == 1
    assert store.answer(client.kb.db, mine) is None


@pytest.mark.asyncio
async def test_feedback_review_is_refused_to_others_and_accepts_for_admins(rec, bot):
    client = await bot(scripted(EDGE))
    answer_id = await ask_and_wait(rec, client)
    fixed = client.kb.correct(commands.Caller("discord", USER), answer_id, "边缘计算：靠近数据源处理数据。")
    cid = fixed.correction.id

    refused = await stored_reply(rec, client, slash("feedback", [opt("action", "review")]))
    assert "admins only" in refused
    listing = await stored_reply(rec, client, slash("feedback", [opt("action", "review")], roles=(ADMIN_ROLE,)))
    assert f"#{cid} by discord:{USER}" in listing
    which = await stored_reply(rec, client, slash("feedback", [opt("action", "accept")], user=ADMIN_USER, roles=()))
    assert "Which correction?" in which and store.correction(client.kb.db, cid)["status"] == "pending"
    accepted = await stored_reply(rec, client, slash("feedback", [opt("action", "accept"), opt("correction_id", cid, 4)],
                                                     user=ADMIN_USER, roles=()))
    assert accepted == f"Correction #{cid} accepted."
    assert store.correction(client.kb.db, cid)["status"] == "accepted"
    optout = await stored_reply(rec, client, slash("feedback", [opt("action", "optout")]))
    assert optout.startswith("Done") and ("discord", USER) in store.opted_out(client.kb.db)


@pytest.mark.asyncio
async def test_a_feedback_command_slower_than_discords_window_is_deferred_and_says_done_after_its_commit(
        rec, bot, monkeypatch):
    import time

    client = await bot(scripted(EDGE))
    real = client.kb.opt_out

    def slow_opt_out(caller, **kw):  # a database under load: the commit takes longer than the wait
        time.sleep(discord_app.STORED_REPLY_WAIT_S + 3)
        return real(caller, **kw)

    monkeypatch.setattr(client.kb, "opt_out", slow_opt_out)
    payload = slash("feedback", [opt("action", "optout")])
    deliver(client, payload)
    (deferred,), _ = await answered(rec, payload, 1)
    assert deferred.json["type"] == 5 and ephemeral(deferred)  # "thinking": nothing says done yet
    assert ("discord", USER) not in store.opted_out(client.kb.db)
    _, (done,) = await answered(rec, payload, 2)
    assert done.json["content"].startswith("Done") and ("discord", USER) in store.opted_out(client.kb.db)


@pytest.mark.asyncio
async def test_jobs_cancel_cancels_a_queued_job_for_its_requester_or_an_admin(rec, bot):
    from bot.learning import jobs

    client = await bot()
    theirs = jobs.submit(client.kb.db, f"discord:{ADMIN_USER}", "discord", CHANNEL, THREAD, enqueue=False)
    mine = jobs.submit(client.kb.db, f"discord:{USER}", "discord", CHANNEL, CHANNEL, enqueue=False)

    deferred, refused = await reply_to(rec, client, slash("jobs", [opt("cancel", theirs, 4)]))
    assert not ephemeral(deferred) and ephemeral(refused) and "admins only" in refused.json["content"]
    assert store.job(client.kb.db, theirs)["state"] == "queued"
    _, done = await reply_to(rec, client, slash("jobs", [opt("cancel", mine, 4)]))
    assert not ephemeral(done) and done.json["content"] == f"Job #{mine} cancelled."
    _, done = await reply_to(rec, client, slash("jobs", [opt("cancel", theirs, 4)], roles=(ADMIN_ROLE,)))
    assert done.json["content"] == f"Job #{theirs} cancelled."
    assert [store.job(client.kb.db, j)["state"] for j in (theirs, mine)] == ["cancelled", "cancelled"]
    _, again = await reply_to(rec, client, slash("jobs", [opt("cancel", mine, 4)]))
    assert ephemeral(again) and "already finished (cancelled)" in again.json["content"]
    _, missing = await reply_to(rec, client, slash("jobs", [opt("cancel", 999, 4)]))
    assert "no job #999" in missing.json["content"]
    _, listing = await reply_to(rec, client, slash("jobs"))
    assert ephemeral(listing) and f"#{mine} train cancelled by discord:{USER}" in listing.json["content"]


@pytest.mark.asyncio
async def test_the_outbox_reaches_the_thread_that_asked_once_split_at_2000(rec, bot):
    from bot import wiring
    from bot.chat.discord.send import discord_sender
    from bot.chat.outbox import post_outbox

    client = await bot()
    db = client.kb.db
    job = store.create_job(db, "train", f"discord:{ADMIN_USER}", "discord", CHANNEL, THREAD)
    long = "\n".join(f"Job #{job}: step {i}/200, loss 0.{i:03d}" for i in range(120))
    assert len(long) > 2000
    ids = [store.post_outbox(db, job, "discord", CHANNEL, THREAD, "Job #1: v0001 promoted"),
           store.post_outbox(db, job, "discord", DM, DM, long),
           store.post_outbox(db, job, "discord", CHANNEL, "", "to the channel itself"),
           store.post_outbox(db, job, "discord", "general", "", "not an id: dropped")]
    store.post_outbox(db, job, "slack", "C1", "", "not for Discord")
    stop = asyncio.Event()
    poster = asyncio.create_task(post_outbox(wiring.StoreOutbox(db), "discord", discord_sender(client), 0.05, stop,
                                             ready=lambda: client.user is not None))
    sent = lambda: rec.find("POST", r"/channels/\d+/messages")  # noqa: E731
    try:
        await rec.wait_for(lambda: len(sent()) >= 4)
        await asyncio.sleep(0.3)  # several more rounds: nothing is posted twice
    finally:
        stop.set()
        await asyncio.wait_for(poster, 2)
    assert [r.path.split("/")[2] for r in sent()] == [THREAD, DM, DM, CHANNEL]  # a thread's id is its channel's
    assert [sent()[0].json["content"], sent()[3].json["content"]] == ["Job #1: v0001 promoted", "to the channel itself"]
    assert all(len(r.json["content"]) <= 2000 for r in sent())
    assert "\n".join(r.json["content"] for r in sent()[1:3]) == long  # split at a line end
    rows = {r["id"]: r for r in store.outbox(db, job)}
    assert all(rows[i]["sent_at"] is not None for i in ids)
    assert [r["sent_at"] for r in rows.values() if r["platform"] == "slack"] == [None]


@pytest.mark.asyncio
async def test_adapter_chart_arrives_as_a_png_attachment(rec, bot, db_path):
    import json as _json

    folder = db_path.parent / "adapters" / "v0001"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 1}')
    (folder / "card.json").write_text(_json.dumps({"verdict": "promoted", "loss_curve": [3.0, 2.0], "metrics": {
        "golden": {"current": {"n": 1, "f1": 0.2, "nll": 3.0}, "candidate": {"n": 1, "f1": 0.4, "nll": 2.5}}}}))
    client = await bot()
    payload = slash("adapter", [{"name": "action", "type": 3, "value": "chart"}])
    deliver(client, payload)
    (deferred,), (reply,) = await answered(rec, payload, 2)
    assert deferred.json["type"] == 5 and not ephemeral(deferred)
    assert "F1 per version" in reply.json["content"] and list(reply.files) == ["adapters.png"]
    assert reply.files["adapters.png"].startswith(b"\x89PNG\r\n\x1a\n")
    assert reply.json["attachments"][0]["filename"] == "adapters.png"
