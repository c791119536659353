"""Limits before work, and the audit trail: bot/guard.py and its use by the command layer and transports.

Real: SQLite, the command layer, the answering pipeline over the indexed
knowledge base, bolt serving signed HTTP and discord.py against its
recorder (tests/chat_harness.py). Fake: Slack's and Discord's servers, the
clock of the rate windows where a test is about time, and a scripted model.
"""
from __future__ import annotations

import asyncio
import logging
import re
import uuid

import pytest

from bot import cli, commands, config, guard, store
from bot.commands import Caller
from chat_harness import (DISCORD_ADMIN_ROLE, SLACK_ADMIN, answered, copy_db, deliver, discord_fixture,
                          discord_served, ephemeral, make_commands, mention, opt, said, slack_fixture, slack_served,
                          slash)
from fakes import ScriptedGenerator

BUSY = re.compile(r"busy, try again in (\d+) s")
ANSWER_MARKER, CORRECTION_MARKER = "Marimba-2290", "Ocarina-8803"  # distinctive: found in a log only if leaked


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def busy_seconds(text: str) -> int:
    m = BUSY.search(text)
    assert m, text
    return int(m[1])


# -- the rate format and the settings ----------------------------------------------------

def test_rates_are_count_per_seconds_or_off_and_anything_else_is_refused_by_name(monkeypatch):
    assert guard.parse_rate("10/60") == guard.Rate(10, 60.0)
    assert guard.parse_rate(" 5 / 2.5s ") == guard.Rate(5, 2.5)
    assert guard.parse_rate("off") is None and guard.parse_rate("") is None
    for bad in ("10", "0/60", "10/0", "ten/60", "-1/60", "10/60/2", "10 per minute"):
        with pytest.raises(ValueError, match="COUNT/SECONDS"):
            guard.parse_rate(bad)
    monkeypatch.setenv("BOT_RATE_USER", "lots")
    with pytest.raises(config.SettingError, match="BOT_RATE_USER"):
        guard.Admission.from_settings(config.Settings.load())
    monkeypatch.setenv("BOT_RATE_USER", "3/30")
    monkeypatch.setenv("BOT_RATE_CHANNEL", "off")
    monkeypatch.setenv("BOT_QUEUE_MAX", "0")
    with pytest.raises(config.SettingError, match="BOT_QUEUE_MAX"):
        guard.Admission.from_settings(config.Settings.load())
    monkeypatch.setenv("BOT_QUEUE_MAX", "4")
    a = guard.Admission.from_settings(config.Settings.load())
    assert (a.user, a.channel, a.queue_max) == (guard.Rate(3, 30.0), None, 4)


# -- admission ------------------------------------------------------------------------------

def test_a_person_past_their_rate_is_told_when_to_come_back_and_refusals_cost_nothing():
    clock = Clock()
    a = guard.Admission(guard.Rate(3, 60), None, None, clock=clock)
    for _ in range(3):
        assert a.admit("slack", "U1", "C1") is None
        clock.now += 10
    busy = a.admit("slack", "U1", "C1")  # the first of three was 30 s ago: 30 s until it leaves the window
    assert (busy.reason, busy.seconds) == ("user", 30) and busy_seconds(busy.text) == 30
    assert "you can ask 3 questions every 60 s" in busy.text
    assert a.admit("slack", "U2", "C1") is None  # someone else is not held back
    clock.now += 29
    assert a.admit("slack", "U1", "C1").seconds == 1  # refused asks did not push the window out
    clock.now += 1
    assert a.admit("slack", "U1", "C1") is None
    assert a.admit("discord", "U1", "C1") is None  # the same id on another platform is another person


def test_a_busy_channel_holds_back_everyone_in_it_but_not_other_channels():
    clock = Clock()
    a = guard.Admission(None, guard.Rate(2, 10), None, clock=clock)
    assert a.admit("slack", "U1", "C1") is None and a.admit("slack", "U2", "C1") is None
    busy = a.admit("slack", "U3", "C1")
    assert busy.reason == "channel" and busy.seconds == 10 and "this channel can ask 2 questions" in busy.text
    assert a.admit("slack", "U3", "C2") is None


def test_the_queue_bound_counts_admitted_questions_until_released_and_drops_lost_slots():
    clock = Clock()
    a = guard.Admission(None, None, 2, clock=clock, hold_s=100, answer_s=4.0)
    assert a.admit("slack", "U1") is None and a.admit("slack", "U2") is None
    assert a.depth() == 2
    busy = a.admit("slack", "U3")
    assert busy.reason == "queue" and busy.seconds == 4 and "2 questions are already waiting" in busy.text
    a.release("slack", "U9")  # holds nothing: no effect
    assert a.depth() == 2
    clock.now += 2
    a.release("slack", "U1")
    assert a.depth() == 1 and a.admit("slack", "U3") is None
    clock.now += 101  # a transport that died without releasing: its slots go after hold_s
    assert a.depth() == 0 and a.admit("slack", "U4") is None


def test_the_answering_pipelines_own_count_is_bounded_too():
    in_pipeline = [0]
    a = guard.Admission(None, None, 3, depth=lambda: in_pipeline[0])
    in_pipeline[0] = 3  # questions that came another way are already in the pipeline
    assert a.admit("slack", "U1").reason == "queue"
    in_pipeline[0] = 2
    assert a.admit("slack", "U1") is None


def test_admission_through_the_command_layer_is_a_private_reply_and_the_context_always_releases(kb_db):
    cmds = make_commands(kb_db, ScriptedGenerator(), admission=guard.Admission(None, None, 1))
    alice, bob = Caller("slack", "U1", "C1"), Caller("slack", "U2", "C1")
    with cmds.admission(alice) as busy:
        assert busy is None
        refused = cmds.admit(bob)
        assert not refused.ok and refused.private and refused.busy.reason == "queue"
        assert busy_seconds(refused.text) >= 1
    with pytest.raises(RuntimeError):
        with cmds.admission(bob) as busy:
            assert busy is None
            raise RuntimeError("a transport failed half-way")
    assert cmds.guard.depth() == 0
    assert kb_db.execute("select count(*) from answers").fetchone()[0] == 0


# -- input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("", "Please add a question"), ("  \n\t ", "Please add a question"), (None, "Please add a question"),
    ("问" * (guard.MAX_QUESTION_CHARS + 1), "the limit is 4000"),
    ("what\x00is", "control character (U+0000)"), ("\x1b[31mred", "control character (U+001B)"),
    ("del\x7f", "control character (U+007F)"), ("next\x85line", "control character (U+0085)"),
    ("bad \ud800 half", "lone surrogate"), ("caf\ufffd", "U+FFFD"), ("x\uffffy", "noncharacter U+FFFF"),
    ("a\U0010FFFEb", "noncharacter U+10FFFE"),
    # Nothing visible: format characters (category Cf) alone, or with whitespace around them.
    ("\u200b\u200c\u200d\u2060\ufeff", "Please add a question"), ("\u200b" * 50, "Please add a question"),
    (" \u200e\u200f \n\u202a\u202c\t", "Please add a question"), ("\u2066\u2069\u00ad", "Please add a question"),
])
def test_questions_that_cannot_be_taken_as_typed_get_a_reason(text, expected):
    why = guard.check_question(text)
    assert why and expected in why, why


def test_ordinary_text_passes_including_lines_tabs_and_emoji_sequences():
    for text in ("什么是边缘计算？", "line one\nline two\twith a tab\r\n", "👩‍💻 team? ¿Qué tal?", "x" * 4000,
                 "边缘\u200b计算是什么？", "\ufeffwhat is edge computing?", "\u200d?"):
        assert guard.check_question(text) is None, text
    assert guard.check_correction("改正：见术语表。") is None
    assert "empty" in guard.check_correction("\u200b\u2060\ufeff")
    assert "empty" in guard.check_correction("  ") and "the limit is 8000" in guard.check_correction("x" * 8001)
    assert guard.check_answer_id("0123456789ab") is None
    for bad in ("", "nope", "0123456789AB", "x" * 100, "abc\x00def", "\ud800" * 8, None, 42):
        assert "malformed answer id" in guard.check_answer_id(bad)


def test_a_question_of_invisible_characters_is_refused_and_one_with_a_zero_width_space_is_answered(
        env, indexed_kb, capsys):
    import json

    db = copy_db(indexed_kb.db, env.db_path)
    for blank in ("\u200b\u200c\u200d\u2060\ufeff", " \u200e\u200f\u202a\u202c ", "\u2066\u2069"):
        assert cli.main(["ask", blank]) == 2
        assert "Please add a question" in capsys.readouterr().err
    assert db.execute("select count(*) from answers").fetchone()[0] == 0
    assert cli.main(["ask", "什么是\u200b边缘计算？", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["citations"], answer
    assert [r[0] for r in db.execute("select question from answers")] == ["什么是\u200b边缘计算？"]


# -- the audit trail ---------------------------------------------------------------------------

def _adapter(root, version):
    folder = root / version
    folder.mkdir(parents=True)
    # A minimal valid LoRA adapter (config, one-tensor safetensors): promotion checks both (bot/llm/hotswap.py).
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 1, "target_modules": ["q_proj"]}')
    header = b'{"q.lora_A.weight": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}}'
    (folder / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))


def audit_rows(db) -> list[tuple]:
    return [(r["platform"], r["user"], r["action"], r["target"], r["result"])
            for r in reversed(store.audit_log(db, 100))]


def test_every_privileged_action_is_audited_refused_failed_and_done_with_ids_only(kb_db, tmp_path):
    secret_q, secret_fix = "Zebra-7731 什么是边缘计算？", "Quokka-5512 边缘计算靠近数据源。"
    cmds = make_commands(kb_db, ScriptedGenerator(), adapters_dir=tmp_path / "adapters")
    user, admin = Caller("slack", "U1", "C1"), Caller("slack", SLACK_ADMIN, "C1")
    _adapter(tmp_path / "adapters", "v0001")

    for refused in (cmds.train(user), cmds.kb_reindex(user), cmds.adapter_promote(user, "v0001"),
                    cmds.adapter_rollback(user), cmds.review(user),
                    cmds.review(user, "accept", 7)):
        assert not refused.ok and "admins only" in refused.text
    assert audit_rows(kb_db) == [
        ("slack", "U1", "train", "", "refused"), ("slack", "U1", "kb reindex", "", "refused"),
        ("slack", "U1", "adapter promote", "v0001", "refused"), ("slack", "U1", "adapter rollback", "", "refused"),
        ("slack", "U1", "feedback review", "", "refused"), ("slack", "U1", "feedback accept", "#7", "refused")]

    ans = cmds.ask(user, secret_q)
    fix = cmds.correct(user, ans.id, secret_fix).correction.id
    job = cmds.train(admin).job.id
    assert cmds.cancel_job(user, job).text.startswith("Sorry")  # not theirs
    assert cmds.review(admin).ok
    assert cmds.review(admin, "accept", fix).ok
    assert not cmds.review(admin, "reject", fix).ok  # decided already
    assert cmds.adapter_promote(admin, "v0001").ok
    assert not cmds.adapter_promote(admin, "../../etc").ok
    assert cmds.cancel_job(admin, job).ok
    assert not cmds.cancel_job(admin, 4242).ok
    assert cmds.kb_reindex(admin).ok
    assert cmds.forget(user).ok
    rows = audit_rows(kb_db)[6:]
    assert [(a, t, r.split(":")[0]) for _, _, a, t, r in rows] == [
        ("train", f"#{job}", "ok"), ("jobs cancel", f"#{job}", "refused"),
        ("feedback review", "pending", "ok"), ("feedback accept", f"#{fix}", "ok"),
        ("feedback reject", f"#{fix}", "error"), ("adapter promote", "v0001", "ok"),
        ("adapter promote", "(not an id)", "error"), ("jobs cancel", f"#{job}", "ok"),
        ("jobs cancel", "#4242", "error"), ("kb reindex", "", "ok"),
        # v0001 holds none of U1's data: checked (files=0), nothing marked, no retrain.
        ("forget redact", "slack:U1", "ok"), ("forget", "slack:U1", "ok")]
    assert {(p, u) for p, u, *_ in rows} == {("slack", SLACK_ADMIN), ("slack", "U1")}
    (forgot,) = store.audit_log(kb_db, 1, "forget")
    assert forgot["detail"] == "answers=1 votes=0 corrections=1"
    everything = str(store.audit_log(kb_db, 100))
    assert "Zebra-7731" not in everything and "Quokka-5512" not in everything  # ids and counts, never chat text


def test_a_privileged_action_that_breaks_is_audited_and_answered_with_an_apology(kb_db, tmp_path, caplog):
    def broken():
        raise RuntimeError("disk full")

    cmds = make_commands(kb_db, ScriptedGenerator(), adapters_dir=tmp_path / "adapters", reindex=broken)
    reply = cmds.kb_reindex(Caller("discord", "9", roles=(DISCORD_ADMIN_ROLE,)))
    assert not reply.ok and reply.text == commands.SORRY
    (row,) = store.audit_log(kb_db)
    assert (row["platform"], row["action"], row["result"]) == \
        ("discord", "kb reindex", "error: RuntimeError: disk full")
    assert "kb reindex by discord:9 failed" in caplog.text


def test_the_cli_twins_are_audited_as_cli(env, indexed_kb, monkeypatch, capsys):
    from bot.learning import jobs

    db = copy_db(indexed_kb.db, env.db_path)
    # The queue in memory, run at once: no huey file in the checkout (the job itself fails: no model here).
    monkeypatch.setattr(jobs.huey, "immediate", True)
    answer = make_commands(db, ScriptedGenerator()).ask(Caller("slack", "U7"), "什么是边缘计算？")
    fix = make_commands(db, ScriptedGenerator()).correct(Caller("slack", "U7"), answer.id, "边缘计算靠近数据源。")
    _adapter(env.tmp / "adapters", "v0001")

    assert cli.main(["feedback", "review"]) == 0
    assert cli.main(["feedback", "review", "--accept", str(fix.correction.id), "--user", "ops"]) == 0
    assert cli.main(["feedback", "review", "--reject", "999"]) == 1
    assert cli.main(["adapters", "promote", "v0001"]) == 0
    assert cli.main(["adapters", "promote", "v0404"]) == 1
    assert cli.main(["adapters", "rollback"]) == 0
    job = store.create_job(db, "train", "cli:operator", "cli")
    assert cli.main(["jobs", "cancel", str(job)]) == 0
    assert cli.main(["jobs", "cancel", "99999999999999999999999"]) == 1
    assert cli.main(["train"]) == 0
    assert cli.main(["forget", "slack:U7"]) == 0
    capsys.readouterr()
    rows = [(p, u, a, t, r.split(":")[0]) for p, u, a, t, r in audit_rows(db)]
    train_job = max(j["id"] for j in store.list_jobs(db))
    assert rows == [
        ("cli", "operator", "feedback review", "pending", "ok"),
        ("cli", "ops", "feedback accept", f"#{fix.correction.id}", "ok"),
        ("cli", "operator", "feedback reject", "#999", "error"),
        ("cli", "operator", "adapter promote", "v0001", "ok"),
        ("cli", "operator", "adapter promote", "v0404", "error"),
        ("cli", "operator", "adapter rollback", "base", "ok"),
        ("cli", "operator", "jobs cancel", f"#{job}", "ok"),
        ("cli", "operator", "jobs cancel", "#99999999999999999999999", "error"),
        ("cli", "operator", "train", f"#{train_job}", "ok"),
        ("cli", "operator", "forget redact", "slack:U7", "ok"),
        ("cli", "operator", "forget", "slack:U7", "ok")]
    assert "边缘计算" not in str(store.audit_log(db, 100))


# -- busy, through the transports ---------------------------------------------------------------

@pytest.mark.asyncio
async def test_slack_asks_past_the_rate_are_told_busy_in_the_ack_and_nothing_is_answered(kb_db):
    cmds = make_commands(kb_db, ScriptedGenerator(),
                         admission=guard.Admission(guard.Rate(1, 60), guard.Rate(2, 60), None))
    async with slack_served(cmds) as slack:
        status, body, seconds = await slack.command("/ask", "什么是边缘计算？")
        assert status == 200 and body == "" and seconds < 1
        await slack.wait_finals(1)
        status, body, seconds = await slack.command("/ask", "FairScale 是什么？")
        assert status == 200 and seconds < 1 and 55 <= busy_seconds(body) <= 60
        mention = slack_fixture("event_app_mention")
        assert (await slack.event(mention))[0] == 200  # the same person, by mention: still busy
        await slack.recorder.wait_for(lambda r: r.of("chat.postEphemeral"))
        (told,) = slack.recorder.of("chat.postEphemeral")
        assert told["user"] == "U0ALICE" and busy_seconds(told["text"]) >= 1
        for n, user in enumerate(("U0BOB", "U0CAROL")):  # others: the channel's third question is one too many
            envelope = slack_fixture("event_app_mention")
            envelope["event_id"] = f"Ev0BUSY{n}"
            envelope["event"].update(user=user, ts=f"1700000999.00000{n}")
            await slack.event(envelope)
        await slack.recorder.wait_for(lambda r: len(r.of("chat.postEphemeral")) == 2)
        carol = slack.recorder.of("chat.postEphemeral")[1]
        assert carol["user"] == "U0CAROL" and "this channel can ask 2 questions" in carol["text"]
        await slack.wait_finals(2)
        await asyncio.sleep(0.2)
        assert [r["user"] for r in slack.answers()] == ["U0ALICE", "U0BOB"]
        assert cmds.guard.depth() == 0  # every admitted question gave its slot back


@pytest.mark.asyncio
async def test_slack_questions_past_the_queue_bound_are_told_busy_while_the_model_works(kb_db):
    cmds = make_commands(kb_db, ScriptedGenerator(delay=0.05), admission=guard.Admission(None, None, 1, answer_s=3.0))
    async with slack_served(cmds) as slack:
        assert (await slack.command("/ask", "什么是边缘计算？"))[0] == 200
        await slack.recorder.wait_for(lambda r: any(not u.get("blocks") for u in r.of("chat.update")))
        status, body, _ = await slack.command("/ask", "FairScale 是什么？", user="U0BOB")
        assert status == 200 and busy_seconds(body) >= 1 and "already waiting for the model" in body
        await slack.wait_finals(1)
        await asyncio.sleep(0.1)
        assert (await slack.command("/ask", "FairScale 是什么？", user="U0BOB"))[1] == ""  # admitted now
        await slack.wait_finals(2)
        assert len(slack.answers()) == 2


@pytest.mark.asyncio
async def test_discord_asks_and_mentions_past_the_rate_are_told_busy_privately(kb_db, monkeypatch):
    cmds = make_commands(kb_db, ScriptedGenerator(), admission=guard.Admission(guard.Rate(1, 60), None, None))
    async with discord_served(cmds, monkeypatch) as (rec, client):
        first = slash("ask", [opt("question", "什么是边缘计算？")])
        deliver(client, first)
        await answered(rec, first, 2)
        second = slash("ask", [opt("question", "FairScale 是什么？")])
        deliver(client, second)
        (reply,), followups = await answered(rec, second)
        assert reply.json["type"] == 4 and ephemeral(reply) and busy_seconds(said(reply)) >= 55 and not followups
        deliver(client, discord_fixture("guild_create.json"), "GUILD_CREATE")
        deliver(client, mention("FairScale 是什么？"), "MESSAGE_CREATE")
        (busy,) = await rec.wait_for(lambda: rec.find("POST", r"/channels/\d+/messages"))
        assert busy_seconds(said(busy)) >= 1
        await asyncio.sleep(0.1)
        assert kb_db.execute("select count(*) from answers").fetchone()[0] == 1
        assert cmds.guard.depth() == 0


# -- chat text never reaches the logs ------------------------------------------------------------

@pytest.mark.asyncio
async def test_questions_answers_and_corrections_never_reach_the_logs_even_at_debug(kb_db, caplog):
    caplog.set_level(logging.DEBUG)
    marker = "Xylophone-4417"
    answer_text = f"{ANSWER_MARKER} 边缘计算是在靠近数据源的地方进行计算[1]。"
    cmds = make_commands(kb_db, ScriptedGenerator(answer_text))
    async with slack_served(cmds) as slack:
        assert (await slack.command("/ask", f"{marker} 什么是边缘计算？"))[0] == 200
        (final,) = await slack.wait_finals(1)
        assert ANSWER_MARKER in final["text"]  # it did go through, streamed and final
        (row,) = slack.answers()
        submit = slack_fixture("view_submission_correction")
        submit["trigger_id"] = uuid.uuid4().hex
        submit["view"]["private_metadata"] = row["id"]
        submit["view"]["state"]["values"]["correction"]["text"]["value"] = f"{CORRECTION_MARKER} 靠近数据源。"
        assert (await slack.interaction(submit))[0] == 200
        slack.cmds.answerer.generator().fail = RuntimeError(f"model broke on {marker}")  # even a failure
        assert (await slack.command("/ask", f"{marker} again"))[0] == 200
        await slack.wait_finals(2)
    assert [c["text"] for c in store.corrections(kb_db)] == [f"{CORRECTION_MARKER} 靠近数据源。"]
    records = caplog.records
    assert any(r.levelno == logging.DEBUG for r in records)  # DEBUG was on, and things were logged
    for secret in (marker, ANSWER_MARKER, CORRECTION_MARKER):
        leaked = [f"{r.name}: {r.getMessage()[:200]}" for r in records if secret in r.getMessage()
                  or secret in str(r.exc_info or "") or secret in str(r.args)]
        assert not leaked, leaked

