"""Retrieval quality: English hyphens and inflections, the learned re-ranker, what Hit.score means."""
from __future__ import annotations

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
