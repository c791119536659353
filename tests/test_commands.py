"""The platform-neutral command layer: permissions, feedback storage, adapters, input checks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.answering import pipeline
from bot import commands, config, store
from bot.learning import registry
from bot.knowledge import retrieval
from bot.chat.slack import parse
from bot.commands import Caller
from fakes import ScriptedGenerator

DOCS = Path(__file__).resolve().parent.parent / "knowledge" / "docs"


@pytest.fixture()
def cmds(kb_db, tmp_path):
    db = kb_db
    answerer = pipeline.Answerer(db, retrieval.Searcher(db), lambda: ScriptedGenerator("回答[1]"))
    reindexed = []
    c = commands.Commands(db, answerer, admins={"slack": ["UADMIN"], "discord": ["R-ops"]},
                          reindex=lambda: reindexed.append(1) or "Re-indexed: nothing changed.",
                          adapters_dir=tmp_path / "adapters", settings=config.Settings.load())
    c.reindexed = reindexed
    return c


USER = Caller("slack", "U1", "C1", "T1")
ADMIN = Caller("slack", "UADMIN", "C1")


def _adapter(root: Path, version: str):
    folder = root / version
    folder.mkdir(parents=True)
    # A minimal valid LoRA adapter (config, one-tensor safetensors): promotion checks both (bot/llm/hotswap.py).
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 1, "target_modules": ["q_proj"]}')
    header = b'{"q.lora_A.weight": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}}'
    (folder / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    (folder / "card.json").write_text(json.dumps({"verdict": "promoted", "metrics": {
        "golden": {"current": {"n": 2, "f1": 0.25, "nll": 3.5}, "candidate": {"n": 2, "f1": 0.5, "nll": 3.25}}}}))


def test_admin_commands_are_refused_to_others_with_a_clear_message(cmds):
    for reply in (cmds.train(USER), cmds.kb_reindex(USER), cmds.adapter_promote(USER, "v1"),
                  cmds.adapter_rollback(USER)):
        assert not reply.ok and "admins only" in reply.text and reply.private
    assert cmds.reindexed == []


def test_admins_by_user_id_and_by_discord_role(cmds):
    assert cmds.is_admin(ADMIN) and not cmds.is_admin(USER)
    assert cmds.is_admin(Caller("discord", "123", roles=("R-other", "R-ops")))
    assert not cmds.is_admin(Caller("discord", "UADMIN"))  # Slack's admin list does not carry over
    assert cmds.kb_reindex(ADMIN).ok and cmds.reindexed == [1]


def test_train_queues_a_job_that_reports_to_the_channel_that_asked(cmds):
    cmds.enqueue = False  # the job row only: running it is tests/test_loop_jobs.py's business
    reply = cmds.train(Caller("slack", "UADMIN", "C9", "171.5"))
    assert reply.ok and f"#{reply.job.id} queued" in reply.text
    assert "No training worker is running" in reply.text  # none beat in this database
    job = store.job(cmds.db, reply.job.id)
    assert (job["state"], job["requested_by"], job["platform"], job["channel"], job["thread"]) == \
        ("queued", "slack:UADMIN", "slack", "C9", "171.5")
    listed = cmds.jobs(USER)
    assert f"#{job['id']} train queued" in listed.text and listed.jobs[0]["id"] == job["id"]


def test_jobs_cancel_is_for_admins_and_whoever_queued_it(cmds):
    cmds.enqueue = False
    job_id = cmds.train(ADMIN).job.id
    refused = cmds.cancel_job(USER, job_id)
    assert not refused.ok and "admins only" in refused.text
    assert store.job(cmds.db, job_id)["state"] == "queued"
    assert "cancelled" in parse.jobs(cmds, ADMIN, f"cancel #{job_id}").text
    assert store.job(cmds.db, job_id)["state"] == "cancelled"
    again = cmds.cancel_job(ADMIN, job_id)
    assert not again.ok and "already finished (cancelled)" in again.text
    assert not parse.jobs(cmds, ADMIN, "cancel x").ok and "no job #999" in cmds.cancel_job(ADMIN, 999).text.lower()


def test_corrections_wait_for_review_unless_the_author_is_trusted(cmds, monkeypatch):
    ans = cmds.ask(USER, "什么是边缘计算？")
    pending = cmds.correct(USER, ans.id, "边缘计算是在靠近数据源的地方计算。")
    assert pending.correction.status == "pending"
    assert not cmds.review(USER).ok  # admins only
    listed = cmds.review(ADMIN)
    assert f"#{pending.correction.id}" in listed.text and "靠近数据源" in listed.text
    assert not parse.feedback(cmds, ADMIN, "review accept").ok  # which one?
    done = cmds.review(ADMIN, "accept", pending.correction.id)
    assert done.ok and store.correction(cmds.db, pending.correction.id)["reviewed_by"] == "slack:UADMIN"
    assert not cmds.review(ADMIN, "reject", pending.correction.id).ok  # decided already
    monkeypatch.setenv("BOT_TRUSTED_REVIEWERS", "slack:U1")
    cmds.reviewers = config.Settings.load().trusted_reviewers  # settings are read once, by whoever builds Commands
    trusted = cmds.correct(USER, ans.id, "边缘计算把计算放在数据源附近。")
    assert trusted.correction.status == "accepted" and "accepted" in trusted.text
    assert "No corrections are waiting" in cmds.review(ADMIN).text


def test_forget_me_deletes_your_data_and_opts_you_out(cmds):
    mine, theirs = cmds.ask(USER, "什么是边缘计算？"), cmds.ask(ADMIN, "FairScale 是什么？")
    cmds.vote(USER, mine.id, 1)
    cmds.correct(USER, theirs.id, "FairScale 是一个训练库。")
    assert not parse.forget(cmds, USER, "everyone").ok
    reply = parse.forget(cmds, USER, "me")
    assert {k: reply.forgotten[k] for k in ("answers", "votes", "corrections")} == {"answers": 1, "votes": 1, "corrections": 1}
    assert store.answer(cmds.db, mine.id) is None and store.answer(cmds.db, theirs.id) is not None
    assert ("slack", "U1") in store.opted_out(cmds.db)
    assert cmds.opt_in(USER).ok and ("slack", "U1") not in store.opted_out(cmds.db)
    assert not parse.feedback(cmds, USER, "bogus").ok


def test_votes_and_corrections_are_stored_against_the_answer(cmds):
    ans = cmds.ask(USER, "什么是边缘计算？")
    assert cmds.vote(USER, ans.id, 1).ok
    assert cmds.vote(USER, ans.id, -1).ok  # the last click wins
    assert [(v["user"], v["value"]) for v in store.votes(cmds.db, ans.id)] == [("U1", -1)]
    reply = cmds.correct(USER, ans.id, "边缘计算是在靠近数据源的地方计算。")
    assert reply.ok and "review" in reply.text
    (c,) = store.corrections(cmds.db, ans.id)
    assert c["status"] == "pending" and c["user"] == "U1" and c["platform"] == "slack"


def test_bad_feedback_gets_a_clear_message_and_stores_nothing(cmds):
    ans = cmds.ask(USER, "什么是边缘计算？")
    assert not cmds.vote(USER, "nope", 1).ok
    assert not cmds.vote(USER, ans.id, 5).ok
    assert not cmds.correct(USER, ans.id, "   ").ok
    assert not cmds.correct(USER, ans.id, "x" * (commands.MAX_CORRECTION_CHARS + 1)).ok
    assert "no longer exists" in cmds.correct(USER, "abcdef123456", "text").text
    assert "malformed answer id" in cmds.correct(USER, "missing", "text").text  # not an id the bot makes
    assert store.votes(cmds.db, ans.id) == [] and store.corrections(cmds.db) == []


def test_questions_are_checked_before_any_work(cmds):
    assert "add a question" in cmds.check_question("  ").text
    assert "limit" in cmds.check_question("问" * (commands.MAX_QUESTION_CHARS + 1)).text
    assert cmds.check_question("什么是边缘计算？") is None


def test_feedback_lists_your_recent_answers_with_your_vote(cmds):
    first = cmds.ask(USER, "什么是边缘计算？")
    cmds.ask(USER, "FairScale 是什么？")
    cmds.vote(USER, first.id, 1)
    reply = cmds.feedback_list(USER)
    assert [a["question"] for a in reply.rateable] == ["FairScale 是什么？", "什么是边缘计算？"]
    assert "👍" in reply.text and "not rated" in reply.text
    assert "no answers" in cmds.feedback_list(Caller("slack", "U-new")).text


def test_kb_search_shows_sources(cmds):
    reply = cmds.kb_search(USER, "FairScale")
    assert reply.hits[0]["doc"] == "platform-advantage.md" and "platform-advantage.md" in reply.text
    assert not cmds.kb_search(USER, " ").ok


def test_adapter_list_promote_and_rollback_move_only_the_pointer(cmds):
    root = cmds.adapters_dir
    assert "No adapter versions" in cmds.adapter_list(USER).text
    _adapter(root, "v0001")
    _adapter(root, "v0002")
    assert cmds.adapter_promote(ADMIN, "v0001").ok
    assert cmds.adapter_promote(ADMIN, "v0002").ok
    info = cmds.adapter_list(USER).adapters
    assert info["in_service"] == "v0002" and [v["version"] for v in info["versions"]] == ["v0001", "v0002"]
    assert info["versions"][0]["metrics"]["golden"]["candidate"]["f1"] == 0.5
    assert "v0001 (promoted): golden F1 0.25→0.50, NLL 3.50→3.25" in cmds.adapter_list(USER).text
    (root / ".tmp-v0003").mkdir()  # a run still writing is not a version
    (root / ".tmp-v0003" / "adapter_config.json").write_text("{}")
    assert [v["version"] for v in registry.listing(root)["versions"]] == ["v0001", "v0002"]
    assert cmds.adapter_rollback(ADMIN).ok
    assert registry.listing(root)["in_service"] == "v0001"
    assert cmds.adapter_rollback(ADMIN).ok  # back to the base model
    assert registry.listing(root)["in_service"] is None
    assert [p["action"] for p in store.promotions(cmds.db)] == ["promote", "promote", "rollback", "rollback"]


def test_a_broken_or_unknown_version_is_refused_and_the_pointer_stays(cmds):
    root = cmds.adapters_dir
    _adapter(root, "v0001")
    cmds.adapter_promote(ADMIN, "v0001")
    (root / "v0002").mkdir()  # no adapter files
    for version in ("v0002", "nope", "../etc"):
        reply = cmds.adapter_promote(ADMIN, version)
        assert not reply.ok and "cannot promote" in reply.text
    assert registry.listing(root)["in_service"] == "v0001"
    assert not parse.adapter(cmds, ADMIN, "frobnicate").ok


def test_help_lists_every_command(cmds):
    text = cmds.help(USER).text
    for name in ("/ask", "/kb search", "/kb reindex", "/feedback", "/train", "/jobs", "/adapter", "/help"):
        assert name in text
