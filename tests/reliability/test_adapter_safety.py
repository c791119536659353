"""Adapter safety: a corrupt, partial or foreign adapter folder is refused at promotion and at load,
with a clear message, and the serving model keeps answering with the adapter it had.

Real: the tiny model serving through the answering pipeline over the indexed
knowledge base, a real LoRA adapter saved by peft (v0001, in service), the
registry and the pointer on disk. Each broken folder is made from a copy of
v0001 with one thing wrong: missing weights, truncated weights, a garbage or
empty config, a config that does not match the weights, and three ways of
being made for another base model (its card says so, its config names a
hub model, its matrices have another model's sizes).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from bot.answering import pipeline as answering
from bot.llm import generation, hotswap
from bot.learning import registry
from bot.knowledge import retrieval
from bot import config, store

QUESTION = "什么是天使投资？"
OTHER_BASE = {"id": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "7ae557604adf67be50417f59c2c2f167def9a775"}


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _resize(folder: Path, factor: int) -> None:
    """The same adapter for a model whose layers are `factor` times wider."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    wider = {k: (v.repeat(1, factor) if "lora_A" in k else v.repeat(factor, 1)).contiguous() for k, v in tensors.items()}
    save_file(wider, str(folder / "adapter_model.safetensors"))


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) * 2 // 3])


# name: (how the copy of v0001 is broken, what the refusal says)
BROKEN = {
    "missing-weights": (lambda f: (f / "adapter_model.safetensors").unlink(), "has no adapter weights"),
    "truncated-weights": (lambda f: _truncate(f / "adapter_model.safetensors"), "adapter_model.safetensors is truncated"),
    "garbage-weights": (lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x00" * 64), "not a safetensors file"),
    "garbage-config": (lambda f: (f / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8,'),
                       "adapter_config.json is not valid JSON"),
    "empty-config": (lambda f: (f / "adapter_config.json").write_text("{}"), "not a peft adapter config"),
    "config-for-other-weights": (lambda f: _edit_json(f / "adapter_config.json", r=4), "do not belong together"),
    "card-other-base": (lambda f: _edit_json(f / "card.json", base_model=OTHER_BASE),
                        f"trained for the base model {OTHER_BASE['id']}"),
    "config-other-base": (lambda f: ((f / "card.json").unlink(), _edit_json(
        f / "adapter_config.json", base_model_name_or_path=OTHER_BASE["id"])), f"trained for {OTHER_BASE['id']}"),
    "other-architecture": (lambda f: ((f / "card.json").unlink(), _resize(f, 2)),
                           "inputs where this base model's"),
}


@pytest.fixture(scope="module")
def made(tiny_model_dir, tmp_path_factory) -> Path:
    """A real LoRA adapter for the tiny model, saved by peft, randomised so that it changes answers."""
    import torch

    from bot.llm import presets, training

    folder = tmp_path_factory.mktemp("made") / "v0001"
    maker = generation.load("tiny", cache_dir=tiny_model_dir.parent, adapters_dir=folder.parent / "unused")
    peft_model = training.add_lora(maker.base, presets.load("tiny").lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    training.save_adapter(peft_model, folder)
    (folder / "card.json").write_text(json.dumps({
        "version": "v0001", "base_model": {"id": maker.model_id, "revision": maker.revision}, "verdict": "promoted",
        "metrics": {"golden": {"current": {"n": 1, "f1": 0.1, "nll": 3.0},
                               "candidate": {"n": 1, "f1": 0.2, "nll": 2.9}}}}))
    return folder


def _base():
    """The base model `adapters promote` checks against: the serving settings' (BOT_MODEL, BOT_CACHE_DIR)."""
    settings = config.Settings.load()
    return registry.serving_base(settings.model, settings.cache_dir)


@pytest.fixture
def served(made, tiny_model_dir, kb_db, tmp_path, monkeypatch):
    """v0001 promoted and in service in a serving model, answering through the pipeline."""
    for name, value in {"BOT_MODEL": "tiny", "BOT_CACHE_DIR": tiny_model_dir.parent}.items():
        monkeypatch.setenv(name, str(value))  # the base model `adapters promote` checks against
    adapters = tmp_path / "adapters"
    shutil.copytree(made, adapters / "v0001")
    registry.promote(kb_db, adapters, "v0001", by="test", base=_base())
    gen = generation.load("tiny", cache_dir=tiny_model_dir.parent, adapters_dir=adapters, trainable=False)
    answerer = answering.Answerer(kb_db, retrieval.Searcher(kb_db), lambda: gen, max_new_tokens=8)
    return answerer, gen, adapters, kb_db


def test_the_adapter_in_service_changes_answers(served):
    """The checks below mean something only if v0001 is really what answers."""
    answerer, gen, adapters, db = served
    with_adapter = answerer.ask(QUESTION)
    assert with_adapter.adapter == "v0001" and gen.pointer_error is None
    gen.use_adapter(None)  # the base model, for comparison (the pointer is unchanged, so it stays)
    plain = gen.generate([{"role": "user", "content": QUESTION}], 8)
    gen.use_adapter("v0001")
    assert plain.adapter is None and plain.text != gen.generate([{"role": "user", "content": QUESTION}], 8).text


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_adapter_is_refused_at_promote_and_at_load_and_the_previous_one_keeps_serving(case, served, caplog):
    answerer, gen, adapters, db = served
    before = answerer.ask(QUESTION)
    assert before.adapter == "v0001"
    breaks, why = BROKEN[case]
    bad = adapters / "v0002"
    shutil.copytree(adapters / "v0001", bad)
    breaks(bad)

    # At promotion: refused with the reason, nothing moved, nothing recorded.
    promotions = store.promotions(db)
    with pytest.raises(registry.RegistryError) as refused:
        registry.promote(db, adapters, "v0002", by="slack:UADMIN", base=_base())
    assert str(refused.value).startswith("cannot promote 'v0002'") and why in str(refused.value), str(refused.value)
    assert hotswap.read_pointer(adapters) == "v0001" and store.promotions(db) == promotions

    # At load: refused with the same reason, the model unchanged.
    with pytest.raises(hotswap.AdapterError, match="refused|no adapter weights") as at_load:
        gen.load_adapter("v0002", bad)
    assert why in str(at_load.value)
    assert gen.adapters() == ["v0001"] and gen.active_adapter == "v0001"

    # The pointer moved anyway (by hand, or a tool that skips the checks): answers keep coming from
    # v0001, word for word, and the reason is logged and kept for health checks.
    hotswap.set_pointer(adapters, "v0002")
    with caplog.at_level(logging.WARNING, logger="bot.llm.generation"):
        during = [answerer.ask(QUESTION) for _ in range(2)]
    assert [(a.adapter, a.answer, a.mode) for a in during] == [(before.adapter, before.answer, before.mode)] * 2
    assert "v0002" in gen.pointer_error and why in gen.pointer_error
    logged = [r.getMessage() for r in caplog.records if r.name == "bot.llm.generation"]
    assert len(logged) == 1 and why in logged[0] and "still serving v0001" in logged[0]
    assert [r["adapter"] for r in db.query("select adapter from answers order by created_at")][-2:] == ["v0001"] * 2

    # Put back: the pointer names v0001 again, and all is well.
    hotswap.set_pointer(adapters, "v0001")
    assert answerer.ask(QUESTION).adapter == "v0001" and gen.pointer_error is None


def test_a_complete_adapter_for_this_base_still_passes(served):
    """The checks refuse what is wrong, not everything: a good copy promotes and serves."""
    answerer, gen, adapters, db = served
    shutil.copytree(adapters / "v0001", adapters / "v0002")
    assert registry.promote(db, adapters, "v0002", by="slack:UADMIN", base=_base()) == "v0002"
    assert answerer.ask(QUESTION).adapter == "v0002" and gen.pointer_error is None
    assert registry.rollback(db, adapters, by="slack:UADMIN", base=_base()) == "v0001"
    assert answerer.ask(QUESTION).adapter == "v0001"
