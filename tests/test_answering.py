"""The answering pipeline: citations, fallback, thread context and the answer log.

The model is the one thing faked here (a scripted generator, as simonw's `llm`
does); retrieval, SQLite and the prompt builder are real. The real tiny
model runs the same pipeline in test_models.py.
"""
from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from bot.answering import pipeline as answering, prompts
from bot.knowledge import ingest, retrieval
from bot import store
from fakes import ScriptedGenerator

DOCS = Path(__file__).resolve().parent.parent / "knowledge" / "docs"


def scripted(*replies, fail: Exception | None = None) -> ScriptedGenerator:
    """Replies with scripted texts in order, streaming them a character at a time."""
    return ScriptedGenerator(*replies, piece=1, fail=fail, prompt_tokens=123, adapter="v0001")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    db = store.connect(tmp_path_factory.mktemp("ans") / "bot.db")
    ingest.index_paths(db, [DOCS], DOCS, progress=False)
    return db, retrieval.Searcher(db)


def make(indexed, generator, **kw):
    """An answerer around `generator` (a Generator, or None for none)."""
    db, searcher = indexed
    return answering.Answerer(db, searcher, None if generator is None else lambda: generator, **kw)


def test_citations_map_to_the_passages_shown(indexed):
    gen = scripted("边缘计算是在靠近数据源的地方进行计算[2]，可降低延迟[1]。")
    ans = make(indexed, gen).ask("术语表中边缘计算是如何解释的？")
    assert ans.mode == "llm"
    assert [c.n for c in ans.citations] == [2, 1]
    assert ans.citations[0].text == ans.passages[1].text and ans.citations[0].doc == ans.passages[1].doc
    assert ans.notice == ""


def test_citations_to_missing_passages_are_dropped_and_said(indexed):
    gen = scripted("答案在这里[1]，还有一处[9]。")
    ans = make(indexed, gen).ask("什么是边缘计算？")
    assert "[9]" not in ans.answer and "[1]" in ans.answer
    assert [c.n for c in ans.citations] == [1]
    assert "[9]" in ans.notice


def test_an_answer_citing_nothing_says_so(indexed):
    ans = make(indexed, scripted("边缘计算很重要。")).ask("什么是边缘计算？")
    assert ans.citations == [] and "cites no passage" in ans.notice and not ans.abstained
    # Every passage the model was given is still a source.
    assert [s.n for s in ans.sources] == list(range(1, len(ans.passages) + 1))


def test_sources_list_every_passage_given_cited_ones_first(indexed):
    ans = make(indexed, scripted("在靠近数据源处计算[3]，降低延迟[1]。")).ask("术语表中边缘计算是如何解释的？")
    n = len(ans.passages)
    assert n >= 3 and [s.n for s in ans.sources] == [3, 1] + [k for k in range(2, n + 1) if k != 3]
    assert ans.sources[0].text == ans.passages[2].text
    out = ans.as_json()
    assert out["sources"][:2] == out["citations"] and out["extract"] == "" and out["abstained"] is False


def test_the_model_saying_the_passages_lack_the_answer_is_marked(indexed):
    db, _ = indexed
    for question, reply in (("什么是边缘计算？", "资料中没有相关信息。"),
                            ("What is edge computing?", "The passages do not contain the answer.")):
        ans = make(indexed, scripted(reply)).ask(question)
        assert ans.mode == "llm" and ans.abstained and ans.citations == [] and ans.sources
        assert store.answer(db, ans.id)["abstained"] == 1


def test_a_question_the_knowledge_base_never_covers_is_declined_without_the_model(indexed):
    db, _ = indexed
    gen = scripted("编造的回答[1]")
    zh = make(indexed, gen).ask("公司的年假政策是怎样的？一年有几天年假？")
    assert gen.seen == []  # the model is not asked to answer from unrelated passages
    assert zh.abstained and zh.answer.startswith("知识库中没有") and "最接近的段落" in zh.answer
    assert zh.citations == [] and zh.sources and zh.sources[0].doc in zh.answer and zh.extract == ""
    assert store.answer(db, zh.id)["abstained"] == 1 and zh.as_json()["abstained"] is True
    en = make(indexed, None).ask("What is the office Wi-Fi password?")
    assert en.abstained and en.answer.startswith("The knowledge base does not cover") and "Closest matches" in en.answer


def test_retrieval_only_answers_lead_with_an_extract_and_compact_sources(indexed):
    ans = make(indexed, None).ask("卷积神经网络里的池化层起什么作用？")
    assert not ans.abstained and ans.extract and ans.answer.startswith(ans.extract)
    assert "池化" in ans.extract and len(ans.extract) <= 200 + 10 * 3  # quotes and [n] are extra
    assert "来源：" in ans.answer and "[1] " in ans.answer.split("来源：", 1)[1]
    # Heading paths are cut to their last two levels: no line of the sources runs to 120 characters.
    assert all(len(line) < 90 for line in ans.answer.split("来源：", 1)[1].splitlines())


def test_tokens_stream_to_the_callback(indexed):
    pieces = []
    ans = make(indexed, scripted("流式输出[1]")).ask("什么是边缘计算？", on_token=pieces.append)
    assert "".join(pieces) == "流式输出[1]" == ans.answer


def test_no_model_falls_back_to_passages_with_a_notice(indexed):
    def load():
        raise RuntimeError("the model hub is unreachable")

    db, searcher = indexed
    ans = answering.Answerer(db, searcher, load).ask("What is FairScale described as?")
    assert ans.mode == "retrieval-only" and ans.model is None
    assert "unreachable" in ans.answer and "unavailable" in ans.answer
    assert ans.citations and ans.citations[0].doc == "platform-advantage.md"
    assert "FairScale" in ans.answer  # the passage itself is shown


def test_model_failure_mid_answer_apologises_and_falls_back(indexed):
    ans = make(indexed, scripted(fail=MemoryError("CUDA out of memory"))).ask("什么是边缘计算？")
    assert ans.mode == "retrieval-only"
    assert ans.answer.startswith("抱歉") and ans.citations
    assert "MemoryError" in ans.notice


def test_a_hung_model_never_hangs_the_user(indexed):
    class Hung(ScriptedGenerator):
        def submit(self, messages, max_new_tokens=None, on_token=None):
            return concurrent.futures.Future()  # never resolved

    ans = make(indexed, Hung(), timeout_s=0.2).ask("什么是边缘计算？")
    assert ans.mode == "retrieval-only" and "TimeoutError" in ans.notice


def test_follow_up_in_a_thread_sees_earlier_turns(indexed):
    # the follow-up costs one condense call (the second reply) before its answer (test_condense.py)
    gen = scripted("FairScale 是分布式训练框架[1]。", "FairScale 有什么好处？", "它能提高训练效率[1]。", "无关[1]")
    answerer = make(indexed, gen)
    ctx = answering.Context(platform="slack", user="U1", channel="C1", thread="T1")
    answerer.ask("FairScale 是什么？", ctx)
    answerer.ask("它有什么好处？", ctx)
    second = gen.seen[2]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[1]["content"] == "FairScale 是什么？" and "分布式训练框架" in second[2]["content"]
    # another thread starts fresh: no history, no condense call (a question that names its topic:
    # alone, "它有什么好处？" is declined)
    answerer.ask("FairScale 有什么好处？", answering.Context(platform="slack", user="U1", channel="C1", thread="T2"))
    assert len(gen.seen) == 4 and [m["role"] for m in gen.seen[3]] == ["system", "user"]


def test_the_log_row_is_complete(indexed):
    db, _ = indexed
    ctx = answering.Context(platform="discord", user="U9", channel="C9", thread="T9")
    ans = make(indexed, scripted("回答[1]")).ask("什么是边缘计算？", ctx)
    row = store.answer(db, ans.id)
    for key in ("id", "created_at", "platform", "channel", "thread", "user", "question", "passages", "answer",
                "model", "revision", "adapter", "latency_ms", "retrieval_ms", "prompt_tokens",
                "completion_tokens", "mode"):
        assert row[key] not in (None, ""), key
    assert (row["platform"], row["channel"], row["thread"], row["user"]) == ("discord", "C9", "T9", "U9")
    assert row["model"] == "scripted/model" and row["revision"] == "rev1" and row["adapter"] == "v0001"
    assert row["passages"][0]["id"] is not None and row["passages"][0]["text"] == ans.passages[0].text
    assert row["prompt_tokens"] == 123 and row["completion_tokens"] == len("回答[1]")


def test_retrieval_only_answers_are_logged_too(indexed):
    db, _ = indexed
    ans = make(indexed, None).ask("什么是边缘计算？")
    row = store.answer(db, ans.id)
    assert row["mode"] == "retrieval-only" and row["notice"].startswith("model unavailable")


# --- the prompt builder (pure) --------------------------------------------

P = [prompts.Passage("a.md", "H1", "甲" * 100), prompts.Passage("b.md", "H2", "乙" * 100),
     prompts.Passage("c.md", "H3", "丙" * 100)]


def test_prompt_numbers_and_delimits_passages():
    msgs = prompts.build_messages("问题？", P[:2])
    body = msgs[-1]["content"]
    assert '<passage n="1" source="a.md › H1">' in body and '<passage n="2" source="b.md › H2">' in body
    assert body.index("<passages>") < body.index("问题？")
    assert "引用" in msgs[0]["content"] and "[1]" in msgs[0]["content"]


def test_prompt_answers_in_the_question_language():
    assert prompts.build_messages("What is it?", P)[0]["content"] == prompts.SYSTEM_EN
    assert prompts.build_messages("这是什么？", P)[0]["content"] == prompts.SYSTEM_ZH


def test_context_budget_keeps_the_best_passages_that_fit():
    assert [p.doc for p in prompts.fit_passages(P, 250, len)] == ["a.md", "b.md"]
    trimmed = prompts.fit_passages(P, 60, len)
    assert len(trimmed) == 1 and len(trimmed[0].text) + 16 <= 60


def test_history_budget_keeps_the_most_recent_turns():
    turns = [prompts.Turn(f"q{i}", "a" * 50) for i in range(5)]
    kept = prompts.fit_history(turns, 130, len)
    assert [t.question for t in kept] == ["q3", "q4"]


def test_training_example_is_the_serving_prompt_plus_the_answer():
    serve = prompts.build_messages("问题？", P)
    train = prompts.training_messages("问题？", P, "答案[1]")
    assert train[:-1] == serve and train[-1] == {"role": "assistant", "content": "答案[1]"}
