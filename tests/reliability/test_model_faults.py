"""The model fails mid-answer (out of memory, or any error) after streaming some tokens.

The person gets an apology and the retrieval-only answer, the answer row
says so (mode and notice), and the process stays up: the next question is
answered by the model. Real: the answering pipeline over the indexed
knowledge base, SQLite, the model worker thread, bolt over loopback HTTP,
and the tiny model, whose forward pass is made to raise torch's own
OutOfMemoryError part-way through a generation.
"""
from __future__ import annotations

import asyncio

import pytest

from bot.answering import pipeline as answering
from bot.llm import generation, presets
from bot.knowledge import retrieval
from bot import store
from bot.commands import Caller
from chat_harness import make_commands, slack_served
from fakes import ScriptedGenerator

QUESTION = "什么是边缘计算？"


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError (also a RuntimeError), without importing torch."""


@pytest.fixture(scope="module")
def searcher(indexed_kb):
    return retrieval.Searcher(indexed_kb.db)


@pytest.mark.parametrize("error, apology", [
    (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "ran out of memory"),
    (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED"), "failed while answering"),
    (MemoryError(), "ran out of memory"),
])
def test_a_failure_after_some_tokens_gives_an_apology_and_the_passages_then_the_next_answer_works(
        kb_db, searcher, error, apology):
    gen = ScriptedGenerator("FairScale is a distributed training library [1].", fail=error, fail_after=3)
    answerer = answering.Answerer(kb_db, searcher, lambda: gen)
    streamed: list[str] = []
    ans = answerer.ask("What is FairScale described as?", on_token=streamed.append)
    assert len(streamed) == 3  # the failure came mid-answer, after text was shown
    assert ans.mode == "retrieval-only" and ans.answer.startswith("Sorry, something went wrong.")
    assert apology in ans.answer and ans.citations and ans.citations[0].doc == "platform-advantage.md"
    assert ans.notice.startswith(f"model error: {type(error).__name__}")
    row = store.answer(kb_db, ans.id)
    assert (row["mode"], row["notice"], row["answer"]) == ("retrieval-only", ans.notice, ans.answer)

    gen.fail = None  # the fault passes (memory freed): the same answerer answers with the model
    again = answerer.ask("What is FairScale described as?")
    assert again.mode == "llm" and again.answer.startswith("FairScale is a distributed") and again.notice == ""
    assert answerer.queue_depth() == 0


def test_the_tiny_model_running_out_of_memory_mid_generation_keeps_the_worker_serving(
        tiny_model_dir, kb_db, searcher, tmp_path):
    import torch

    served = generation.load("tiny", cache_dir=tiny_model_dir.parent, adapters_dir=tmp_path / "adapters",
                             trainable=False)
    budget = presets.load("tiny").generation.context_budget_tokens
    model, calls = served.model, []
    forward = model.forward

    def failing(*args, **kwargs):  # the prompt, then three tokens; the fourth step finds no memory
        calls.append(1)
        if len(calls) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return forward(*args, **kwargs)

    with generation.ModelWorker(served) as worker:
        answerer = answering.Answerer(kb_db, searcher, lambda: worker, context_budget=budget, max_new_tokens=24)
        streamed: list[str] = []
        model.forward = failing
        try:
            broken = answerer.ask(QUESTION, answering.Context("slack", "U1", "C1", "T1"), on_token=streamed.append)
        finally:
            del model.forward  # the instance attribute goes; the class's forward serves again
        assert streamed and len(calls) == 5
        assert broken.mode == "retrieval-only" and broken.answer.startswith("抱歉")
        assert "内存不足" in broken.answer and "OutOfMemoryError" in broken.notice and broken.citations
        assert store.answer(kb_db, broken.id)["mode"] == "retrieval-only"
        fine = answerer.ask(QUESTION)
        assert fine.mode == "llm" and fine.notice != broken.notice and worker._thread.is_alive()
    assert worker.calls == 1  # the failed generation never counted as one


@pytest.mark.asyncio
async def test_through_slack_the_streamed_text_is_replaced_by_the_apology_and_the_next_ask_is_answered(
        kb_db, searcher):
    gen = ScriptedGenerator("边缘计算是在靠近数据源的地方进行计算[1]，可以降低延迟。", delay=0.1,
                            fail=OutOfMemoryError("CUDA out of memory"), fail_after=4)
    cmds = make_commands(kb_db, gen, searcher=searcher)
    async with slack_served(cmds, update_every_s=0.1) as slack:
        status, _, seconds = await slack.command("/ask", QUESTION)
        assert status == 200 and seconds < 1
        (final,) = await slack.wait_finals(1)
        updates = slack.recorder.of("chat.update")
        assert any(u["text"].startswith("边缘") and not u.get("blocks") for u in updates[:-1])  # streamed first
        assert final["text"].startswith("抱歉，出了点问题。") and "内存不足" in final["text"]
        notice = next(b for b in final["blocks"] if b.get("block_id") == "notice")["elements"][0]["text"]
        assert notice.startswith(":warning: Retrieval-only answer") and "OutOfMemoryError" in notice
        (row,) = slack.answers()
        assert row["mode"] == "retrieval-only" and "OutOfMemoryError" in row["notice"]
        assert final["blocks"][-1]["elements"][0]["value"] == row["id"]  # 👍/👎 work on it too

        gen.fail, gen.delay = None, 0.0
        assert (await slack.command("/ask", QUESTION, user="U0BOB"))[0] == 200
        finals = await slack.wait_finals(2)
        assert finals[1]["text"].startswith("边缘计算是在靠近数据源的地方进行计算[1]")
        assert [r["mode"] for r in slack.answers()] == ["retrieval-only", "llm"]
        # The slot is released once the listener has also cleared the answer's in-flight record,
        # one database write after the final chat.update the recorder saw.
        for _ in range(100):
            if cmds.guard.depth() == 0:
                break
            await asyncio.sleep(0.02)
        assert cmds.guard.depth() == 0 and cmds.answerer.queue_depth() == 0


def test_a_caller_context_is_recorded_with_the_fallback(kb_db, searcher):
    gen = ScriptedGenerator(fail=OutOfMemoryError("out of memory"))  # before any token: the same fallback
    cmds = make_commands(kb_db, gen, searcher=searcher)
    ans = cmds.ask(Caller("discord", "42", "7", "7"), "What is FairScale described as?")
    row = store.answer(kb_db, ans.id)
    assert (row["platform"], row["user"], row["channel"], row["mode"]) == ("discord", "42", "7", "retrieval-only")
    assert "ran out of memory" in row["answer"]
