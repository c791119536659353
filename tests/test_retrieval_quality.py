"""Retrieval quality: English hyphens and inflections, the learned re-ranker, what Hit.score means."""
from __future__ import annotations

import numpy as np
import pytest

from bot import store
from bot.knowledge import crosslingual, retrieval, textproc

PRIVACY_EVIDENCE = "隐私保护技术"


def test_hyphenated_words_count_as_their_parts():
    assert textproc.english_words("privacy-protecting techniques") == ["privaci", "protect", "techniqu"]
    # In passage and question tokens the whole word stays too: GPT-3 is closer to GPT-3 than to GPT-4.
    assert textproc.english_words("GPT-3", compounds=True) == ["gpt-3", "gpt"]
    assert "gpt-3" in textproc.tokens("GPT-3 模型")


@pytest.mark.parametrize("phrase", ["privacy-protecting", "privacy protection", "protected privacy",
                                    "protects privacy"])
def test_inflected_and_hyphenated_english_reaches_the_same_chinese_words(indexed_kb, phrase):
    lexicon = store.lexicon(indexed_kb.db)
    words = crosslingual.translate(f"What {phrase} techniques are recommended?", lexicon)
    assert {"隐私", "保护"} <= set(words), words


def test_naming_a_hyphenated_document_leaves_its_words_out_of_the_match():
    lexicon = {"platform": [("平台", 1.0)], "advantag": [("优势", 1.0)]}
    aliases = {"platform-advantage.md": crosslingual.doc_aliases("platform-advantage.md", lexicon)}
    named, rest = crosslingual.doc_mentions("What does the platform-advantage article say about GPUs?", aliases)
    assert named == {"platform-advantage.md"}
    assert "platform" not in rest and "advantage" not in rest and "GPUs" in rest


@pytest.mark.parametrize("question", [
    "What privacy-protecting techniques does the platform article recommend?",
    "What privacy protection techniques does the platform article recommend?",
])
def test_english_privacy_question_finds_the_passage(indexed_kb, question):
    hits = retrieval.Searcher(indexed_kb.db).search(question, 3)
    assert any(h.doc == "platform-advantage.md" and PRIVACY_EVIDENCE in h.text for h in hits), \
        [(h.heading, h.text[:60]) for h in hits]


# --- the learned re-ranker ------------------------------------------------------

from bot.knowledge import ingest, ranker  # noqa: E402


def test_index_trains_and_stores_a_ranker_that_search_uses(indexed_kb):
    stored = store.ranker(indexed_kb.db)
    assert stored is not None
    model = ranker.Ranker.from_json(stored["model"])
    assert model is not None and model.trained_on >= 100  # questions generated from the passages
    searcher = retrieval.Searcher(indexed_kb.db)
    assert searcher.ranker is not None


def test_scores_are_probabilities_best_first(indexed_kb):
    searcher = retrieval.Searcher(indexed_kb.db)
    for question in ("为防止设备损坏造成业务停摆，技术安全风险部分提出了什么对策？", "What is FairScale?", "量子计算机的冷却系统"):
        hits = searcher.search(question, 5)
        scores = [h.score for h in hits]
        assert all(0.0 <= s <= 1.0 for s in scores)
        assert scores == sorted(scores, reverse=True)


def test_score_is_comparable_across_questions(indexed_kb):
    # A question the knowledge base answers word for word scores higher than one it does not cover:
    # the property an abstention threshold needs, which raw BM25 (unbounded, per question) lacks.
    searcher = retrieval.Searcher(indexed_kb.db)
    covered = searcher.search("建立硬件备份系统，确保在硬件故障时能够快速恢复服务", 1)[0]
    uncovered = searcher.search("火星基地的氧气循环怎么维护？", 1)
    assert "建立硬件备份系统" in covered.text
    assert not uncovered or uncovered[0].score < covered.score


def test_questions_the_documents_do_not_cover_score_below_ones_they_answer(indexed_kb):
    # The re-ranker also learns from generated questions asked without their answer, so its
    # score says whether a passage answers, not only which passage answers best.
    searcher = retrieval.Searcher(indexed_kb.db)
    answered = ["池化层有什么作用？", "FairScale 是什么？", "What is differential privacy used for?", "常见的词向量模型有哪些？"]
    uncovered = ["公司年会应该订哪家餐厅？", "火星基地的氧气循环怎么维护？", "How do I reset my VPN password?",
                 "Which football team won the 2018 World Cup?"]

    def best(question):
        hits = searcher.search(question, 1)
        return hits[0].score if hits else 0.0

    assert max(best(q) for q in uncovered) < np.median([best(q) for q in answered])


def test_training_is_deterministic_and_uses_no_evaluation_questions(indexed_kb):
    rows = store.passages(indexed_kb.db)
    lexicon = store.lexicon(indexed_kb.db)
    first, second = ranker.generate_questions(rows, lexicon), ranker.generate_questions(rows, lexicon)
    assert first == second and len(first) > 300
    texts = "\n".join(r["text"] for r in rows)
    assert all(evidence in texts for _, evidence in first)  # every label is a span of an indexed passage
    import json
    from pathlib import Path

    eval_questions = {json.loads(line)["question"] for f in Path(ingest.__file__).parents[2].glob("knowledge/eval/*.jsonl")
                      for line in f.read_text(encoding="utf-8").splitlines() if line.strip()}
    assert not eval_questions & {q for q, _ in first}


def test_without_a_stored_ranker_search_falls_back_to_bm25(indexed_kb, tmp_path):
    import sqlite3

    copy = sqlite3.connect(tmp_path / "copy.db")
    indexed_kb.db.conn.backup(copy)
    copy.close()
    db = store.connect(tmp_path / "copy.db")
    with_ranker = retrieval.Searcher(db).search("FairScale 是什么？", ranker.DEPTH)
    store.save_ranker(db, None, "none")
    searcher = retrieval.Searcher(db)
    assert searcher.ranker is None
    hits = searcher.search("FairScale 是什么？", ranker.DEPTH)
    assert hits and "FairScale" in hits[0].text and hits[0].score > 1.0  # a BM25 score, not a probability
    assert {h.passage_id for h in hits} == {h.passage_id for h in with_ranker}  # re-ordering, not re-finding
    # Indexing again notices the missing ranker and trains it.
    kb = indexed_kb.kb_dir
    ingest.index_paths(db, [kb], kb, progress=False)
    assert retrieval.Searcher(db).ranker is not None


def test_a_ranker_for_other_features_is_ignored():
    assert ranker.Ranker.from_json('{"version": -1, "features": []}') is None
    assert ranker.Ranker.from_json(None) is None


def test_a_tiny_knowledge_base_gets_no_ranker_and_still_searches(db, tmp_path):
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "note.md").write_text("# 备份\n\n建立硬件备份系统。\n", encoding="utf-8")
    ingest.index_paths(db, [kb], kb, progress=False)
    assert store.ranker(db) is None  # too few generated questions to learn from
    hits = retrieval.Searcher(db).search("硬件备份", 3)
    assert hits and "硬件备份" in hits[0].text


def test_a_large_knowledge_base_trains_on_a_bounded_sample(monkeypatch):
    rows = [{"doc": "a.md", "heading": f"第{i}章 标题{i}", "text": f"第{i}段：数据隐私保护技术包括差分隐私和联邦学习等多种方法。"}
            for i in range(40)]
    monkeypatch.setattr(ranker, "MAX_PASSAGES", 10)
    questions = ranker.generate_questions(rows, {})
    sources = {ev for _, ev in questions}
    assert questions and len({r["text"] for r in rows if any(ev in r["text"] for ev in sources)}) <= 10
