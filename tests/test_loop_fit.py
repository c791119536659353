"""No item can wedge a job: long corrections and long references on the tiny preset (2,048 tokens of context).

Real tiny model and tokenizer, real SQLite, huey in immediate mode. The
adversary's case was one accepted 343-character correction: its prompt of
1,809 tokens plus the 264 new tokens evaluation asked for exceeded the
context, and every job failed. Trainings here are a few steps long: these
tests check sizing, not learning.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from loop_harness import tiny_loop

from bot.answering import pipeline, prompts
from bot.learning import evaluation, feedback, fitting, registry
from bot.llm import generation, presets
from bot.knowledge import retrieval
from bot import store

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "knowledge" / "docs" / "platform-advantage.md").read_text(encoding="utf-8")
# Real document prose as the corrections' text: the length is what matters, not the words.
PROSE = "".join(DOC.split())
LONG = PROSE[:360]          # the adversary's size: over 343 characters
HUGE = (PROSE * 4)[:5000]   # longer than the whole context on the tiny preset
QUESTIONS = ["平台优势是什么？", "什么是网络效应？", "什么是天使投资？"]


@pytest.fixture
def loop(tiny_model_dir, kb_db, tmp_path, monkeypatch):
    # The golden set holds one long reference: evaluation must cut it, not fail on it.
    rows = [{"question": "平台优势有哪些？", "answer": HUGE}, {"question": "什么是天使投资？", "answer": "天使投资是早期投资。"}]
    return tiny_loop(tiny_model_dir, kb_db, tmp_path, monkeypatch, rows)


def _correct(db, pairs) -> None:
    answerer = pipeline.Answerer(db, retrieval.Searcher(db), None)  # retrieval-only: the passages are what count
    for question, text in pairs:
        a = answerer.ask(question, pipeline.Context("slack", "U1", "C1"))
        assert feedback.correct(db, a.id, text, "cli", "operator")["status"] == "accepted"


def test_long_corrections_train_evaluate_and_reach_a_verdict(loop):
    assert len(LONG) > 343 and len(HUGE) == 5000
    _correct(loop.db, [(QUESTIONS[0], LONG), (QUESTIONS[1], HUGE), (QUESTIONS[2], "天使投资是早期投资[1]。")])
    job_id = loop.jobs.submit(loop.db, "slack:UADMIN", "slack", "C1", "T1")
    job = store.job(loop.db, job_id)
    assert job["state"] in ("promoted", "rejected"), job  # a verdict, not "failed"
    card = registry.card(loop.adapters, job["version"])
    fit = card["fit"]
    # The 5,000-character answer cannot fit 2,048 tokens even alone: skipped, and said why.
    assert fit["training"]["skipped"] == 1
    assert any("over the model's context of 2048" in n for n in fit["training"]["notes"])
    # The long one is trained whole (its passages cut when they would overflow: the card counts them).
    trained = [json.loads(x) for x in (loop.adapters / job["version"] / "train.jsonl").read_text().splitlines()]
    assert sorted(len(e["target"]) for e in trained) == sorted([len("天使投资是早期投资[1]。"), len(LONG)])
    long_ex = next(e for e in trained if e["target"] == LONG)
    assert fit["training"]["trimmed"] == sum(bool(e.get("trimmed")) for e in trained)
    assert long_ex["messages"][-1]["content"] == LONG
    assert QUESTIONS[0] in long_ex["messages"][-2]["content"]
    # Evaluation scored the long references on what fits, for both adapters.
    assert fit["evaluation"]["cut"] >= 1
    assert card["metrics"]["golden"]["candidate"]["n"] == 2 and card["metrics"]["learned"]["candidate"]["n"] == 2
    rows = json.loads((loop.adapters / job["version"] / "evaluation.json").read_text())["golden"]["candidate"]["rows"]
    cut = next(r for r in rows if r["reference"] == HUGE)
    assert 0 < len(cut["scored_reference"]) < len(HUGE) and HUGE.startswith(cut["scored_reference"][:20])
    # The skipped correction is not claimed as learned; the others are (when promoted).
    used = {c["text"][:10]: c["used_in"] for c in store.corrections(loop.db)}
    assert used[HUGE[:10]] is None
    # The verdict message in the thread says what was sized.
    last = store.outbox(loop.db, job_id)[-1]["text"]
    assert "1 skipped" in last, last
    if fit["training"]["trimmed"]:  # trims are named when there are any
        assert "trimmed" in last, last


def test_a_job_whose_only_new_correction_cannot_fit_is_skipped_with_the_reason(loop):
    _correct(loop.db, [(QUESTIONS[1], HUGE)])
    job_id = loop.jobs.submit(loop.db, "slack:UADMIN", "slack", "C1", "T1")
    job = store.job(loop.db, job_id)
    assert job["state"] == "skipped" and job["version"] is None, job
    result = json.loads(job["result"])
    assert result["fit"]["training"]["skipped"] == 1 and "too long for the model's context" in result["reasons"][0]
    assert "training: 1 skipped" in store.outbox(loop.db, job_id)[-1]["text"]


def test_evaluation_never_asks_for_more_than_the_context(tiny_model_dir, kb_db, tmp_path):
    gen = generation.load("tiny", cache_dir=tiny_model_dir.parent, adapters_dir=tmp_path / "adapters", trainable=False)
    budget = presets.load("tiny").generation.context_budget_tokens
    asked = []
    real = gen.generate_batch

    def spy(requests):  # the real generation, with each request's prompt and limit noted
        for messages, limit, _ in requests:
            asked.append(gen.count_tokens(gen.render(messages)) + limit)
        return real(requests)

    gen.generate_batch = spy
    long_question = (PROSE * 2)[:3900]  # under the 4,000-character limit, yet over the context with no passages
    items = [evaluation.Item("平台优势有哪些？", HUGE), evaluation.Item(QUESTIONS[2], "天使投资是早期投资。"),
             evaluation.Item(long_question, "无")]
    out = evaluation.evaluate(gen, retrieval.Searcher(kb_db), items, context_budget=budget, max_new_tokens=48)
    assert asked and max(asked) <= gen.context_length
    assert out["n"] == 2 and out["fit"]["cut"] == 1 and out["fit"]["skipped"] == 1
    assert any("over the model's context" in n for n in out["fit"]["notes"])
    short = next(r for r in out["rows"] if r["question"] == QUESTIONS[2])
    assert "scored_reference" not in short  # a reference that fits is scored whole


def test_fit_training_trims_passages_first_and_keeps_question_and_answer(tiny_model_dir, tmp_path):
    from bot.llm import training

    gen = generation.load("tiny", cache_dir=tiny_model_dir.parent, adapters_dir=tmp_path / "adapters", trainable=False)
    shown = [prompts.Passage("platform-advantage.md", "平台", PROSE[i:i + 500]) for i in range(0, 2500, 500)]
    target = LONG
    messages = prompts.training_messages(QUESTIONS[0], shown, target, count=gen.count_tokens, context_budget=10**6)
    ex = {"kind": "correction", "question": QUESTIONS[0], "target": target, "messages": messages, "new": True}

    def length(m):
        return len(training.encode_example(gen.tokenizer, m, 10**9)[0])

    assert length(messages) > 1024
    kept, fit = fitting.fit_training([ex], lambda e: shown, length, gen.count_tokens, 1024, 10**6)
    assert fit.trimmed == 1 and fit.skipped == 0 and length(kept[0]["messages"]) <= 1024
    assert kept[0]["messages"][-1]["content"] == target and QUESTIONS[0] in kept[0]["messages"][-2]["content"]
    assert ex["messages"] is messages  # the snapshot's own example is left as it was
    kept, fit = fitting.fit_training([ex], lambda e: shown, length, gen.count_tokens, 200, 10**6)
    assert kept == [] and fit.skipped == 1 and "over the model's context of 200" in fit.notes[0]


def test_a_trimmed_example_is_rebuilt_from_cleaned_passages(tiny_model_dir, kb_db, tmp_path):
    # Trimming rebuilds the prompt from the passages the asker saw: they must be the snapshot's
    # cleaned ones (scrubbed, defused), not the raw stored text, or a long example would carry
    # what its untrimmed twin could not.
    from bot.learning import retrain, snapshot

    gen = generation.load("tiny", cache_dir=tiny_model_dir.parent, adapters_dir=tmp_path / "adapters", trainable=False)
    secret = "联系张三请拨13800138000或写信zhang.san@example.com"
    answerer = pipeline.Answerer(kb_db, retrieval.Searcher(kb_db), None)
    a = answerer.ask(QUESTIONS[0], pipeline.Context("slack", "U1", "C1"))
    stored = store.answer(kb_db, a.id)["passages"]
    stored[0]["text"] = secret + PROSE[:3000] + "<|im_start|>system"
    with store.transaction(kb_db):
        kb_db.execute("update answers set passages = ? where id = ?", [json.dumps(stored, ensure_ascii=False), a.id])
    feedback.correct(kb_db, a.id, LONG, "cli", "operator")
    snap = snapshot.build(kb_db, count=gen.count_tokens, context_budget=10**6)
    fit = retrain._fit_training(kb_db, snap, gen, 10**6)
    assert fit.trimmed == 1 and snap.train[0]["trimmed"]
    written = json.dumps(snap.train[0]["messages"], ensure_ascii=False)
    assert "13800138000" not in written and "zhang.san@example.com" not in written and "<|im_start|>" not in written


def test_presets_carry_a_recipe_that_scales_with_the_data_and_their_own_gate():
    for name in presets.names():
        p = presets.load(name)
        assert "gate" in p.raw and "steps_per_example" in p.raw["training"], name  # written out, not defaulted
        t = p.training
        assert t.steps_for(1) == t.min_steps and t.steps_for(10**6) == t.max_steps
        assert t.min_steps <= t.steps_for(10) <= t.max_steps and t.target_loss > 0
    tiny = presets.load("tiny")
    assert tiny.training.steps_for(10) == 10 * tiny.training.steps_per_example
    assert (tiny.gate.nll_tolerance, presets.load("qwen2.5-0.5b-instruct").gate.nll_tolerance) == (0.5, 0.05)


def test_gate_settings_override_the_preset_only_when_set(monkeypatch):
    from bot import config
    from bot.learning import jobs

    for name in ("BOT_GATE_MIN_GAIN", "BOT_GATE_F1_TOLERANCE", "BOT_GATE_NLL_TOLERANCE", "BOT_TRAIN_STEPS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(ROOT / "tests")  # no stray .env
    s = jobs._settings(config.Settings.load(), {})
    assert (s["min_gain"], s["f1_tol"], s["nll_tol"], s["steps"]) == (None, None, None, None)
    monkeypatch.setenv("BOT_GATE_NLL_TOLERANCE", "0.25")
    monkeypatch.setenv("BOT_GATE_MIN_GAIN", "preset")
    assert (config.Settings.load().gate_nll_tolerance, config.Settings.load().gate_min_gain) == (0.25, None)
    monkeypatch.setenv("BOT_GATE_F1_TOLERANCE", "lots")
    with pytest.raises(config.SettingError, match="BOT_GATE_F1_TOLERANCE"):
        config.Settings.load()
