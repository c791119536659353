"""The seams between the transports and the command layer: Slack's text parsed into typed calls,
the one de-duplication key per Slack request, typed Reply fields, and what bot/chat may import."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bot.chat.slack import parse
from bot.chat.slack.listeners import delivery_key
from bot.commands import Caller, Reply

CHAT = Path(__file__).resolve().parent.parent / "bot" / "chat"
ME = Caller("slack", "U1", "C1")


class Recorder:
    """A command layer that records which typed method was called, with what."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def method(caller, *args, **kwargs):
            self.calls.append((name, args, kwargs))
            return Reply(name)
        return method


@pytest.mark.parametrize("run, text, call", [
    (parse.kb, "search 融资 策略", ("kb_search", ("融资 策略",), {})),
    (parse.kb, "reindex", ("kb_reindex", (), {})),
    (parse.jobs, "", ("jobs", (), {})),
    (parse.jobs, "CANCEL #7", ("cancel_job", (7,), {})),
    (parse.jobs, "cancel abc", ("cancel_job", (None,), {})),  # the command layer asks "Which job?"
    (parse.jobs, "cancel 99999999999999999999999", ("cancel_job", (None,), {})),
    (parse.adapter, "", ("adapter_list", (), {})),
    (parse.adapter, "chart", ("adapter_chart", (), {})),
    (parse.adapter, "promote v0002", ("adapter_promote", ("v0002",), {})),
    (parse.adapter, "promote", ("adapter_promote", (None,), {})),
    (parse.adapter, "rollback", ("adapter_rollback", (), {})),
])
def test_slack_command_text_becomes_one_typed_call(run, text, call):
    cmds = Recorder()
    run(cmds, ME, text)
    assert cmds.calls == [call]


@pytest.mark.parametrize("text, call", [
    ("", ("feedback_list", (), {})),
    ("OptOut", ("opt_out", (), {"delivery": "k"})),
    ("optin", ("opt_in", (), {"delivery": "k"})),
    ("review", ("review", (None, None), {"delivery": "k"})),
    ("review Accept #3", ("review", ("accept", 3), {"delivery": "k"})),
    # Judged by the command layer after its admin check, as before the parsing moved here.
    ("review frobnicate 3", ("review", ("frobnicate", 3), {"delivery": "k"})),
])
def test_slack_feedback_text_becomes_one_typed_call(text, call):
    cmds = Recorder()
    parse.feedback(cmds, ME, text, delivery="k")
    assert cmds.calls == [call]


@pytest.mark.parametrize("run, text, usage", [
    (parse.kb, "frobnicate", "Use `/kb search <query>`, `/kb reindex`, `/kb add`, `/kb list` or `/kb remove <name>`."),
    (parse.jobs, "list", "Use `/jobs` or `/jobs cancel <id>`."),
    (parse.adapter, "frobnicate",
     "Use `/adapter list`, `/adapter chart`, `/adapter promote <version>` or `/adapter rollback`."),
    (parse.feedback, "bogus",
     "Use `/feedback`, `/feedback optout`, `/feedback optin` or `/feedback review [accept|reject <id>]`."),
    (parse.forget, "everyone", "`/forget me` deletes what you asked, rated and corrected. It only ever applies to you."),
])
def test_slack_usage_errors_are_slacks_and_call_nothing(run, text, usage):
    cmds = Recorder()
    reply = run(cmds, ME, text)
    assert (reply.text, reply.ok, reply.private, cmds.calls) == (usage, False, True, [])


def test_forget_me_is_the_only_forget():
    cmds = Recorder()
    parse.forget(cmds, ME, " ME ", delivery="k")
    assert cmds.calls == [("forget", (), {"delivery": "k"})]


def test_one_delivery_key_per_slack_request_and_none_for_what_counts_once_elsewhere():
    dm = {"type": "message", "channel_type": "im", "channel": "D1", "user": "U1", "ts": "1.1"}
    mention = {"type": "app_mention", "channel": "C1", "user": "U1", "ts": "1.2"}
    event = lambda e: {"type": "event_callback", "event_id": "Ev1", "event": e}  # noqa: E731
    assert delivery_key({"command": "/ask", "trigger_id": "T1"}) == "slack:cmd:T1"
    assert delivery_key({"command": "/jobs", "trigger_id": "T2"}) == "slack:cmd:T2"
    assert delivery_key({"command": "/feedback", "trigger_id": "T3"}) is None  # its write holds the key
    assert delivery_key({"command": "/forget", "trigger_id": "T3"}) is None
    assert delivery_key({"command": "/frobnicate", "trigger_id": "T4"}) is None  # answered "unknown", not stored
    assert delivery_key(event(dm)) == delivery_key(event(mention)) == "slack:event:Ev1"
    assert delivery_key(event({**dm, "channel_type": "channel"})) is None  # not a question to the bot
    assert delivery_key(event({**dm, "subtype": "message_changed"})) is None
    assert delivery_key(event({**mention, "bot_id": "B1"})) is None
    assert delivery_key(event({**mention, "user": ""})) is None  # nobody to answer: ignored, not recorded
    assert delivery_key({"type": "block_actions", "trigger_id": "T5", "actions": [{}]}) is None  # votes: their write


def test_a_reply_has_typed_fields_and_no_side_channel():
    reply = Reply("x")
    assert not hasattr(reply, "data")
    assert (reply.duplicate, reply.busy, reply.attachment, reply.rateable, reply.forgotten) == \
        (False, None, None, [], None)


ALLOWED = ("bot.commands", "bot.guard", "bot.messages", "bot.chat")


def _bot_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bot"):
            names += [node.module] if node.module != "bot" else [f"bot.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("bot")]
    return names


def test_chat_reaches_the_rest_of_the_bot_only_through_the_command_layer():
    outside = {str(p.relative_to(CHAT)): [n for n in _bot_imports(p) if not n.startswith(ALLOWED)]
               for p in CHAT.rglob("*.py")}
    assert {k: v for k, v in outside.items() if v} == {}
