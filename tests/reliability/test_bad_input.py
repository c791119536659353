"""A corpus of bad input across slash commands, mentions and DMs, buttons, forms and the CLI.

Each case gets a clear message (asserted on its text), no handler crashes
(Slack gets its 200, never a 500; Discord an answer, never "This
interaction failed"; the CLI an exit code and a line on stderr), and
nothing is stored: after each transport's part of the corpus the rows that
existed before are all there, no row was added, and the training snapshot
is the one it was, example for example.

Real: bolt over signed HTTP on loopback, discord.py against its recorder,
`bot.cli.main` in process, the command layer, answering over the indexed
knowledge base, SQLite. Fake: Slack's and Discord's servers and the model.
"""
from __future__ import annotations

import asyncio
import copy
import json
import uuid
from types import SimpleNamespace

import pytest

from bot import cli, commands, store
from bot.chat.discord import app as discord_app
from bot.llm import generation
from bot.chat.slack import render as slack_render
from bot.learning import snapshot
from bot.commands import Caller
from slack_recorder import command_body, post_signed, signed_headers
from chat_harness import (DISCORD_ADMIN_ROLE, DISCORD_USER, SECRET, SLACK_ADMIN, answered, click, copy_db,
                          counts, deliver, discord_fixture, discord_served, make_commands, mention, opt, said,
                          slack_fixture, slack_served, slash, submit)
from fakes import ScriptedGenerator

LONG_Q = "问" * (commands.MAX_QUESTION_CHARS + 1)
LONG_FIX = "改" * (commands.MAX_CORRECTION_CHARS + 1)
UNKNOWN = "abcdef123456"  # shaped like an answer id, but no answer has it


# -- the world the corpus runs against: answers, votes and corrections that must survive it --------

@pytest.fixture
def world(env, indexed_kb):
    db = copy_db(indexed_kb.db, env.db_path)  # the CLI's BOT_DB: every transport shares one database
    adapters = env.tmp / "adapters"
    (adapters / "v0001").mkdir(parents=True)
    (adapters / "v0001" / "adapter_config.json").write_text("{}")
    (adapters / "v0001" / "adapter_model.safetensors").write_bytes(b"x")
    generation.set_pointer(adapters, "v0001")
    cmds = make_commands(db, ScriptedGenerator(), adapters_dir=adapters)
    alice, bob, carol = (Caller("slack", u, "C0GENERAL", f"17000000{n}.0001") for n, u in
                         enumerate(("U0ALICE", "U0BOB", "U0CAROL")))
    liked = cmds.ask(alice, "什么是边缘计算？")
    fixed = cmds.ask(bob, "FairScale 是什么？")
    disliked = cmds.ask(carol, "如何管理财务风险？")
    theirs = cmds.ask(Caller("discord", DISCORD_USER, "1300000000000000200", "1300000000000000200"), "什么是融资？")
    assert cmds.vote(bob, liked.id, 1).ok and cmds.vote(alice, disliked.id, -1).ok
    assert cmds.correct(Caller("cli", "operator"), fixed.id, "FairScale 是一个分布式训练库[1]。").ok  # accepted
    assert cmds.correct(alice, disliked.id, "先识别风险，再分散投资[1]。").ok  # pending review
    before = snapshot.build(db)
    assert before.train and before.counts["train"] + before.counts["heldout"] >= 2
    return SimpleNamespace(db=db, cmds=cmds, adapters=adapters, before=before, counts=counts(db),
                           ids=SimpleNamespace(liked=liked.id, fixed=fixed.id, disliked=disliked.id, theirs=theirs.id),
                           rows={t: _rows(db, t) for t in ("answers", "votes", "corrections")})


def _rows(db, table: str) -> list[dict]:
    return [dict(r) for r in db.query(f"select * from {table} order by rowid")]


def assert_nothing_stored_or_lost(world):
    db = world.db
    assert counts(db) == world.counts
    for table, rows in world.rows.items():
        assert _rows(db, table) == rows, table  # every row there, unchanged
    after = snapshot.build(db)
    assert after.data_hash == world.before.data_hash and after.counts == world.before.counts
    assert [e["hash"] for e in after.train + after.heldout + after.negatives] == \
        [e["hash"] for e in world.before.train + world.before.heldout + world.before.negatives]
    assert generation.read_pointer(world.adapters) == "v0001"
    assert store.answer(db, world.ids.liked) is not None


# -- Slack ------------------------------------------------------------------------------

def _cmd(name, text, user="U0ALICE", **extra):
    return ("cmd", name, text, user, extra)


def _event(kind, text, **change):
    return ("event", kind, text, change)


def _action(action_id, value, **change):
    return ("action", action_id, value, change)


def _view(value, **change):
    return ("view", value, change)


# (case, what is sent, what the person is told; None: there is nobody to tell, it is only acked)
SLACK = [
    ("ask: oversized", _cmd("/ask", LONG_Q), "the limit is 4000"),
    ("ask: empty", _cmd("/ask", ""), "Please add a question"),
    ("ask: whitespace only", _cmd("/ask", " \t \n "), "Please add a question"),
    ("ask: no text field", _cmd("/ask", None), "Please add a question"),
    ("ask: zero-width characters only", _cmd("/ask", "\u200b\u200c\u200d\u2060\ufeff"), "Please add a question"),
    ("ask: bidi marks and spaces only", _cmd("/ask", " \u200e \u200f\u202a\u202c "), "Please add a question"),
    ("ask: NUL", _cmd("/ask", "什么\x00是边缘计算"), "control character (U+0000)"),
    ("ask: escape sequence", _cmd("/ask", "\x1b[2J清屏"), "control character (U+001B)"),
    ("ask: bell", _cmd("/ask", "问题\x07"), "control character (U+0007)"),
    ("ask: replacement character", _cmd("/ask", "caf\ufffd 是什么"), "U+FFFD"),
    ("ask: bytes that are not UTF-8", _cmd("/ask", "RAW:%ED%A0%80%FF%FE"), "U+FFFD"),
    ("ask: noncharacter", _cmd("/ask", "什么\uffff"), "noncharacter U+FFFF"),
    ("ask: no user", _cmd("/ask", "什么是边缘计算？", user=""), "without a user or channel"),
    ("ask: no channel", _cmd("/ask", "什么是边缘计算？", channel_id=""), "without a user or channel"),
    ("kb search: NUL", _cmd("/kb", "search 融资\x00"), "control character (U+0000)"),
    ("kb search: empty", _cmd("/kb", "search"), "Please add a query"),
    ("kb: unknown verb", _cmd("/kb", "frobnicate"), "Use `/kb search"),
    ("jobs cancel: not a number", _cmd("/jobs", "cancel abc"), "Which job?"),
    ("jobs cancel: past SQLite's integers", _cmd("/jobs", "cancel 99999999999999999999999"), "Which job?"),
    ("jobs cancel: negative", _cmd("/jobs", "cancel -3"), "Which job?"),
    ("jobs cancel: no such job", _cmd("/jobs", "cancel 424242"), "There is no job #424242"),
    ("jobs: unknown verb", _cmd("/jobs", "frobnicate"), "Use `/jobs`"),
    ("adapter promote: path", _cmd("/adapter", "promote ../../etc", SLACK_ADMIN), "cannot promote"),
    ("adapter promote: no version", _cmd("/adapter", "promote", SLACK_ADMIN), "Which version?"),
    ("adapter promote: no such version", _cmd("/adapter", "promote v0999", SLACK_ADMIN), "cannot promote"),
    ("adapter promote: control character", _cmd("/adapter", "promote v\x0001", SLACK_ADMIN), "cannot promote"),
    ("adapter: unknown verb", _cmd("/adapter", "frobnicate"), "Use `/adapter list`"),
    ("review accept: not a number", _cmd("/feedback", "review accept abc", SLACK_ADMIN), "Which correction?"),
    ("review accept: no such correction", _cmd("/feedback", "review accept 999999", SLACK_ADMIN),
     "No correction #999999"),
    ("review accept: huge id", _cmd("/feedback", "review accept 99999999999999999999999", SLACK_ADMIN),
     "Which correction?"),
    ("review: unknown verb", _cmd("/feedback", "review frobnicate", SLACK_ADMIN), "Use `/feedback review`"),
    ("feedback: unknown verb", _cmd("/feedback", "frobnicate"), "Use `/feedback`"),
    ("forget: someone else", _cmd("/forget", "U0BOB"), "`/forget me`"),
    ("unknown command", _cmd("/frobnicate", "now"), "I don't know /frobnicate"),
    ("train: no user", _cmd("/train", "", user=""), "arrived without a user"),
    ("mention: nothing but the mention", _event("app_mention", "<@UKBBOT>"), "Please add a question"),
    ("mention: NUL", _event("app_mention", "<@UKBBOT> 边缘\x00计算"), "control character (U+0000)"),
    ("DM: lone surrogate", _event("im", "bad \ud800 half"), "lone surrogate"),
    ("DM: oversized", _event("im", LONG_Q), "the limit is 4000"),
    ("DM: replacement character", _event("im", "\ufffd\ufffd"), "U+FFFD"),
    ("DM: text is not a string", _event("im", 12345), "Please add a question"),
    ("DM: zero-width characters only", _event("im", "\u200b\u2060\ufeff"), "Please add a question"),
    ("event: no channel", _event("app_mention", "<@UKBBOT> 什么是边缘计算？", channel=None), None),
    ("event: no user", _event("im", "什么是边缘计算？", user=None), None),
    ("vote: empty value", _action("vote_up", ""), "malformed answer id"),
    ("vote: SQL in the value", _action("vote_up", "'; drop table answers; --"), "malformed answer id"),
    ("vote: 10,000-character value", _action("vote_up", "a" * 10000), "malformed answer id"),
    ("vote: surrogates in the value", _action("vote_up", "\ud800" * 12), "malformed answer id"),
    ("vote: no value", _action("vote_up", None), "malformed answer id"),
    ("vote: a number for a value", _action("vote_up", 12345678), "malformed answer id"),
    ("vote: unknown answer", _action("vote_up", UNKNOWN), "no longer exists"),
    ("thumbs down: malformed id", _action("vote_down", "nope"), "malformed answer id"),
    ("thumbs down: unknown answer", _action("vote_down", UNKNOWN), "no longer exists"),
    ("unknown action id", _action("frobnicate", "x"), slack_render.UNKNOWN_ACTION),
    ("vote: no user", _action("vote_up", "LIKED", user=None), "can't tell who"),
    ("correction: empty", _view(""), "empty"),
    ("correction: whitespace only", _view("  \n\t "), "empty"),
    ("correction: oversized", _view(LONG_FIX), "the limit is 8000"),
    ("correction: NUL", _view("改正\x00内容"), "control character (U+0000)"),
    ("correction: lone surrogate", _view("改正 \udfff"), "lone surrogate"),
    ("correction: replacement character", _view("改正\ufffd"), "U+FFFD"),
    ("correction: malformed answer id", _view("改正内容", private_metadata="../../answers"), "malformed answer id"),
    ("correction: no answer id", _view("改正内容", private_metadata=None), "malformed answer id"),
    ("correction: unknown answer", _view("改正内容", private_metadata=UNKNOWN), "no longer exists"),
    ("correction: no form state", _view("改正内容", state=None), "empty"),
    ("unknown form", _view("改正内容", callback_id="frobnicate"), slack_render.UNKNOWN_FORM),
]


def _text(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if "errors" in data:
        return " ".join(data["errors"].values())
    if "view" in data:
        return " ".join(b["text"]["text"] for b in data["view"]["blocks"] if b.get("text"))
    return data.get("text", body)


async def _slack_case(slack, world, n: int, sent) -> tuple[int, str | None]:
    """Send one case; (HTTP status, what the person was told or None)."""
    kind, *args = sent
    rec = slack.recorder
    if kind == "cmd":
        name, text, user, extra = args
        fields = slack.command_fields(name, None if text is None or text.startswith("RAW:") else text, user,
                                      response_url=rec.response_url(f"case{n}"), **extra)
        body = command_body(fields)
        if text is not None and text.startswith("RAW:"):  # percent-escapes as sent, not re-encoded
            body += "&text=" + text[4:]
        status, reply, _ = await slack.post(body)
        if reply or status != 200:
            return status, _text(reply)
        return status, (await slack.said_to(f"case{n}"))[0]["text"]
    if kind == "event":
        what, text, change = args
        envelope = slack_fixture("event_app_mention" if what == "app_mention" else "event_message_im")
        envelope["event_id"] = f"Ev0BAD{n}"
        envelope["event"].update(text=text, user=f"U0CASE{n}", ts=f"1700009{n:03d}.000100")
        envelope["event"].update(change)
        envelope["event"] = {k: v for k, v in envelope["event"].items() if v is not None}
        seen = rec.count("chat.postEphemeral")
        status, _, _ = await slack.event(envelope)
        if "channel" in change or "user" in change:
            return status, None
        await rec.wait_for(lambda r: r.count("chat.postEphemeral") > seen)
        told = rec.of("chat.postEphemeral")[-1]
        assert told["user"] == f"U0CASE{n}"
        return status, told["text"]
    if kind == "action":
        action_id, value, change = args
        payload = slack_fixture("block_actions_vote")
        payload.update(trigger_id=uuid.uuid4().hex, response_url=rec.response_url(f"case{n}"))
        action = payload["actions"][0]
        action.update(action_id=action_id, value=world.ids.liked if value == "LIKED" else value,
                      action_ts=f"1700009{n:03d}.1")
        if value is None:
            del action["value"]
        payload.update(change)
        payload = {k: v for k, v in payload.items() if v is not None}
        status, body, _ = await slack.interaction(payload)
        assert body == ""  # acked at once, the message follows
        return status, (await slack.said_to(f"case{n}"))[0]["text"]
    value, change = args
    payload = slack_fixture("view_submission_correction")
    payload["trigger_id"] = uuid.uuid4().hex
    payload["view"]["private_metadata"] = world.ids.liked
    payload["view"]["state"]["values"]["correction"]["text"]["value"] = value
    payload["view"].update(change)
    payload["view"] = {k: v for k, v in payload["view"].items() if v is not None}
    status, body, _ = await slack.interaction(payload)
    return status, _text(body)


@pytest.mark.asyncio
async def test_slack_bad_input_gets_clear_messages_and_stores_nothing(world):
    async with slack_served(world.cmds) as slack:
        told = {}
        for n, (case, sent, expected) in enumerate(SLACK):
            status, text = await _slack_case(slack, world, n, sent)
            assert status == 200, (case, status, text)
            if expected is None:
                assert text is None, case
            else:
                assert text and expected in slack_render.unescape(text), (case, text)
            told[case] = text
        # Bodies no Slack client sends, signed all the same: a 400 saying why, never a 500.
        for body, json_body, why in [(b"\xff\xfe not utf-8", False, "not UTF-8"),
                                     ("payload=notjson", False, "bad JSON"), ("[1]", True, "bad JSON"),
                                     ('{"type": "event_callback", "event": "x"}', True, "malformed payload")]:
            if isinstance(body, bytes):
                headers = signed_headers(SECRET, body)  # signed as the bytes they are: it gets past the signature
                async with slack.session.post(slack.url, data=body, headers=headers) as resp:
                    status, text = resp.status, await resp.text()
            else:
                status, text, _ = await post_signed(slack.session, slack.url, SECRET, body, json_body=json_body)
            assert status == 400 and why in text, (body, status, text)
        await asyncio.sleep(0.2)
        # No form opens for a 👎 that could not be stored (malformed or unknown answer): the vote is
        # stored before the form opens, so no form is shown for an answer that does not exist.
        assert slack.recorder.count("views.open") == 0
        assert not [c for c in slack.recorder.calls if c.method == "chat.postMessage"]  # nothing was answered
    assert len(told) == len(SLACK)
    assert_nothing_stored_or_lost(world)


# -- Discord --------------------------------------------------------------------------

ADMIN = {"roles": (DISCORD_ADMIN_ROLE,)}
DISCORD = [
    ("ask: NUL", slash("ask", [opt("question", "边缘\x00计算")]), "control character (U+0000)"),
    ("ask: lone surrogate", slash("ask", [opt("question", "bad \ud800")]), "lone surrogate"),
    ("ask: oversized", slash("ask", [opt("question", LONG_Q)]), "the limit is 4000"),
    ("ask: whitespace only", slash("ask", [opt("question", "   ")]), "Please add a question"),
    ("ask: zero-width characters only", slash("ask", [opt("question", "\u200b\u200c\u200d\u2060\ufeff")]),
     "Please add a question"),
    ("ask: replacement character", slash("ask", [opt("question", "\ufffd")]), "U+FFFD"),
    ("button: unknown id", click("kb:frobnicate"), discord_app.UNKNOWN_BUTTON),
    ("button: malformed answer id", click("kb:vote:up:ZZZZZZZZ"), discord_app.UNKNOWN_BUTTON),
    ("button: empty id", click(""), discord_app.UNKNOWN_BUTTON),
    ("button: unknown answer", click(f"kb:vote:down:{UNKNOWN}"), "no longer exists"),
    ("form: unknown id", submit("kb:frobnicate", "改正"), discord_app.UNKNOWN_FORM),
    ("form: malformed answer id", submit("kb:correct:../../x", "改正"), discord_app.UNKNOWN_FORM),
    ("form: empty correction", submit("kb:correct:LIKED", ""), "The correction is empty"),
    ("form: NUL", submit("kb:correct:LIKED", "改正\x00"), "control character (U+0000)"),
    ("form: oversized", submit("kb:correct:LIKED", LONG_FIX), "the limit is 8000"),
    ("form: lone surrogate", submit("kb:correct:LIKED", "\udc80改正"), "lone surrogate"),
    ("form: unknown answer", submit(f"kb:correct:{UNKNOWN}", "改正"), "no longer exists"),
    ("form: no fields", submit("kb:correct:LIKED", None), "The correction is empty"),
    ("jobs cancel: no such job", slash("jobs", [opt("cancel", 999, 4)]), "There is no job #999"),
    ("adapter promote: path", slash("adapter", [opt("action", "promote"), opt("version", "../../etc")], **ADMIN),
     "cannot promote"),
    ("review accept: no id", slash("feedback", [opt("action", "accept")], **ADMIN), "Which correction?"),
    ("kb search: NUL", slash("kb", [{"type": 1, "name": "search", "options": [opt("query", "\x00")]}]),
     "control character (U+0000)"),
    ("mention: NUL", mention("边缘\x00计算"), "control character (U+0000)"),
    ("mention: oversized", mention(LONG_Q), "the limit is 4000"),
]


def _with_ids(payload: dict, world) -> dict:
    payload = copy.deepcopy(payload)
    data = payload.get("data") or {}
    if "LIKED" in str(data.get("custom_id", "")):
        data["custom_id"] = data["custom_id"].replace("LIKED", world.ids.liked)
    return payload


@pytest.mark.asyncio
async def test_discord_bad_input_gets_clear_messages_and_stores_nothing(world, monkeypatch):
    async with discord_served(world.cmds, monkeypatch) as (rec, client):
        deliver(client, discord_fixture("guild_create.json"), "GUILD_CREATE")
        for case, payload, expected in DISCORD:
            payload = _with_ids(payload, world)
            if "content" in payload:  # a mention: the reply is a message in the thread
                seen = len(rec.find("POST", r"/channels/\d+/messages"))
                deliver(client, payload, "MESSAGE_CREATE")
                replies = await rec.wait_for(lambda: rec.find("POST", r"/channels/\d+/messages")[seen:])
                text = said(replies[0])
            else:
                deliver(client, payload)
                callbacks, followups = await answered(rec, payload, 1)
                if callbacks and callbacks[0].json["type"] == 5:  # deferred: the answer is the follow-up
                    _, followups = await answered(rec, payload, 2)
                    text = said(followups[0])
                else:
                    text = said(callbacks[0])
                    assert (callbacks[0].json["data"].get("flags") or 0) & 64, case  # private
            assert expected in text, (case, text)
        modals = [r for r in rec.requests if r.json and isinstance(r.json, dict) and r.json.get("type") == 9]
        assert modals == []  # no 👎 on a real answer was in the corpus: no form opened
    assert_nothing_stored_or_lost(world)


# -- the CLI ----------------------------------------------------------------------------

CLI = [
    ("ask: empty", ["ask", ""], "the question is empty"),
    ("ask: NUL", ["ask", "边缘\x00计算"], "control character (U+0000)"),
    ("ask: oversized", ["ask", LONG_Q], "the limit is 4000"),
    ("ask: bytes that were not UTF-8 (surrogateescape)", ["ask", "caf\udce9"], "lone surrogate"),
    ("ask: replacement character", ["ask", "caf\ufffd"], "U+FFFD"),
    ("ask: zero-width characters only", ["ask", "\u200b\u200c\u200d\u2060\ufeff"], "Please add a question"),
    ("feedback: zero-width correction", ["feedback", "LIKED", "--correction", "\u200b\ufeff"], "empty"),
    ("feedback: no such answer", ["feedback", "nope", "--up"], "no longer exists"),
    ("feedback: NUL in the answer id", ["feedback", "abc\x00def", "--up"], "control character (U+0000)"),
    ("feedback: answer id from bytes that were not UTF-8", ["feedback", "abc\udcff", "--down"], "lone surrogate"),
    ("feedback: unknown answer", ["feedback", UNKNOWN, "--up"], "no longer exists"),
    ("feedback: empty correction", ["feedback", "LIKED", "--correction", ""], "empty"),
    ("feedback: vote with a NUL correction", ["feedback", "LIKED", "--up", "--correction", "\x00"],
     "control character (U+0000)"),
    ("feedback: oversized correction", ["feedback", "LIKED", "--correction", LONG_FIX], "the limit is 8000"),
    ("feedback: surrogate correction", ["feedback", "LIKED", "--correction", "\udcff"], "lone surrogate"),
    ("feedback: nothing to record", ["feedback", "LIKED"], "give --up or --down"),
    ("review: no such correction", ["feedback", "review", "--accept", "999999"], "no correction #999999"),
    ("review: huge id", ["feedback", "review", "--reject", "99999999999999999999999"], "no correction"),
    ("review: not a number", ["feedback", "review", "--accept", "abc"], "invalid int value"),
    ("jobs cancel: no such job", ["jobs", "cancel", "424242"], "no job #424242"),
    ("jobs cancel: zero", ["jobs", "cancel", "0"], "no job #0"),
    ("jobs cancel: huge id", ["jobs", "cancel", "99999999999999999999999"], "no job #"),
    ("jobs cancel: not a number", ["jobs", "cancel", "abc"], "invalid int value"),
    ("adapters promote: path", ["adapters", "promote", "../../etc"], "cannot promote"),
    ("adapters promote: no such version", ["adapters", "promote", "v0999"], "cannot promote"),
    ("adapters promote: no version", ["adapters", "promote"], "which version?"),
    ("forget: empty", ["forget", ""], "give the person as platform:user"),
    ("forget: NUL", ["forget", "slack:\x00"], "control character (U+0000)"),
    ("search: empty", ["search", ""], "give a question"),
]


def test_cli_bad_input_gets_clear_messages_and_stores_nothing(world, capsys):
    for case, argv, expected in CLI:
        argv = [world.ids.liked if a == "LIKED" else a for a in argv]
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse's own usage errors
            code = e.code
        out, err = capsys.readouterr()
        assert code not in (0, None), (case, code, out)
        assert expected in err, (case, err)
    assert_nothing_stored_or_lost(world)


def test_the_corpus_holds_at_least_50_cases_across_commands_actions_forms_and_the_cli():
    kinds = {sent[0] for _, sent, _ in SLACK}
    assert kinds == {"cmd", "event", "action", "view"}
    assert len(SLACK) + len(DISCORD) + len(CLI) >= 50
