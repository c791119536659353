"""The generator seam (bot/llm/generator.py): every implementation against the one `Generator` protocol.

This is the checklist for a new engine: add it to `implementations` below
(the remote client, bot/llm/remote.py, runs here against the loopback OpenAI
stub, tests/openai_stub.py; the real vLLM server is tests/scale/). The answerer calls every member without probing,
so a generator missing one fails here, not on a user's question.
"""
from __future__ import annotations

import inspect
from concurrent.futures import Future
from contextlib import contextmanager

import pytest

from bot.answering import pipeline
from bot.knowledge import retrieval
from bot.llm.generator import Generation, Generator, is_out_of_memory
from fakes import ScriptedGenerator
from openai_stub import Stub

QUESTION = [{"role": "system", "content": "你是知识库助手。"}, {"role": "user", "content": "什么是用户优势？"}]
METHODS = ("count_tokens", "generate", "submit")


@contextmanager
def scripted(tiny_model_dir, tmp_path):
    yield ScriptedGenerator("用户优势[1]")


@contextmanager
def local(tiny_model_dir, tmp_path):
    from bot.llm import generation

    yield generation.load("tiny", cache_dir=tiny_model_dir.parent, adapters_dir=tmp_path / "adapters",
                          trainable=False)


@contextmanager
def worker(tiny_model_dir, tmp_path):
    from bot.llm import generation

    with local(tiny_model_dir, tmp_path) as gen, generation.ModelWorker(gen) as w:
        yield w


@contextmanager
def remote(tiny_model_dir, tmp_path):
    from bot.llm import remote as remote_llm

    stub = Stub()
    # The tiny model's tokenizer.json counts tokens, as BOT_LLM_TOKENIZER does in a web replica.
    gen = remote_llm.RemoteGenerator(stub.url, tokenizer=remote_llm.load_tokenizer(str(tiny_model_dir)))
    try:
        yield gen
    finally:
        gen.close()
        stub.close()


implementations = pytest.mark.parametrize("make", [scripted, local, worker, remote],
                                          ids=["scripted", "local", "worker", "remote"])


@pytest.fixture
def model_dir(request):
    """The tiny model only for the real implementations: the fake's checks need no torch."""
    if request.node.callspec.params["make"] is scripted:
        return None
    return request.getfixturevalue("tiny_model_dir")


def _parameters(fn) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values() if p.name != "self"]


@implementations
def test_it_has_every_member_with_the_protocols_signature(make, model_dir, tmp_path):
    with make(model_dir, tmp_path) as gen:
        assert isinstance(gen, Generator)  # runtime_checkable: every member is present
        assert isinstance(gen.model_id, str) and gen.model_id and isinstance(gen.revision, str) and gen.revision
        assert isinstance(gen.depth, int) and gen.depth >= 0  # what /healthz reads, without probing
        assert gen.active_adapter is None or isinstance(gen.active_adapter, str)
        for name in METHODS:
            assert _parameters(getattr(gen, name)) == _parameters(getattr(Generator, name)), name


@implementations
def test_it_counts_generates_streaming_and_submits(make, model_dir, tmp_path):
    with make(model_dir, tmp_path) as gen:
        n = gen.count_tokens("什么是用户优势？")
        assert isinstance(n, int) and n > 0
        pieces: list[str] = []
        out = gen.generate(QUESTION, 8, pieces.append)
        assert isinstance(out, Generation) and out.text and "".join(pieces) == out.text
        assert 0 < out.completion_tokens and out.prompt_tokens > 0
        future = gen.submit(QUESTION, 8, None)
        assert isinstance(future, Future)
        assert future.result(timeout=60).text == gen.generate(QUESTION, 8).text


@implementations
def test_a_model_error_is_kept_in_the_future_not_raised_by_submit(make, model_dir, tmp_path):
    with make(model_dir, tmp_path) as gen:
        if isinstance(gen, ScriptedGenerator):
            gen.fail = ValueError("prompt exceeds the model's context")
        future = gen.submit(QUESTION, 10**6)  # more new tokens than any context holds
        with pytest.raises(ValueError, match="context"):
            future.result(timeout=60)


def test_the_answerer_builds_its_generator_once_on_first_use(kb_db):
    built: list[ScriptedGenerator] = []

    def factory():
        built.append(ScriptedGenerator())
        return built[-1]

    # A private copy: the session's indexed database is shared and must stay without answers.
    answerer = pipeline.Answerer(kb_db, retrieval.Searcher(kb_db), factory)
    assert built == [] and not answerer.generator_loaded
    first = answerer.ask("什么是边缘计算？")
    answerer.ask("什么是边缘计算？")
    assert len(built) == 1 and len(built[0].seen) == 2
    assert (first.mode, first.model) == ("llm", "scripted/model")


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, without importing torch."""


@pytest.mark.parametrize("error, oom", [
    (OutOfMemoryError("Tried to allocate 2.00 GiB"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
    (MemoryError(), True),
    (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED"), False),
    (ValueError("prompt exceeds the model's context"), False),
])
def test_out_of_memory_is_told_one_way_for_loading_serving_and_answering(error, oom):
    assert is_out_of_memory(error) is oom
