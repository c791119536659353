"""Model presets: the TOML files in `models/`, read into one typed record.

A preset is data, not code: which base model (hub id and pinned revision),
how to load it (dtype, 4-bit settings), how to generate (greedy or sampled,
token budgets), the real architecture numbers (so a benchmark can build a
random-init model of the same shape with no weights), the LoRA and
training recipe, and the promotion gate's tolerances: what learns well and
what counts as a regression differ by model, so they travel with it. Code
reads the typed fields; `raw` keeps the whole file for anything a later
issue adds before it earns a field here.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bot import config

MODELS_DIR = config.ROOT / "models"
LOCAL_PREFIX = "local:"  # hub_id of a model built on this machine (see bot/llm/tinymodel.py)


class PresetError(Exception):
    """A preset that does not exist or cannot be read; the message says which and why."""


@dataclass(frozen=True)
class Quantization:
    load_in_4bit: bool = False
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"


@dataclass(frozen=True)
class GenerationDefaults:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy (do_sample=False)
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    context_budget_tokens: int = 2048  # tokens of retrieved passages per prompt


@dataclass(frozen=True)
class Lora:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Training:
    learning_rate: float = 2e-4
    batch_size: int = 4
    seed: int = 1234
    # Steps scale with the data: steps_per_example x examples, within [min_steps, max_steps].
    steps_per_example: int = 20
    min_steps: int = 20
    max_steps: int = 400
    # Stop early once every example's latest loss is below this (nats per token); 0 never stops early.
    target_loss: float = 0.0

    def steps_for(self, examples: int) -> int:
        """Optimizer steps for a job training on `examples` examples."""
        return max(self.min_steps, min(self.max_steps, self.steps_per_example * examples))


@dataclass(frozen=True)
class Gate:
    """Promotion gate tolerances (bot/learning/evaluation.py `gate`); BOT_GATE_* settings override them."""

    min_gain: float = 0.05
    f1_tolerance: float = 0.02
    nll_tolerance: float = 0.05


@dataclass(frozen=True)
class Preset:
    name: str
    hub_id: str
    revision: str
    context_length: int
    dtype: str
    quantization: Quantization
    generation: GenerationDefaults
    architecture: dict  # config.json keys, passed to the model config class as is
    lora: Lora
    training: Training
    gate: Gate = Gate()
    description: str = ""
    path: Path | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def is_local(self) -> bool:
        return self.hub_id.startswith(LOCAL_PREFIX)

    @property
    def local_name(self) -> str:
        """`tiny` for `local:tiny`: the folder under the model cache."""
        return self.hub_id[len(LOCAL_PREFIX):]


def names(models_dir: Path | None = None) -> list[str]:
    """Every preset name, sorted (the file names without `.toml`)."""
    folder = models_dir or MODELS_DIR
    return sorted(p.stem for p in folder.glob("*.toml"))


def _table(raw: dict, key: str, cls, path: Path):
    """Build one sub-table's dataclass, refusing keys it does not know (typos)."""
    data = raw.get(key, {})
    if not isinstance(data, dict):
        raise PresetError(f"{path.name}: [{key}] must be a table")
    known = set(cls.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise PresetError(f"{path.name}: unknown keys in [{key}]: {', '.join(sorted(unknown))}")
    if "target_modules" in data:
        data = {**data, "target_modules": tuple(data["target_modules"])}
    return cls(**data)


def load(name: str, models_dir: Path | None = None) -> Preset:
    """The preset called `name` (a file `models/<name>.toml`), or a PresetError naming the choices."""
    folder = models_dir or MODELS_DIR
    path = folder / f"{name}.toml"
    # A name is a file stem, never a path: `../x` must not read outside models/.
    if not name or "/" in name or "\\" in name or not path.is_file():
        available = ", ".join(names(folder)) or "(none)"
        raise PresetError(f"unknown model preset {name!r}; available presets: {available}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PresetError(f"cannot read preset {path.name}: {e}") from None
    missing = [k for k in ("hub_id", "revision", "context_length", "dtype") if k not in raw]
    if missing:
        raise PresetError(f"{path.name}: missing {', '.join(missing)}")
    try:
        return Preset(
            name=raw.get("name", name),
            hub_id=str(raw["hub_id"]),
            revision=str(raw["revision"]),
            context_length=int(raw["context_length"]),
            dtype=str(raw["dtype"]),
            quantization=_table(raw, "quantization", Quantization, path),
            generation=_table(raw, "generation", GenerationDefaults, path),
            architecture=dict(raw.get("architecture", {})),
            lora=_table(raw, "lora", Lora, path),
            training=_table(raw, "training", Training, path),
            gate=_table(raw, "gate", Gate, path),
            description=str(raw.get("description", "")),
            path=path,
            raw=raw,
        )
    except (TypeError, ValueError) as e:
        raise PresetError(f"{path.name}: {e}") from None
