"""The remote generator (bot/llm/remote.py) against a loopback OpenAI-format stub: the wire format, the
adapter in service, load shedding, a server that is down or stalls. The real vLLM server: tests/scale/."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from bot import store
from bot.answering import pipeline
from bot.knowledge import retrieval
from bot.llm import remote
from bot.llm.generator import EngineBusy, EngineUnavailable, Generator
from openai_stub import BASE, Stub, answer_for

CHAT = [{"role": "system", "content": "你是知识库助手。"}, {"role": "user", "content": "what is edge computing"}]


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.close()


@pytest.fixture
def tokenizer(tiny_model_dir):
    return remote.load_tokenizer(str(tiny_model_dir))


def make(stub, tokenizer, version=None, **kw):
    box = {"v": version}
    gen = remote.RemoteGenerator(stub.url, tokenizer=tokenizer, pointer=lambda: box["v"], **kw)
    gen.box = box
    return gen


def test_it_streams_piece_by_piece_and_equals_the_whole_answer(stub, tokenizer):
    gen = make(stub, tokenizer)
    assert isinstance(gen, Generator) and gen.model_id == BASE
    pieces: list[str] = []
    streamed = gen.generate(CHAT, 32, pieces.append)
    whole = gen.submit(CHAT, 32).result(timeout=10)
    assert len(pieces) > 2 and "".join(pieces) == streamed.text == whole.text == answer_for(BASE, CHAT)
    assert streamed.completion_tokens == len(pieces) and streamed.prompt_tokens > 0
    assert [r["stream"] for r in stub.requests] == [True, False] and stub.requests[0]["max_tokens"] == 32


def test_counting_tokens_uses_the_tokenizer_alone(tokenizer, stub, tiny_model_dir):
    from transformers import AutoTokenizer

    full = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "什么是用户优势？ edge computing"
    assert make(stub, tokenizer).count_tokens(text) == len(full(text, add_special_tokens=False)["input_ids"]) > 3


def test_importing_it_loads_neither_torch_nor_transformers():
    code = "import sys, bot.llm.remote, bot.wiring; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_it_asks_for_the_version_in_service_and_records_it(stub, tokenizer):
    gen = make(stub, tokenizer, "v0001")
    out = gen.generate(CHAT, 16, lambda p: None)
    assert stub.requests[-1]["model"] == "v0001" and out.adapter == "v0001"
    assert out.text == answer_for("v0001", CHAT)
    gen.box["v"] = None  # rollback to the base model: the next question follows, nothing restarts
    assert gen.generate(CHAT, 16).adapter is None and stub.requests[-1]["model"] == BASE


def test_an_unknown_version_falls_back_to_the_last_that_served_and_says_why(stub, tokenizer):
    gen = make(stub, tokenizer, "v0001")
    assert gen.generate(CHAT, 16).adapter == "v0001"
    gen.box["v"] = "v0009"
    out = gen.generate(CHAT, 16, lambda p: None)
    assert out.adapter == "v0001" and out.text == answer_for("v0001", CHAT)
    assert "v0009" in gen.pointer_error and "404" in gen.pointer_error
    before = len(stub.requests)
    gen.generate(CHAT, 16)  # refused lately: not asked for again on every question
    assert [r["model"] for r in stub.requests[before:]] == ["v0001"]
    stub.adapters.add("v0009")
    gen.retry_bad_s = 0  # once the server can serve it, the pointer is followed
    assert gen.generate(CHAT, 16).adapter == "v0009" and gen.pointer_error is None


def test_the_runtime_api_loads_a_promoted_version_on_first_use(stub, tokenizer):
    stub.loadable.add("v0002")
    gen = make(stub, tokenizer, "v0002", server_adapters_dir="/srv/adapters/")
    out = gen.generate(CHAT, 16, lambda p: None)
    assert out.adapter == "v0002" and stub.loads == [{"lora_name": "v0002", "lora_path": "/srv/adapters/v0002"}]
    gen.box["v"] = "v0003"  # the server cannot load it: the base model... no, the last good version answers
    assert gen.generate(CHAT, 16).adapter == "v0002" and "cannot load /srv/adapters/v0003" in gen.pointer_error


@pytest.mark.parametrize("status, header, wait", [(429, "7", 7), (503, None, 5)])
def test_load_shedding_is_busy_with_when_to_try_again(stub, tokenizer, status, header, wait):
    stub.status, stub.retry_after = status, header
    with pytest.raises(EngineBusy) as busy:
        make(stub, tokenizer).submit(CHAT, 16, lambda p: None).result(timeout=10)
    assert busy.value.retry_after == wait


def test_a_server_that_is_down_is_unavailable_at_once(tokenizer):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    gen = remote.RemoteGenerator(f"http://127.0.0.1:{port}/v1", tokenizer=tokenizer)
    t0 = time.monotonic()
    with pytest.raises(EngineUnavailable, match="cannot be reached"):
        gen.generate(CHAT, 16)
    assert time.monotonic() - t0 < 5 and gen.model_id.startswith("http://127.0.0.1")


def test_a_server_that_stalls_mid_answer_times_out(stub, tokenizer):
    stub.stall_s = 3
    gen = make(stub, tokenizer, read_timeout_s=0.5)
    pieces: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(EngineUnavailable, match="stopped answering"):
        gen.generate(CHAT, 16, pieces.append)
    assert time.monotonic() - t0 < 2.5 and len(pieces) == 1


def test_a_prompt_the_server_refuses_is_the_callers_error(stub, tokenizer):
    with pytest.raises(ValueError, match="context"):
        make(stub, tokenizer).submit(CHAT, 10**6).result(timeout=10)


def test_sse_comments_and_error_events(stub):
    lines = [": ping", "", 'data: {"choices": [{"delta": {"content": "a"}}]}', "event: x",
             'data: {"error": {"message": "engine died"}}']
    events = remote.parse_sse(iter(lines))
    assert next(events)["choices"][0]["delta"]["content"] == "a"
    with pytest.raises(EngineUnavailable, match="engine died"):
        next(events)
    with pytest.raises(EngineUnavailable, match="malformed"):
        list(remote.parse_sse(iter(["data: {not json"])))


def test_the_answerer_says_busy_or_unreachable_and_gives_the_passages(stub, tokenizer, kb_db):
    searcher = retrieval.Searcher(kb_db)
    stub.status, stub.retry_after = 429, "9"
    answerer = pipeline.Answerer(kb_db, searcher, lambda: make(stub, tokenizer), timeout_s=10)
    busy = answerer.ask("What is edge computing?")
    assert busy.mode == "retrieval-only" and "busy, try again in 9 s" in busy.answer and busy.citations
    stub.close()
    down = answerer.ask("What is edge computing?")
    assert down.mode == "retrieval-only" and "cannot be reached" in down.answer
    assert [r["mode"] for r in kb_db.query("select mode from answers")] == ["retrieval-only"] * 2


def test_wiring_serves_the_database_pointer_and_adopts_an_old_pointer_file(stub, env, tiny_model_dir, monkeypatch):
    from bot import config, wiring
    from bot.llm import hotswap

    adapters = env.tmp / "adapters"
    hotswap.set_pointer(adapters, "v0001")  # data from before the pointer moved into the database
    monkeypatch.setenv("BOT_MODEL", "tiny")
    monkeypatch.setenv("BOT_CACHE_DIR", str(tiny_model_dir.parent))
    monkeypatch.setenv("BOT_LLM_URL", stub.url)
    settings = config.Settings.load()
    db = wiring.connect_db(settings)
    answerer = wiring.build_answerer(settings, db)
    assert store.in_service(db) == (True, "v0001")  # adopted on start, once
    first = answerer.ask("什么是边缘计算？")
    assert (first.mode, first.adapter, first.model) == ("llm", "v0001", BASE)
    assert isinstance(answerer.generator(), remote.RemoteGenerator)
    store.record_promotion(db, None, "v0001", "rollback", "test")  # another replica rolled back
    assert answerer.ask("什么是边缘计算？").adapter is None and stub.requests[-1]["model"] == BASE
    wiring.build_answerer(settings, db)
    assert [p["action"] for p in store.promotions(db)] == ["adopt", "rollback"]
