"""The model layer on a real tiny model built offline: presets, 4-bit loading,
streaming, adapter hot swap, the pointer, the batching worker, and the
regression test for bitsandbytes' CPU repack trap (STACK.md, trap A)."""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from bot.llm import generation, presets

QUESTION = [{"role": "system", "content": "你是知识库助手。"}, {"role": "user", "content": "什么是用户优势？"}]
TARGETS = {"v-a": "数据是用户优势的核心。", "v-b": "平台优势来自网络效应。"}


def _load(tiny_model_dir, adapters_dir, quantize=False):
    return generation.load("tiny", cache_dir=tiny_model_dir.parent, adapters_dir=adapters_dir, quantize=quantize)


def _train_lora(model, tokenizer, answer, steps=30, lr=1e-2):
    """A few steps of LoRA toward one answer with the product's own trainer; returns the PeftModel and its losses."""
    from bot.llm import training

    peft_model = training.add_lora(model, presets.load("tiny").lora)
    result = training.train(peft_model, tokenizer, [QUESTION + [{"role": "assistant", "content": answer}]],
                            steps=steps, learning_rate=lr, seed=0)
    return peft_model, result.losses


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir, tmp_path_factory) -> Path:
    """An adapters folder holding two versions, each trained toward its own answer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("adapters")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for version, answer in TARGETS.items():
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        peft_model, losses = _train_lora(model, tokenizer, answer)
        assert losses[-1] < 0.5 * losses[0]
        peft_model.save_pretrained(root / version)
    return root


# -- presets ------------------------------------------------------------------

def test_presets_load_with_their_tables():
    assert {"qwen2.5-0.5b-instruct", "qwen2.5-7b-instruct", "tiny"} <= set(presets.names())
    small = presets.load("qwen2.5-0.5b-instruct")
    assert small.hub_id == "Qwen/Qwen2.5-0.5B-Instruct" and re.fullmatch(r"[0-9a-f]{40}", small.revision)
    assert small.architecture["hidden_size"] == 896 and small.architecture["num_key_value_heads"] == 2
    assert small.architecture["tie_word_embeddings"] is True and small.architecture["vocab_size"] == 151936
    big = presets.load("qwen2.5-7b-instruct")
    assert big.quantization.load_in_4bit and big.quantization.quant_type == "nf4" and big.quantization.double_quant
    assert big.quantization.compute_dtype == "bfloat16" and big.architecture["num_hidden_layers"] == 28
    assert big.lora.r > 0 and "q_proj" in big.lora.target_modules and big.training.seed == 1234
    tiny = presets.load("tiny")
    assert tiny.is_local and tiny.local_name == "tiny" and tiny.generation.temperature == 0
    assert tiny.raw["generation"]["max_new_tokens"] == tiny.generation.max_new_tokens


def test_unknown_preset_names_the_available_ones():
    with pytest.raises(presets.PresetError, match=r"unknown model preset 'nope'.*qwen2.5-0.5b-instruct.*tiny"):
        presets.load("nope")
    with pytest.raises(presets.PresetError):
        presets.load("../models/tiny")
    with pytest.raises(generation.ModelUnavailable, match="available presets"):
        generation.load("nope", cache_dir=Path("."), adapters_dir=Path("."))


# -- the tiny model -------------------------------------------------------------

def test_tiny_build_is_cached_with_its_meta(tiny_model_dir):
    from bot.llm import tinymodel

    meta = json.loads((tiny_model_dir / "meta.json").read_text())
    assert meta["steps"] == 300 and meta["final_loss"] < 0.6 * meta["first_loss"]
    assert 200_000 < meta["params"] < 1_000_000 and len(meta["data_hash"]) == 64
    t0 = time.perf_counter()
    assert tinymodel.build(tiny_model_dir.parent, lambda: pytest.fail("an existing build reads no documents")) == tiny_model_dir
    assert time.perf_counter() - t0 < 0.5  # built once: a second call only checks
    assert not list(tiny_model_dir.parent.glob(".tiny-*")), "a temporary build folder was left behind"


def test_tiny_loads_in_4bit_and_streams_its_answer(tiny_model_dir, tmp_path):
    import bitsandbytes as bnb

    gen = _load(tiny_model_dir, tmp_path, quantize=True)
    layers = [m for m in gen.base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14 and all(m.support_avx512bf16_for_cpu is False for m in layers)
    assert gen.model_id == str(tiny_model_dir) and gen.revision.startswith("local-")
    pieces: list[str] = []
    out = gen.generate(QUESTION, max_new_tokens=12, on_token=pieces.append)
    assert out.text.strip() and 0 < out.completion_tokens <= 12 and out.adapter is None
    assert out.prompt_tokens == gen.count_tokens(gen.render(QUESTION))
    assert len(pieces) > 1 and "".join(pieces) == out.text
    again = gen.generate(QUESTION, max_new_tokens=12)
    assert again.text == out.text  # greedy: deterministic


def test_model_unavailable_when_tiny_is_not_built(tmp_path):
    with pytest.raises(generation.ModelUnavailable, match="python -m bot models build-tiny"):
        generation.load("tiny", cache_dir=tmp_path / "empty", adapters_dir=tmp_path)


def test_model_unavailable_for_an_unknown_hub_id_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    (tmp_path / "ghost.toml").write_text(
        'hub_id = "no-such-org/no-such-model-xyz"\nrevision = "main"\ncontext_length = 512\ndtype = "float32"\n')
    monkeypatch.setattr(presets, "MODELS_DIR", tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    # The hub library reads the variable once at import; the test session has imported it already.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(generation.ModelUnavailable, match="no-such-org/no-such-model-xyz.*offline"):
        generation.load("ghost", cache_dir=tmp_path, adapters_dir=tmp_path)


# -- adapters and the pointer -----------------------------------------------------

def test_adapters_switch_without_reloading_and_follow_the_pointer(tiny_model_dir, adapter_dirs, tmp_path):
    gen = _load(tiny_model_dir, tmp_path / "no-pointer-here")
    base = gen.generate(QUESTION, max_new_tokens=10).text
    gen.load_adapter("v-a", adapter_dirs / "v-a")
    gen.load_adapter("v-b", adapter_dirs / "v-b")
    assert gen.adapters() == ["v-a", "v-b"] and gen.active_adapter is None
    assert gen.generate(QUESTION, max_new_tokens=10).text == base  # loading does not switch
    gen.use_adapter("v-a")
    a = gen.generate(QUESTION, max_new_tokens=10)
    gen.use_adapter("v-b")
    b = gen.generate(QUESTION, max_new_tokens=10)
    assert (a.adapter, b.adapter) == ("v-a", "v-b")
    assert a.text.startswith(TARGETS["v-a"][:4]) and b.text.startswith(TARGETS["v-b"][:4])
    assert len({base, a.text, b.text}) == 3
    gen.use_adapter(None)
    assert gen.generate(QUESTION, max_new_tokens=10).text == base
    gen.drop_adapter("v-b")
    assert gen.adapters() == ["v-a"]
    gen.drop_adapter("v-a")  # the last one: the plain base model serves again
    assert gen.model is gen.base and gen.generate(QUESTION, max_new_tokens=10).text == base

    # The pointer: the serving process follows promotions at its next request.
    served = tmp_path / "served"
    shutil.copytree(adapter_dirs, served)
    gen.adapters_dir = served
    generation.set_pointer(served, "v-b")
    assert (served / "current").read_text().strip() == "v-b"
    assert gen.generate(QUESTION, max_new_tokens=10) == b
    generation.set_pointer(served, "v-a")
    assert gen.generate(QUESTION, max_new_tokens=10) == a
    generation.set_pointer(served, "v-missing")  # a bad promotion: keep serving v-a, say why
    assert gen.generate(QUESTION, max_new_tokens=10).adapter == "v-a"
    assert "v-missing" in gen.pointer_error
    (served / "current").unlink()
    assert gen.generate(QUESTION, max_new_tokens=10).adapter is None


def test_a_broken_adapter_is_refused_and_the_current_one_stays(tiny_model_dir, adapter_dirs, tmp_path):
    gen = _load(tiny_model_dir, tmp_path, quantize=True)  # the serving configuration: 4-bit
    gen.load_adapter("v-a", adapter_dirs / "v-a")
    gen.use_adapter("v-a")
    before = gen.generate(QUESTION, max_new_tokens=10)
    assert before.text.startswith(TARGETS["v-a"][:4])

    no_config = tmp_path / "no-config"
    shutil.copytree(adapter_dirs / "v-b", no_config)
    (no_config / "adapter_config.json").unlink()
    no_weights = tmp_path / "no-weights"
    shutil.copytree(adapter_dirs / "v-b", no_weights)
    (no_weights / "adapter_model.safetensors").unlink()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(adapter_dirs / "v-b", corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    wrong_shape = tmp_path / "wrong-shape"
    shutil.copytree(adapter_dirs / "v-b", wrong_shape)
    config = json.loads((wrong_shape / "adapter_config.json").read_text())
    (wrong_shape / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))

    for name, folder, why in [("x1", no_config, "adapter_config.json"), ("x2", no_weights, "no adapter weights"),
                              ("x3", corrupt, "refused"), ("x4", wrong_shape, "refused"),
                              ("x5", tmp_path / "absent", "no adapter folder")]:
        with pytest.raises(generation.AdapterError, match=why):
            gen.load_adapter(name, folder)
        assert gen.adapters() == ["v-a"] and gen.active_adapter == "v-a"
        assert gen.generate(QUESTION, max_new_tokens=10) == before
    with pytest.raises(generation.AdapterError, match="not loaded"):
        gen.use_adapter("x3")

    # A refused first adapter leaves the plain base model as it was.
    fresh = _load(tiny_model_dir, tmp_path, quantize=True)
    plain = fresh.generate(QUESTION, max_new_tokens=10)
    with pytest.raises(generation.AdapterError):
        fresh.load_adapter("x4", wrong_shape)
    assert fresh.model is fresh.base and not hasattr(fresh.base, "peft_config")
    assert fresh.generate(QUESTION, max_new_tokens=10) == plain


# -- regression: bitsandbytes' CPU repack must not eat training gradients -------------

def test_lora_training_after_4bit_generation_still_learns(tiny_model_dir, tmp_path):
    """STACK.md trap A: without `_disable_cpu_repack`, the first no-grad forward
    repacks the 4-bit weights and later training silently loses gradients (the
    loss then ends about 1.6x higher). With it, training after inference follows
    the same curve as training on a model that never generated."""
    answer = TARGETS["v-a"]
    served = _load(tiny_model_dir, tmp_path, quantize=True)
    served.generate(QUESTION, max_new_tokens=8)  # inference first, as the serving process does
    _, after_inference = _train_lora(served.base, served.tokenizer, answer)
    fresh = _load(tiny_model_dir, tmp_path, quantize=True)
    _, never_generated = _train_lora(fresh.base, fresh.tokenizer, answer)
    assert after_inference[-1] < 0.5 * after_inference[0]
    assert after_inference[-1] == pytest.approx(never_generated[-1], rel=0.1)


# -- the model worker ---------------------------------------------------------------------

def test_worker_batches_concurrent_questions_like_sequential_ones(tiny_model_dir, tmp_path):
    gen = _load(tiny_model_dir, tmp_path)
    questions = [[{"role": "user", "content": q}] for q in ("用户优势", "平台优势是什么？", "管理", "可持续的商业模式有哪些？")]
    limits = [6, 12, 9, 12]
    sequential = [gen.generate(q, max_new_tokens=n).text for q, n in zip(questions, limits)]
    streams: list[list[str]] = [[] for _ in questions]

    async def ask_all(worker):
        futures = [asyncio.wrap_future(worker.submit(q, n, streams[i].append))
                   for i, (q, n) in enumerate(zip(questions, limits))]
        return await asyncio.gather(*futures)

    with generation.ModelWorker(gen, max_batch=8, max_wait_s=0.05) as worker:
        results = asyncio.run(ask_all(worker))
        assert worker.batched_calls >= 1 and worker.largest_batch >= 2
        # One question too long for the context fails alone; its batch-mates are answered.
        bad = worker.submit(questions[0], max_new_tokens=10**6)
        good = worker.submit(questions[1], max_new_tokens=12)
        assert good.result(timeout=30).text == sequential[1]
        with pytest.raises(ValueError, match="context"):
            bad.result(timeout=30)
    assert [r.text for r in results] == sequential
    assert ["".join(s) for s in streams] == sequential
    assert [r.completion_tokens <= n for r, n in zip(results, limits)] == [True] * 4
    with pytest.raises(RuntimeError):
        worker.submit(questions[0])


@pytest.mark.gpu
@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
def test_tiny_serves_in_4bit_on_the_gpu(tiny_model_dir, tmp_path):
    gen = _load(tiny_model_dir, tmp_path, quantize=True)
    assert gen.device.type == "cuda"
    with generation.ModelWorker(gen) as worker:
        futures = [worker.submit(QUESTION, 8) for _ in range(4)]
        texts = {f.result(timeout=60).text for f in futures}
    assert len(texts) == 1 and texts.pop().strip()
