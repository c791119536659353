"""The search seam (bot/answering/searcher.py): the real searcher against the one `Searcher` protocol.

The answerer and `condense.Query.search` call every member without probing, so a
searcher missing one fails here, not on a user's question.
"""
from __future__ import annotations

import inspect

from bot import store
from bot.answering import pipeline
from bot.answering.searcher import Searcher
from bot.knowledge import retrieval
from fakes import ScriptedGenerator

MEMBERS = ("rows", "reranks", "search", "search_parts")


def test_the_real_searcher_satisfies_the_protocol_member_by_member(kb_db):
    searcher = retrieval.Searcher(kb_db)
    assert isinstance(searcher, Searcher)
    for name in ("search", "search_parts"):
        assert list(inspect.signature(getattr(searcher, name)).parameters) == \
            list(inspect.signature(getattr(Searcher, name)).parameters)[1:], name
    assert isinstance(searcher.rows, list) and searcher.rows and {"doc", "heading", "text"} <= set(searcher.rows[0])
    # Nothing else is asked of a searcher: the protocol lists exactly what answering uses.
    assert {m for m in dir(Searcher) if not m.startswith("_")} == set(MEMBERS)


def test_reranks_says_whether_scores_are_the_rerankers_probabilities(kb_db):
    assert store.ranker(kb_db) is not None  # indexing stores one
    served, plain = retrieval.Searcher(kb_db), retrieval.Searcher(kb_db, rerank=False)
    assert served.reranks is True and plain.reranks is False
    hits = served.search("FairScale 是什么？", 3)
    assert hits and all(0.0 <= h.score <= 1.0 for h in hits)


def test_a_top_passage_trimmed_to_the_budget_keeps_its_passage_id_in_the_record(kb_db):
    searcher = retrieval.Searcher(kb_db)
    question = "FairScale 是什么？"
    top = searcher.search(question, 1)[0]
    budget = len(top.text) // 2 + 16  # the scripted model counts characters: the top passage must be cut
    answer = pipeline.Answerer(kb_db, searcher, lambda: ScriptedGenerator(), context_budget=budget).ask(question)
    assert len(answer.passages) == 1 and len(answer.passages[0].text) < len(top.text)
    assert store.answer(kb_db, answer.id)["passages"][0]["id"] == top.passage_id
