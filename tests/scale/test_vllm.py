"""Remote generation through a real vLLM CPU server (`make test-scale`): one server for the module.

The server (tools/vllm_server.py) serves a random Llama with 32-wide heads
and LoRA versions with random weights, with both live-adapter routes on: the
filesystem resolver over `adapters/` and the runtime load API. The bot talks
to it only through `RemoteGenerator` and the answering pipeline, and follows
the version in service from the database. Under `make test-scale` a missing
vLLM venv fails these tests; under plain pytest they are skipped.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

if not os.environ.get("BOT_SCALE_TESTS"):
    pytest.skip("real-engine tests run under `make test-scale` (BOT_SCALE_TESTS=1)", allow_module_level=True)

from bot import store  # noqa: E402
from bot.learning import registry  # noqa: E402
from bot.llm import remote  # noqa: E402
from tools import vllm_bench, vllm_server  # noqa: E402

CHAT = [{"role": "user", "content": "什么是用户优势？"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    w = vllm_server.world(root)
    t0 = time.monotonic()
    proc, url = vllm_server.start(w["model"], w["adapters"], root / "vllm.log")
    print(f"vLLM ready in {time.monotonic() - t0:.0f} s at {url}")
    yield {**w, "url": url, "root": root, "proc": proc}
    vllm_server.stop(proc)


@pytest.fixture
def db(tmp_path):
    return store.connect(tmp_path / "bot.db")


def gen_for(server, db, **kw):
    return remote.RemoteGenerator(server["url"], tokenizer=remote.load_tokenizer(str(server["model"])),
                                  pointer=lambda: registry.in_service(db, server["adapters"]), **kw)


def test_streaming_equals_non_streaming_for_the_base_and_an_adapter(server, db):
    gen = gen_for(server, db)
    assert gen.model_id == vllm_server.SERVED
    for version in (None, "v0001"):
        if version:
            store.record_promotion(db, version, None, "promote", "test")
        pieces: list[str] = []
        streamed = gen.generate(CHAT, 24, pieces.append)
        whole = gen.generate(CHAT, 24)
        assert len(pieces) > 1 and "".join(pieces) == streamed.text == whole.text
        assert streamed.adapter == whole.adapter == version and streamed.completion_tokens == whole.completion_tokens > 0


def test_a_promoted_version_is_served_without_a_restart_by_the_resolver(server, db):
    gen = gen_for(server, db)
    base = gen.generate(CHAT, 24)
    # A version trained after the server started: the resolver finds it in the folder by name.
    vllm_server.make_adapter(server["model"], server["adapters"] / "v0005", seed=5)
    registry.promote(db, server["adapters"], "v0005", by="test", base=None)
    served = gen.generate(CHAT, 24, lambda p: None)
    assert served.adapter == "v0005" and served.text != base.text and gen.pointer_error is None
    registry.rollback(db, server["adapters"], by="test", base=None)
    assert gen.generate(CHAT, 24).text == base.text  # back to the base model, still no restart


def test_a_promoted_version_is_served_without_a_restart_by_the_runtime_api(server, db):
    outside = server["root"] / "api-adapters"  # not the resolver's folder: only the API can load from it
    vllm_server.make_adapter(server["model"], outside / "v0101", seed=101)
    gen = gen_for(server, db, server_adapters_dir=str(outside))
    base = gen.generate(CHAT, 24)
    store.record_promotion(db, "v0101", None, "promote", "test")
    served = gen.generate(CHAT, 24, lambda p: None)
    assert served.adapter == "v0101" and served.text != base.text
    gen.unload_adapter("v0101")  # the server forgot it: the next question loads it again
    assert gen.generate(CHAT, 24).text == served.text


def test_an_unknown_version_falls_back_cleanly_and_the_server_keeps_serving(server, db):
    gen = gen_for(server, db)
    store.record_promotion(db, "v0001", None, "promote", "test")
    good = gen.generate(CHAT, 24)
    store.record_promotion(db, "v0999", "v0001", "promote", "test")  # recorded by a tool that skipped checks
    out = gen.generate(CHAT, 24, lambda p: None)
    assert (out.adapter, out.text) == ("v0001", good.text)
    assert "v0999" in gen.pointer_error and "404" in gen.pointer_error


def test_a_corrupt_adapter_is_refused_while_the_server_keeps_serving(server, db):
    bad = server["adapters"] / "v0004"
    shutil.copytree(server["adapters"] / "v0002", bad)
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    gen = gen_for(server, db)
    base = gen.generate(CHAT, 24)
    store.record_promotion(db, "v0004", None, "promote", "test")
    out = gen.generate(CHAT, 24)
    assert out.adapter is None and out.text == base.text and "v0004" in gen.pointer_error
    store.record_promotion(db, "v0002", "v0004", "promote", "test")
    assert gen.generate(CHAT, 24).adapter == "v0002"  # the server is alive and loads a good version


def test_eight_concurrent_questions_all_answer_and_beat_eight_in_a_row(server):
    figures = vllm_bench.bench(server["url"], n=8, max_tokens=32)
    print("vllm bench:", figures)
    assert figures["same_answers"] and figures["ratio"] > 1.5, figures


def test_the_answering_pipeline_over_vllm_records_the_adapter(server, env, monkeypatch):
    from bot import config, wiring

    monkeypatch.setenv("BOT_LLM_URL", server["url"])
    monkeypatch.setenv("BOT_LLM_TOKENIZER", str(server["model"]))
    monkeypatch.setenv("BOT_MODEL", "tiny")
    settings = config.Settings.load()
    db = wiring.connect_db(settings)
    answerer = wiring.build_answerer(settings, db)
    store.record_promotion(db, "v0002", None, "promote", "test")
    answer = answerer.ask("什么是边缘计算？")
    assert (answer.mode, answer.adapter, answer.model) == ("llm", "v0002", vllm_server.SERVED), answer.notice
    row = next(db.query("select adapter, model, completion_tokens from answers where id = ?", [answer.id]))
    assert row["adapter"] == "v0002" and row["completion_tokens"] > 0
