"""Discord's text for an answer: sources and notice, and the split at 2000 characters.

`split_message` must never break a citation [n] nor lose a character, and
should cut where a reader would: paragraph, line, sentence, then clause.
"""
from __future__ import annotations

import random
import re
import pytest

from bot.answering.pipeline import Answer, Citation
from bot.chat.discord.render import CITATION, answer_text, split_message


def _no_ws(text: str) -> str:
    return re.sub(r"\s", "", text)


def _answer(text, citations=(), notice=""):
    return Answer("a1", text, list(citations), "llm", None, None, 0.0, notice=notice)


def test_answer_text_shows_sources_in_the_answers_language_and_the_notice():
    cites = [Citation(2, "platform-advantage.md", "第3章 > 3.1 术语表", "…")]
    zh = answer_text(_answer("边缘计算是在靠近数据源的地方计算[2]。", cites))
    assert zh == "边缘计算是在靠近数据源的地方计算[2]。\n\n**来源**\n[2] platform-advantage.md › 第3章 > 3.1 术语表"
    en = answer_text(_answer("Nothing in the passages says so.", notice="this answer cites no passage"))
    assert en == "Nothing in the passages says so.\n\n-# this answer cites no passage"
    assert "**Sources**" in answer_text(_answer("FairScale is a library [2].", cites))


def test_short_text_is_one_message_and_empty_is_none():
    assert split_message("hello [1]") == ["hello [1]"]
    assert split_message("  \n ") == []


def test_a_citation_straddling_the_limit_moves_whole_to_the_next_message():
    text = "x" * 1997 + "[12]" + "y" * 100
    chunks = split_message(text)
    assert chunks == ["x" * 1997, "[12]" + "y" * 100]


def test_a_single_long_run_is_cut_at_the_limit():
    assert [len(c) for c in split_message("边" * 4500)] == [2000, 2000, 500]
    assert [len(c) for c in split_message("a" * 4000)] == [2000, 2000]


def test_chinese_is_cut_at_sentence_ends_keeping_their_citations():
    text = "".join(f"第{i}点：边缘计算把计算放在靠近数据源的地方，降低延迟并节省带宽[{i % 3 + 1}]。[{i % 5 + 1}]"
                   for i in range(150))
    chunks = split_message(text)
    assert len(chunks) >= 3 and all(len(c) <= 2000 for c in chunks)
    for c in chunks[:-1]:
        assert re.search(r"。(\[\d+\])*$", c), c[-20:]
    assert not any(c.startswith("[") for c in chunks)
    assert "".join(chunks) == text


def test_paragraphs_then_lines_then_sentences_are_preferred():
    assert split_message("a" * 1500 + "\n\n" + "b. " * 300)[0] == "a" * 1500
    assert split_message("a" * 1200 + "\n" + "b" * 500 + ". " + "c" * 800)[0] == "a" * 1200
    assert split_message("a" * 1200 + ". " + "b" * 1000)[0] == "a" * 1200 + "."
    # A sentence end is not used when its citation would not fit: the space before it is used instead.
    assert split_message("a" * 1500 + " " + "b" * 497 + ".[3]" + "c" * 100)[0] == "a" * 1500


def test_sources_lines_may_start_a_message():
    body = "答案。" * 100 + "\n\n**来源**\n" + "\n".join(f"[{n}] doc{n}.md › 第{n}章" for n in range(1, 121))
    first, second = split_message(body)
    assert re.fullmatch(r"\[\d+\] doc\d+\.md › 第\d+章", first.splitlines()[-1])
    assert re.match(r"\[\d+\] doc", second) and second.endswith("[120] doc120.md › 第120章")


@pytest.mark.parametrize("seed", range(40))
def test_random_texts_keep_every_citation_and_character(seed):
    rng = random.Random(seed)
    pieces = ["词语", "word", " ", "\n", "\n\n", "。", ". ", "[3]", "[12]", "，", "x" * 37, "[7]。"]
    text = "".join(rng.choice(pieces) for _ in range(rng.randint(50, 1500)))
    limit = rng.choice([20, 64, 300, 2000])
    chunks = split_message(text, limit)
    assert all(0 < len(c) <= limit for c in chunks)
    assert _no_ws("".join(chunks)) == _no_ws(text)
    assert sum(len(CITATION.findall(c)) for c in chunks) == len(CITATION.findall(text))
