"""Feedback to training data, with no model: review, opt-out, forget, and the snapshot (dedupe, hash, split, scrub).

Real SQLite files; answers are recorded as the answering pipeline records them.
"""
from __future__ import annotations

import json
import time
import uuid

import pytest

from bot.learning import feedback, snapshot
from bot import config, store

PASSAGES = [{"id": 1, "doc": "a.md", "heading": "第1章", "text": "边缘计算是在靠近数据源的地方进行计算。"},
            {"id": 2, "doc": "b.md", "heading": "第2章", "text": "混合并行结合数据并行和模型并行。"}]


def answer(db, question, text="模型的回答[1]", platform="slack", user="U1", passages=PASSAGES, mode="llm"):
    aid = uuid.uuid4().hex[:12]
    store.record_answer(db, {
        "id": aid, "created_at": time.time(), "platform": platform, "channel": "C1", "thread": "", "user": user,
        "question": question, "passages": passages, "answer": text, "citations": [], "mode": mode, "notice": "",
        "model": "tiny", "revision": "local", "adapter": None, "latency_ms": 1.0, "retrieval_ms": 0.1,
        "prompt_tokens": 10, "completion_tokens": 5})
    return aid


def test_trusted_corrections_are_accepted_others_wait_for_review(db):
    aid = answer(db, "什么是边缘计算？")
    op = feedback.correct(db, aid, "在靠近数据源处计算[1]。", "cli", "")
    trusted = feedback.correct(db, aid, "靠近数据源[1]", "slack", "U9", reviewers=["slack:U9"])
    other = feedback.correct(db, aid, "我觉得不对", "discord", "42", reviewers=["slack:U9"])
    assert (op["status"], trusted["status"], other["status"]) == ("accepted", "accepted", "pending")
    assert store.correction(db, trusted["id"])["reviewed_by"] == "slack:U9"

    waiting = feedback.pending(db)
    assert [p["id"] for p in waiting] == [other["id"]]
    assert waiting[0]["question"] == "什么是边缘计算？" and waiting[0]["text"] == "我觉得不对"
    assert feedback.review(db, other["id"], False, "slack:ADMIN")["status"] == "rejected"
    assert feedback.pending(db) == []
    with pytest.raises(feedback.FeedbackError, match="already rejected"):
        feedback.review(db, other["id"], True, "slack:ADMIN")
    late = feedback.correct(db, aid, "更好的说法", "discord", "42", reviewers=[])
    assert feedback.review(db, late["id"], True, "discord:ADMIN") == {"id": late["id"], "status": "accepted",
                                                                       "by": "discord:ADMIN"}
    with pytest.raises(feedback.FeedbackError):
        feedback.correct(db, "nope", "text", "cli", "")
    with pytest.raises(feedback.FeedbackError):
        feedback.correct(db, aid, "   ", "cli", "")


def test_one_pending_correction_per_person_per_answer_a_new_one_replaces_it_until_it_is_reviewed(db):
    aid, other_answer = answer(db, "什么是边缘计算？"), answer(db, "什么是混合并行？")
    first = feedback.correct(db, aid, "靠近数据源[1]", "slack", "U2", reviewers=[])
    for _ in range(49):
        assert feedback.correct(db, aid, "靠近数据源[1]", "slack", "U2", reviewers=[])["id"] == first["id"]
    assert [p["id"] for p in feedback.pending(db)] == [first["id"]]
    last = feedback.correct(db, aid, "在数据源附近计算[1]", "slack", "U2", reviewers=[])
    assert last == {"id": first["id"], "status": "pending"}
    assert [(c["id"], c["text"]) for c in store.corrections(db, aid)] == [(first["id"], "在数据源附近计算[1]")]
    # Someone else, the same person elsewhere (another answer, another platform): their own items.
    others = [feedback.correct(db, aid, "不对", "slack", "U3", reviewers=[])["id"],
              feedback.correct(db, other_answer, "不对", "slack", "U2", reviewers=[])["id"],
              feedback.correct(db, aid, "不对", "discord", "U2", reviewers=[])["id"]]
    assert len({first["id"], *others}) == 4 and len(feedback.pending(db)) == 4
    # Reviewed: the next correction from the same person is a new item; the reviewed one is kept as it was.
    feedback.review(db, first["id"], True, "slack:ADMIN")
    again = feedback.correct(db, aid, "再补充一点", "slack", "U2", reviewers=[])
    assert again["id"] != first["id"] and again["status"] == "pending"
    assert store.correction(db, first["id"])["text"] == "在数据源附近计算[1]"
    assert store.correction(db, first["id"])["status"] == "accepted"
    # A trusted person's corrections are accepted at once: each is its own accepted row, none left pending.
    trusted = [feedback.correct(db, aid, f"补充 {i}", "slack", "U9", reviewers=["slack:U9"]) for i in range(2)]
    assert [t["status"] for t in trusted] == ["accepted", "accepted"] and trusted[0]["id"] != trusted[1]["id"]


def test_repeat_corrections_script_50_from_8_threads_make_one_review_item(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "reliability" / "repeat_corrections.py"
    out = subprocess.run([sys.executable, str(script), "--n", "50", "--threads", "8", "--db", str(tmp_path / "r.db")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert (figures["corrections_sent"], figures["review_items"], figures["rows"],
            figures["distinct_ids_returned"]) == (50, 1, 1, 1)
    assert figures["after_review"] == {"new_item": True, "status": "pending", "review_items": 1, "rows": 2}


def test_trusted_reviewers_come_from_the_setting(db, monkeypatch):
    monkeypatch.setenv("BOT_TRUSTED_REVIEWERS", "slack:UTRUST, discord:7")
    aid = answer(db, "q")
    reviewers = config.Settings.load().trusted_reviewers
    assert feedback.correct(db, aid, "fix", "discord", "7", reviewers)["status"] == "accepted"
    assert feedback.correct(db, aid, "fix", "slack", "UOTHER", reviewers)["status"] == "pending"


def test_opt_out_keeps_a_person_out_of_the_snapshot_and_forget_deletes_them(db):
    mine = answer(db, "我的问题 bob@example.com", user="U1")
    theirs = answer(db, "别人的问题", user="U2")
    feedback.vote(db, mine, "slack", "U1", 1)
    feedback.vote(db, theirs, "slack", "U1", 1)  # U1 rates U2's answer too
    feedback.correct(db, theirs, "U1 的更正", "slack", "U1", reviewers=["slack:U1"])
    feedback.vote(db, theirs, "slack", "U3", 1)
    assert snapshot.build(db).counts["train"] == 2

    feedback.opt_out(db, "slack", "U1")
    assert feedback.is_opted_out(db, "slack", "U1")
    snap = snapshot.build(db)
    # U1's own question is gone; U2's answer stays as U3's upvote, not U1's correction.
    assert [(e["kind"], e["answer_id"]) for e in snap.train] == [("positive", theirs)]
    feedback.opt_in(db, "slack", "U1")
    assert snapshot.build(db).counts["train"] == 2

    counts = feedback.forget(db, "slack", "U1")  # no adapters folder: the database only
    nothing = {"files": 0, "rows": 0, "marked": [], "weights_deleted": [], "retrain_job": None}
    assert counts == {"answers": 1, "votes": 2, "corrections": 1, "adapters": nothing}
    assert feedback.is_opted_out(db, "slack", "U1")
    assert store.answer(db, mine) is None and store.answer(db, theirs) is not None
    assert store.votes(db, theirs) == [v for v in store.votes(db, theirs) if v["user"] == "U3"]
    assert feedback.forget(db, "slack", "U1") == {"answers": 0, "votes": 0, "corrections": 0, "adapters": nothing}


def test_snapshot_uses_the_passages_the_user_saw_and_scrubs(db):
    aid = answer(db, "找 <@U024BE7LH> 还是 alice@example.com 问边缘计算？")
    feedback.correct(db, aid, "打 13800138000 给 @bob，边缘计算在数据源附近[1]。", "cli", "")
    snap = snapshot.build(db)
    [ex] = snap.train
    assert ex["question"] == "找 <USER> 还是 <EMAIL> 问边缘计算？"
    assert ex["target"] == "打 <PHONE> 给 <USER>，边缘计算在数据源附近[1]。"
    user_turn = ex["messages"][-2]["content"]
    assert all(p["text"] in user_turn for p in PASSAGES)  # what the user saw, not a new search
    assert ex["messages"][-1] == {"role": "assistant", "content": ex["target"]}
    dumped = json.dumps(snap.train + snap.heldout + snap.negatives, ensure_ascii=False)
    assert "alice@" not in dumped and "13800138000" not in dumped and "U024BE7LH" not in dumped


def test_snapshot_kinds_dedupe_hash_and_heldout(db, tmp_path):
    ids = [answer(db, f"问题{i}？") for i in range(7)]
    for i, aid in enumerate(ids[:6]):
        feedback.correct(db, aid, f"更正{i}[1]。", "cli", "")
    # The same question and passages asked twice with the same fix: one example.
    twin = answer(db, "问题0？")
    feedback.correct(db, twin, "更正0[1]。", "cli", "")
    # A later, different fix of the same prompt replaces the earlier one.
    feedback.correct(db, ids[1], "更正1，第二版[1]。", "cli", "")
    ups = [answer(db, f"好问题{i}？", text=f"好回答{i}[2]") for i in range(5)]
    for up in ups:
        feedback.vote(db, up, "slack", "U5", 1)
    down = answer(db, "坏问题？", text="坏回答")
    feedback.vote(db, down, "slack", "U5", -1)
    fallback = answer(db, "检索问题？", mode="retrieval-only")
    feedback.vote(db, fallback, "slack", "U5", 1)  # not a model answer: nothing to learn
    feedback.vote(db, ids[6], "slack", "U5", -1)
    feedback.correct(db, ids[6], "待审", "slack", "U5", reviewers=[])  # pending: not used

    snap = snapshot.build(db)
    examples = snap.train + snap.heldout
    assert sorted(e["kind"] for e in examples) == ["correction"] * 6 + ["positive"] * 5
    assert {e["target"] for e in examples if e["question"] == "问题1？"} == {"更正1，第二版[1]。"}
    # Every 5th new upvoted answer by hash is held out; corrections are all trained on.
    positives = sorted(e["hash"] for e in examples if e["kind"] == "positive")
    assert [e["hash"] for e in snap.heldout] == [positives[4]] and snap.new == 11
    assert {e["question"] for e in snap.negatives} == {"问题6？", "坏问题？"}
    wide = snapshot.build(db, heldout_kinds=("correction", "positive"))
    assert [e["hash"] for e in wide.heldout] == [h for i, h in enumerate(sorted(e["hash"] for e in examples))
                                                 if i % 5 == 4]

    # Stable: rebuilding, or a new database with the same feedback in another order, gives the same hash.
    assert snapshot.build(db).data_hash == snap.data_hash
    files = snap.write(tmp_path / "snap")
    assert files == {"train.jsonl": 10, "heldout.jsonl": 1, "negatives.jsonl": 2}
    rows = [json.loads(x) for x in (tmp_path / "snap" / "train.jsonl").read_text().splitlines()]
    assert [r["hash"] for r in rows] == [e["hash"] for e in snap.train]

    other = store.connect(tmp_path / "other.db")
    for i in reversed(range(5)):
        feedback.vote(other, answer(other, f"好问题{i}？", text=f"好回答{i}[2]"), "discord", "9", 1)
    for i in reversed(range(6)):
        aid = answer(other, f"问题{i}？")
        feedback.correct(other, aid, "更正1，第二版[1]。" if i == 1 else f"更正{i}[1]。", "cli", "")
    assert snapshot.build(other).data_hash == snap.data_hash

    # Learned feedback is replayed in train, never held out, and is not "new".
    cids, aids = snap.learned_ids()
    assert len(cids) == 6 and len(aids) == 4
    store.mark_trained(db, "v0001", cids, aids)
    again = snapshot.build(db)
    assert again.new == 1 and not again.heldout and len(again.train) == 11
    assert again.counts["replayed"] == 10 and again.data_hash != snap.data_hash


def test_fewer_than_five_new_examples_hold_nothing_out(db):
    for i in range(4):
        feedback.correct(db, answer(db, f"q{i}"), f"a{i}", "cli", "")
    snap = snapshot.build(db)
    assert snap.counts == {"train": 4, "heldout": 0, "negatives": 0, "new": 4, "replayed": 0}
