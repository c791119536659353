"""Adapter hot swap on a live model: the in-service pointer, folder checks, and peft loading that can be undone.

The serving process must take a newly promoted adapter without a restart,
and must never be left half-changed by a bad one: a folder is checked
before the model is touched, and a load that fails midway is rolled back
(LoRA wrappers removed, or the half-loaded adapter deleted) before the
AdapterError reaches the caller. `LocalGenerator` (bot/llm/generation.py) owns
the state; these functions own the mechanics. peft is imported lazily.
"""
from __future__ import annotations

import json
import os
import re
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


def check_folder(path: Path, base: tuple | None = None) -> None:
    """Refuse a folder that is not a complete peft LoRA adapter (for the model `base`, when given:
    (id, revision) or (id, revision, architecture numbers)), before touching the model: at
    promotion, at rollback and before every load.

    Reads only the config and the weights file's header, never the tensors: a
    missing or garbage adapter_config.json, missing weights, a truncated or
    corrupt safetensors file, a config that does not match its weights, and an
    adapter trained for another base model (by its card, its config, or the
    shapes of its weights) are each refused with the reason."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"no adapter folder at {path}")
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"{path} has no adapter_config.json: not a peft adapter folder")
    weights, legacy = path / "adapter_model.safetensors", path / "adapter_model.bin"
    if not weights.is_file() and not legacy.is_file():
        raise AdapterError(f"{path} has no adapter weights (adapter_model.safetensors)")
    refused = f"adapter at {path} refused"
    config = _adapter_config(path / "adapter_config.json", refused)
    tensors = {}
    if weights.is_file():
        tensors = _check_weights(weights, config, refused)
    elif legacy.stat().st_size == 0:
        raise AdapterError(f"{refused}: adapter_model.bin is empty")
    if base is not None:
        _check_base(path, config, tuple(base[:2]), refused)
        if len(base) > 2 and base[2]:
            _check_shapes(tensors, base[2], refused)


def _adapter_config(file: Path, refused: str) -> dict:
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise AdapterError(f"{refused}: adapter_config.json is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise AdapterError(f"{refused}: adapter_config.json is not valid JSON ({e.msg} at line {e.lineno}, "
                           f"column {e.colno})") from None
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise AdapterError(f"{refused}: adapter_config.json is not a peft adapter config (it has no peft_type)")
    if config["peft_type"].upper() == "LORA":
        r, targets = config.get("r"), config.get("target_modules")
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise AdapterError(f"{refused}: adapter_config.json has no valid LoRA rank r ({r!r})")
        if not targets:
            raise AdapterError(f"{refused}: adapter_config.json names no target_modules")
    return config


# Bytes per element of the safetensors dtypes.
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _check_weights(file: Path, config: dict, refused: str) -> dict:
    """The safetensors header (8-byte length, then JSON): complete, consistent, and matching the config.
    Returns the tensors it describes (name -> dtype, shape, offsets)."""
    size = file.stat().st_size
    name = file.name
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise AdapterError(f"{refused}: {name} is truncated or not a safetensors file "
                               f"({size} bytes, too short for the header it announces)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterError(f"{refused}: {name} is corrupt (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{refused}: {name} is corrupt (its header is not a table of tensors)")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors:
        raise AdapterError(f"{refused}: {name} holds no tensors")
    end = 0
    for key, t in tensors.items():
        try:
            begin, stop = (int(x) for x in t["data_offsets"])
            shape = [int(x) for x in t["shape"]]
        except (TypeError, KeyError, ValueError):
            raise AdapterError(f"{refused}: {name} is corrupt (tensor {key} has no valid shape or offsets)") from None
        width = _DTYPE_BYTES.get(t.get("dtype"))
        count = 1
        for d in shape:
            count *= d
        if begin < 0 or stop < begin or (width is not None and stop - begin != width * count):
            raise AdapterError(f"{refused}: {name} is corrupt (tensor {key}'s offsets do not fit its shape)")
        end = max(end, stop)
    if 8 + n + end > size:
        raise AdapterError(f"{refused}: {name} is truncated: its header describes {8 + n + end} bytes, "
                           f"the file has {size}")
    if 8 + n + end < size:
        raise AdapterError(f"{refused}: {name} is corrupt: {size - 8 - n - end} bytes after the last tensor")
    r = config.get("r")
    if config["peft_type"].upper() == "LORA" and not config.get("rank_pattern"):
        for key, t in tensors.items():
            shape = t["shape"] or [None]
            rank = shape[0] if key.endswith("lora_A.weight") else shape[-1] if key.endswith("lora_B.weight") else r
            if rank != r:
                raise AdapterError(f"{refused}: {key} has rank {rank} but adapter_config.json says r={r}: "
                                   "the config and the weights do not belong together")
    return tensors


# The Llama-family projections: (input, output) sizes from the architecture numbers.
_LLAMA_FAMILY = {"llama", "qwen2", "qwen3", "mistral"}
_LAYER = re.compile(r"\blayers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight$")


def _projections(arch: dict) -> dict[str, tuple[int, int]]:
    h, i = arch["hidden_size"], arch["intermediate_size"]
    heads, kv = arch["num_attention_heads"], arch.get("num_key_value_heads") or arch["num_attention_heads"]
    hd = arch.get("head_dim") or h // heads
    return {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd), "o_proj": (heads * hd, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def _check_shapes(tensors: dict, arch: dict, refused: str) -> None:
    """Each LoRA matrix fits the layer it adapts in this base model (Llama-family names), else the
    adapter was made for another model."""
    try:
        if arch.get("model_type") not in _LLAMA_FAMILY:
            return
        sizes, layers = _projections(arch), int(arch["num_hidden_layers"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):  # numbers missing: nothing to compare with
        return
    for key, t in tensors.items():
        m = _LAYER.search(key)
        if not m or m.group(2) not in sizes:
            continue
        layer, proj, half = int(m.group(1)), m.group(2), m.group(3)
        if layer >= layers:
            raise AdapterError(f"{refused}: it adapts layer {layer}, but this base model has {layers} layers: "
                               "it was trained for another base model")
        inp, out = sizes[proj]
        got, want = (t["shape"][-1], inp) if half == "A" else (t["shape"][0], out)
        if got != want:
            side = "inputs" if half == "A" else "outputs"
            raise AdapterError(f"{refused}: its {proj} LoRA has {got} {side} where this base model's {proj} "
                               f"has {want}: it was trained for another base model")


def _local(revision) -> bool:
    return str(revision or "").startswith("local-")  # a model built here: its data hash names it, not its path


def _check_base(path: Path, config: dict, base: tuple[str, str], refused: str) -> None:
    """Trained for this base model? The card's base_model (id and revision) when the trainer wrote one,
    else the hub id peft recorded in adapter_config.json."""
    model_id, revision = base
    try:
        trained = json.loads((path / "card.json").read_text(encoding="utf-8")).get("base_model") or {}
    except (OSError, ValueError, AttributeError):
        trained = {}
    if trained.get("id") or trained.get("revision"):
        tid, trev = trained.get("id"), trained.get("revision")
        same = trev == revision and (tid == model_id or (_local(trev) and _local(revision)))
        if not same:
            raise AdapterError(f"{refused}: it was trained for the base model {tid}@{trev}, "
                               f"but this one is {model_id}@{revision}")
        return
    recorded = config.get("base_model_name_or_path")
    # A model built here may sit at another path than the one it was trained at; a hub id never matches it.
    if recorded and recorded != model_id and (not _local(revision) or not Path(recorded).is_absolute()):
        raise AdapterError(f"{refused}: adapter_config.json says it was trained for {recorded}, "
                           f"but this base model is {model_id}")


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
