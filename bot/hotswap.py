"""Adapter hot swap on a live model: the in-service pointer, folder checks, and peft loading that can be undone.

The serving process must take a newly promoted adapter without a restart,
and must never be left half-changed by a bad one: a folder is checked
before the model is touched, and a load that fails midway is rolled back
(LoRA wrappers removed, or the half-loaded adapter deleted) before the
AdapterError reaches the caller. `LocalGenerator` (bot/generation.py) owns
the state; these functions own the mechanics. peft is imported lazily.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

POINTER = "current"  # adapters_dir/current: the version name in service, one line


class AdapterError(Exception):
    """An adapter folder was refused; the adapter in service is unchanged."""


def check_name(version: str | None) -> None:
    """A version is a folder name under adapters_dir, never a path out of it."""
    if version is not None and (version in (".", "..") or "/" in version or "\\" in version or version != version.strip()):
        raise AdapterError(f"{version!r} is not a valid adapter version name")


def read_pointer(adapters_dir: Path) -> str | None:
    """The version in service, or None for the base model (no pointer, or an empty one)."""
    try:
        return (Path(adapters_dir) / POINTER).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def set_pointer(adapters_dir: Path, version: str | None) -> None:
    """Put `version` in service (None or "" = the base model).

    Atomic (temporary file, then os.replace): a serving process reading the
    pointer sees the old name or the new one, never a half-written file."""
    try:
        check_name(version or None)
    except AdapterError as e:
        raise ValueError(str(e)) from None
    adapters_dir = Path(adapters_dir)
    adapters_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".current-", dir=adapters_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write((version or "") + "\n")
        os.replace(tmp, adapters_dir / POINTER)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_folder(path: Path) -> None:
    """Refuse a folder that is not a saved peft adapter, before touching the model."""
    if not path.is_dir():
        raise AdapterError(f"no adapter folder at {path}")
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"{path} has no adapter_config.json: not a peft adapter folder")
    if not any((path / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise AdapterError(f"{path} has no adapter weights (adapter_model.safetensors)")


def strip_lora(base) -> None:
    """Put the base's own layers back in place of LoRA wrappers (what peft's
    `unload` does), after a first adapter failed to load half way."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(base.named_modules()):
        if name and isinstance(module, BaseTunerLayer):
            parent, _, child = name.rpartition(".")
            setattr(base.get_submodule(parent) if parent else base, child, module.get_base_layer())
    if hasattr(base, "peft_config"):
        del base.peft_config


def load_into(base, model, pname: str, path: Path, active: str | None):
    """Load the adapter at `path` as peft adapter `pname` and return the PeftModel
    around `base` (created for the first adapter, when `model is base`).

    `active` is the peft name serving now (None: the base). Any failure is
    undone and raised as AdapterError."""
    from peft import PeftConfig, PeftModel

    first = model is base
    try:
        config = PeftConfig.from_pretrained(str(path))
        if first:
            # What PeftModel.from_pretrained does, in two steps, so that a failure can be undone.
            model = PeftModel(base, config, adapter_name=pname)
        result = model.load_adapter(str(path), adapter_name=pname, is_trainable=False)
        if result.missing_keys:  # a LoRA left at its zero init would serve silently as the base
            raise ValueError(f"weights missing for {len(result.missing_keys)} LoRA tensors, "
                             f"e.g. {result.missing_keys[0]}: trained for another base model?")
    except Exception as e:
        if first:
            strip_lora(base)
        elif pname in model.peft_config:
            model.delete_adapter(pname)
            if active is not None:
                model.set_adapter(active, inference_mode=True)
        raise AdapterError(f"adapter at {path} refused: {type(e).__name__}: {str(e).strip()[:300]}") from e
    return model
