"""Promotion and rollback take the version in service from the database (bot/learning/registry.py):
the pointer file is written for the in-process model but never trusted to say what served before."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from bot import store
from bot.learning import registry
from bot.llm import hotswap


def _version(adapters, name):
    folder = adapters / name
    folder.mkdir(parents=True)
    # The smallest folder the promotion checks accept: a rank-2 LoRA on one projection.
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]}),
                                                encoding="utf-8")
    layer = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{layer}.lora_A.weight": np.zeros((2, 8), dtype=np.float32),
               f"{layer}.lora_B.weight": np.zeros((8, 2), dtype=np.float32)}, str(folder / "adapter_model.safetensors"))


@pytest.fixture
def adapters(tmp_path):
    root = tmp_path / "adapters"
    for name in ("v0001", "v0002", "v0003"):
        _version(root, name)
    return root


def test_a_pointer_file_moved_by_hand_does_not_change_what_rollback_returns_to(db, adapters):
    registry.promote(db, adapters, "v0001", by="test", base=None)
    registry.promote(db, adapters, "v0002", by="test", base=None)
    assert store.in_service(db) == (True, "v0002") and hotswap.read_pointer(adapters) == "v0002"
    hotswap.set_pointer(adapters, "v0003")  # a stray write (another host's copy, an operator's hand)
    assert registry.rollback(db, adapters, by="test", base=None) == "v0001"
    assert store.in_service(db) == (True, "v0001") and hotswap.read_pointer(adapters) == "v0001"
    assert [(p["version"], p["previous"], p["action"]) for p in store.promotions(db)] == [
        ("v0001", None, "promote"), ("v0002", "v0001", "promote"), ("v0001", "v0002", "rollback")]


def test_promote_refuses_what_the_database_has_in_service_whatever_the_file_says(db, adapters):
    registry.promote(db, adapters, "v0002", by="test", base=None)
    hotswap.set_pointer(adapters, None)
    with pytest.raises(registry.RegistryError, match="v0002 is already in service"):
        registry.promote(db, adapters, "v0002", by="test", base=None)
    assert registry.promote(db, adapters, "v0003", by="test", base=None) == "v0003"
    assert store.promotions(db)[-1]["previous"] == "v0002"


def test_a_folder_from_before_the_database_held_the_pointer_is_adopted_once(db, adapters):
    hotswap.set_pointer(adapters, "v0001")  # written by an older release, no record of it
    registry.promote(db, adapters, "v0002", by="test", base=None)
    assert [(p["version"], p["previous"], p["action"]) for p in store.promotions(db)] == [
        ("v0001", None, "adopt"), ("v0002", "v0001", "promote")]
    assert registry.rollback(db, adapters, by="test", base=None) == "v0001"
    with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
        registry.rollback(db, adapters, by="test", base=None)  # v0001 was adopted, never promoted here
