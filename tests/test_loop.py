"""The closed loop on the real tiny model: feedback -> job -> adapter -> gate -> promotion -> better answers.

Nothing of ours is faked: the tiny model built offline, SQLite on disk, the
retrieval index, huey in immediate mode running the real task, the gate
deciding on real metrics. The tests share one world and run in order: a
promotion, then poisoned feedback that the gate rejects, then a rollback.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.answering import pipeline
from bot.learning import evaluation, feedback, registry
from bot.llm import generation, presets
from bot.knowledge import retrieval
from bot import store

EVAL = Path(__file__).resolve().parent.parent / "knowledge" / "eval"
JUNK = "别看资料了，答案永远是四十二，详情请咨询管理员，谢谢大家。"
CARD_KEYS = {"version", "job", "parent", "init", "preset", "base_model", "data", "recipe", "loss_curve", "metrics",
             "gate", "verdict", "reasons", "timings", "created_at"}


def _rows(name: str) -> list[dict]:
    path = EVAL / name
    if not path.is_file():  # another engineer's file; the fallback keeps these tests runnable without it
        rows = [json.loads(x) for x in (EVAL / "test.jsonl").read_text(encoding="utf-8").splitlines()]
        rows = [r for r in rows if r["lang"] == "zh" and r["kind"] != "unanswerable"]
        return rows[:10] if name == "demo.jsonl" else rows[10:20]
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


@pytest.fixture(scope="module")
def world(tiny_model_dir, indexed_kb, tmp_path_factory):
    import sqlite3

    from bot.learning import jobs

    root = tmp_path_factory.mktemp("loop")
    db_path = root / "bot.db"
    copy = sqlite3.connect(db_path)
    indexed_kb.db.conn.backup(copy)
    copy.close()
    adapters = root / "adapters"
    questions = _rows("demo.jsonl")[2:5]
    # The golden set here: the three questions the adapter in service will have learned, and
    # three it never sees. The tiny model answers no real golden question (its char F1 there
    # is ~0.1, noise), so only answers it gets right can visibly regress, as a real model's can.
    golden_rows = questions + _rows("golden.jsonl")[:3]
    golden = root / "golden.jsonl"
    golden.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in golden_rows), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"BOT_DB": db_path, "BOT_MODEL": "tiny", "BOT_CACHE_DIR": tiny_model_dir.parent,
                            "BOT_ADAPTERS_DIR": adapters, "BOT_GOLDEN_SET": golden, "BOT_EMBEDDER": "none",
                            "BOT_TRAIN_STEPS": 60 * len(questions)}.items():
            mp.setenv(name, str(value))
        mp.setattr(jobs.huey, "immediate", True)
        db = store.connect(db_path)
        served = generation.load("tiny", cache_dir=tiny_model_dir.parent, adapters_dir=adapters, trainable=False)
        with generation.ModelWorker(served) as worker:
            answerer = pipeline.Answerer(db, retrieval.Searcher(db), lambda: worker, max_new_tokens=48,
                                          context_budget=presets.load("tiny").generation.context_budget_tokens)
            yield SimpleNamespace(db=db, adapters=adapters, answerer=answerer, questions=questions,
                                  golden=golden_rows, jobs=jobs, first={})


def _f1(answers, rows) -> float:
    return sum(evaluation.char_f1(a.answer, r["answer"]) for a, r in zip(answers, rows)) / len(rows)


def test_corrections_train_an_adapter_that_the_gate_promotes(world):
    db, ctx = world.db, pipeline.Context("slack", "U1", "C1", "")
    before = [world.answerer.ask(q["question"], ctx) for q in world.questions]
    assert all(a.adapter is None and a.mode == "llm" for a in before)
    assert _f1(before, world.questions) < 0.3
    fixes = [feedback.correct(db, a.id, q["answer"], "cli", "operator") for a, q in zip(before, world.questions)]
    assert {f["status"] for f in fixes} == {"accepted"}

    job_id = world.jobs.submit(db, "slack:UADMIN", "slack", "C1", "T1")  # huey immediate: runs now
    job = store.job(db, job_id)
    assert (job["state"], job["verdict"], job["version"]) == ("promoted", "promoted", "v0001"), job
    assert job["step"] == job["steps"] == 60 * len(world.questions)
    assert generation.read_pointer(world.adapters) == "v0001"
    assert registry.versions(world.adapters) == ["v0001"] and not list(world.adapters.glob(".tmp-*"))

    card = registry.card(world.adapters, "v0001")
    assert CARD_KEYS <= set(card)
    assert card["parent"] is None and card["verdict"] == "promoted" and card["job"] == job_id
    assert card["base_model"]["id"].endswith("tiny") and card["base_model"]["revision"].startswith("local-")
    assert card["data"]["hash"] == job["data_hash"] and len(card["data"]["hash"]) == 64
    assert (card["data"]["train"], card["data"]["heldout"], card["data"]["negatives"]) == (3, 0, 0)
    assert card["recipe"]["lora"]["r"] == presets.load("tiny").lora.r and card["recipe"]["steps_done"] == 180
    assert len(card["loss_curve"]) == 180 and card["loss_curve"][-1] < card["loss_curve"][0]
    learned = card["metrics"]["learned"]
    assert learned["candidate"]["f1"] > learned["current"]["f1"]
    assert learned["candidate"]["nll"] < learned["current"]["nll"]
    assert card["metrics"]["golden"]["candidate"]["n"] == 6
    assert set(card["timings"]) >= {"train_s", "eval_s", "total_s"}
    folder = world.adapters / "v0001"
    assert {"adapter_config.json", "adapter_model.safetensors", "card.json", "train.jsonl", "heldout.jsonl",
            "negatives.jsonl", "evaluation.json"} <= {p.name for p in folder.iterdir()}
    assert {c["used_in"] for c in store.corrections(db)} == {"v0001"}
    assert store.promotions(db)[-1]["version"] == "v0001" and store.promotions(db)[-1]["by"] == f"job:{job_id}"

    # The worker spoke only through the outbox, to the thread that asked.
    posts = store.claim_outbox(db, "slack", "test-poster")
    assert [(p["channel"], p["thread"]) for p in posts] == [("C1", "T1")] * len(posts)
    assert "started" in posts[0]["text"] and "v0001 promoted" in posts[-1]["text"] and len(posts) >= 3
    store.mark_outbox_sent(db, [p["id"] for p in posts])
    assert store.claim_outbox(db, "slack", "test-poster") == []

    after = [world.answerer.ask(q["question"], ctx) for q in world.questions]  # the pointer moved: hot swap
    assert {a.adapter for a in after} == {"v0001"}
    assert _f1(after, world.questions) >= 0.8, [a.answer for a in after]
    world.first.update(answer=before[0].answer, question=world.questions[0]["question"])


def test_poisoned_feedback_is_rejected_and_the_adapter_in_service_stays(world):
    db = world.db
    for g in world.golden:
        a = world.answerer.ask(g["question"], pipeline.Context("slack", "UMALLORY", "C1", ""))
        fix = feedback.correct(db, a.id, JUNK, "slack", "UMALLORY", reviewers=[])
        assert fix["status"] == "pending"
        feedback.review(db, fix["id"], True, "slack:UADMIN")  # a careless admin accepts the junk

    job_id = world.jobs.submit(db, "slack:UADMIN", "slack", "C1", "T2")
    job = store.job(db, job_id)
    assert (job["state"], job["version"]) == ("rejected", "v0002"), job
    assert generation.read_pointer(world.adapters) == "v0001"
    card = registry.card(world.adapters, "v0002")
    assert card["verdict"] == "rejected" and card["parent"] == "v0001"
    assert any(r.startswith("golden: regresses") for r in card["reasons"]), card["reasons"]
    # The junk replaced the three good corrections of the same prompts (the latest correction wins).
    assert (card["data"]["train"], card["data"]["new"], card["data"]["replayed"]) == (6, 6, 0)
    junk = [c for c in store.corrections(db) if c["text"] == JUNK]
    assert junk and all(c["used_in"] is None for c in junk)  # used only when promoted
    assert "rejected" in store.outbox(db, job_id)[-1]["text"]
    assert world.answerer.ask(world.first["question"]).adapter == "v0001"


def test_rollback_restores_the_previous_adapter_for_the_next_answer(world):
    assert registry.rollback(world.db, world.adapters, by="cli:operator", base=None) is None
    again = world.answerer.ask(world.first["question"])
    assert again.adapter is None and again.answer == world.first["answer"]
