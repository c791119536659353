"""The model seam: load a preset's model (4-bit where it says so), generate with streaming, hot-swap LoRA adapters.

Answering code sees only the `Generator` protocol (bot/llm/generator.py);
`LocalGenerator` is the in-process implementation, and a vLLM client could
stand behind the same seam on a larger host. The serving
process follows `adapters/current` (the pointer a promotion rewrites) at
the start of every request, so a promoted adapter serves with no restart.
torch, transformers and peft are imported inside functions: `import bot`
stays light.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
from concurrent.futures import Future
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

from bot.llm import hotswap
# Re-exported: the seam's types, for code that already imports them from here.
from bot.llm.generator import Generation, Generator, is_out_of_memory, resolved  # noqa: F401
# Re-exported: these are part of the seam that answering and registry code use.
from bot.llm.hotswap import POINTER, AdapterError, read_pointer, set_pointer  # noqa: F401
from bot.llm.model_worker import ModelWorker  # noqa: F401

log = logging.getLogger(__name__)


class ModelUnavailable(Exception):
    """The model cannot be loaded; the message says why, in words for users."""


def _disable_cpu_repack(model) -> int:
    """STACK.md traps A and B: on CPUs with avx512_bf16, bitsandbytes repacks 4-bit
    weights into an inference-only layout on the first no-grad forward; training
    afterwards silently loses gradients, and saving corrupts the weights. Turning
    the repack off on every Linear4bit right after loading avoids both."""
    if "bitsandbytes" not in sys.modules:
        return 0  # never imported, so no 4-bit layer can exist (and its import is noisy)
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def _dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
            "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}[name]


def _why(e: BaseException, model_id: str, revision: str) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    if is_out_of_memory(e):
        return f"not enough memory to load {model_id}: choose a smaller preset or 4-bit ({first})"
    if isinstance(e, OSError):
        return (f"cannot load {model_id} at revision {revision}: it is not in the local cache and the hub "
                f"cannot be reached (offline?), or the id or revision is wrong ({first})")
    if isinstance(e, ImportError):
        return f"a library the model needs is missing: {first}"
    return f"cannot load {model_id}: {type(e).__name__}: {first}"


def _hub_unreachable(model_id: str, revision: str) -> str | None:
    """Why the hub cannot serve `model_id` right now, or None when it can (or the files are cached).

    huggingface_hub retries an unreachable hub for about 25 s before giving up;
    a chat user should not wait that long to be told the model is not there.
    """
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model_id, "config.json", revision=revision), str):
        return None
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "offline mode (HF_HUB_OFFLINE) and the model is not in the local cache"
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
    except OSError as e:
        return f"the model hub {url.hostname} cannot be reached ({e.strerror or e}) and the model is not cached"
    return None


def identity(preset_name: str, cache_dir: Path) -> tuple[str, str, dict] | None:
    """(model id, revision, architecture numbers) that `load` would give a preset's model, without
    loading it: what an adapter must have been trained for. None when it cannot be told (no such
    preset, not built yet)."""
    from bot.llm import presets

    try:
        preset = presets.load(preset_name)
    except presets.PresetError:
        return None
    if not preset.is_local:
        return preset.hub_id, preset.revision, preset.architecture
    folder = Path(cache_dir) / preset.local_name
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(folder), f"local-{meta.get('data_hash', '')[:12]}", preset.architecture


def load(preset_name: str, *, cache_dir: Path, adapters_dir: Path, quantize: bool | None = None,
         trainable: bool = True) -> "LocalGenerator":
    """Load a preset's model and tokenizer; `quantize` overrides the preset's 4-bit setting.

    `trainable=False` is for a process that only serves: it keeps bitsandbytes'
    fast CPU inference layout (about 2.5x faster 4-bit decoding on an
    avx512_bf16 CPU, see README) because it never trains or saves the base.
    Anything that trains (the worker) loads with the default.
    """
    from bot.llm import presets

    try:
        preset = presets.load(preset_name)
    except presets.PresetError as e:
        raise ModelUnavailable(str(e)) from None
    source, revision, hub_kwargs = preset.hub_id, preset.revision, {"revision": preset.revision}
    if preset.is_local:
        folder = Path(cache_dir) / preset.local_name
        if not (folder / "meta.json").is_file():
            raise ModelUnavailable(
                f"the {preset.name} model is not built at {folder}: run `python -m bot models build-tiny`")
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        source, revision, hub_kwargs = str(folder), f"local-{meta.get('data_hash', '')[:12]}", {}
    else:
        why = _hub_unreachable(source, revision)
        if why:
            raise ModelUnavailable(f"cannot load {source}: {why}")
    four_bit = preset.quantization.load_in_4bit if quantize is None else quantize
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = dict(hub_kwargs, dtype=_dtype(preset.dtype))
        if four_bit:
            from transformers import BitsAndBytesConfig

            q = preset.quantization
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                bnb_4bit_compute_dtype=_dtype(q.compute_dtype), bnb_4bit_use_double_quant=q.double_quant)
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": 0}
        tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as e:  # offline, OOM, bad config: one message for the user, the cause chained
        raise ModelUnavailable(_why(e, source, revision)) from e
    if trainable:
        _disable_cpu_repack(model)
    model.eval()
    return LocalGenerator(model, tokenizer, preset, source, revision, Path(adapters_dir), four_bit)


class LocalGenerator:
    """One model in this process, its tokenizer, and its LoRA adapters; every method is thread-safe."""

    def __init__(self, model, tokenizer, preset, model_id: str, revision: str, adapters_dir: Path | None, quantized: bool):
        self.base, self.model = model, model  # self.model becomes the PeftModel once an adapter loads
        self.tokenizer, self.preset = tokenizer, preset
        self.model_id, self.revision, self.quantized = model_id, revision, quantized
        self.adapters_dir = adapters_dir
        self.lock = threading.RLock()
        # A fast tokenizer keeps its padding setting on the shared Rust object: `count_tokens` (no
        # padding) on an asker's thread while a batch is encoded (padding) breaks the batch.
        self._tokenizer_lock = threading.Lock()
        self.calls = 0  # generate() calls on the model; `batched_calls` counts those with more than one row
        self.batched_calls = 0
        self.pointer_error: str | None = None
        self._names: dict[str, str] = {}  # adapter version -> peft adapter name ("." is not allowed there)
        self._serial = 0
        self._active: str | None = None
        self._pointer_key = None  # as if "no pointer file": the base model serves until one appears
        self._followed: list[str] = []  # versions loaded because the pointer named them
        tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        stops = model.generation_config.eos_token_id
        stops = stops if isinstance(stops, list) else [stops]
        self.stop_ids = {t for t in stops + [tokenizer.eos_token_id] if t is not None}
        self.context_length = min(preset.context_length, getattr(model.config, "max_position_embeddings", 10**9))

    @property
    def device(self):
        return next(self.base.parameters()).device

    def count_tokens(self, text: str) -> int:
        with self._tokenizer_lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: list[dict]) -> str:
        """The prompt text for a chat, as the model sees it (training uses the same function)."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(self, messages: list[dict], max_new_tokens: int | None = None,
                 on_token: Callable[[str], None] | None = None) -> Generation:
        return self.generate_batch([(messages, max_new_tokens, on_token)])[0]

    def submit(self, messages: list[dict], max_new_tokens: int | None = None,
               on_token: Callable[[str], None] | None = None) -> Future[Generation]:
        """`generate` in the caller's thread, as a finished future: callers that want batching and a
        queue wrap this generator in a ModelWorker."""
        return resolved(self.generate, messages, max_new_tokens, on_token)

    def generate_batch(self, requests: list[tuple]) -> list[Generation]:
        """Answer (messages, max_new_tokens, on_token) requests in one `generate` call, each row streamed to its callback."""
        import torch
        from transformers import GenerationConfig

        from bot.llm.streaming import RowStreamer

        g = self.preset.generation
        with self.lock:
            self.follow_pointer()
            limits = [n or g.max_new_tokens for _, n, _ in requests]
            prompts = [self.render(m) for m, _, _ in requests]
            with self._tokenizer_lock:
                enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            prompt_lens = enc["attention_mask"].sum(1).tolist()
            for n, limit in zip(prompt_lens, limits):
                if n + limit > self.context_length:
                    raise ValueError(f"prompt of {n} tokens + {limit} new tokens exceeds the model's "
                                     f"context of {self.context_length} tokens")
            config = GenerationConfig(
                max_new_tokens=max(limits), do_sample=g.temperature > 0, repetition_penalty=g.repetition_penalty,
                eos_token_id=sorted(self.stop_ids), pad_token_id=self.tokenizer.pad_token_id)
            if g.temperature > 0:
                config.temperature, config.top_p = g.temperature, g.top_p
            streamer = RowStreamer(self.tokenizer, [cb for *_, cb in requests], limits, self.stop_ids)
            # The base model is served through the PeftModel with its adapters switched off.
            off = self.model.disable_adapter() if self.model is not self.base and self._active is None else nullcontext()
            with torch.inference_mode(), off:
                self.model.generate(**enc.to(self.device), generation_config=config, streamer=streamer)
            self.calls += 1
            self.batched_calls += len(requests) > 1
            return [Generation(streamer.text(i), prompt_lens[i], streamer.completion_tokens(i), self._active)
                    for i in range(len(requests))]

    # -- adapters ---------------------------------------------------------

    @property
    def active_adapter(self) -> str | None:
        return self._active

    @property
    def depth(self) -> int:
        return 0  # no queue: a ModelWorker in front of it holds the waiting questions

    def adapters(self) -> list[str]:
        return list(self._names)

    def load_adapter(self, name: str, path: Path) -> None:
        """Load a peft adapter folder under `name` (not switched to). Refusals raise AdapterError, changing nothing."""
        path = Path(path)
        with self.lock:
            if name in self._names:
                return  # versions are immutable: the same name is the same weights
            hotswap.check_folder(path, (self.model_id, self.revision, self.preset.architecture))
            self._serial += 1
            pname = f"a{self._serial}"
            self.model = hotswap.load_into(self.base, self.model, pname, path, self._names.get(self._active))
            self._names[name] = pname

    def use_adapter(self, name: str | None) -> None:
        """Serve with adapter `name`, or with the base model when None."""
        with self.lock:
            if name is not None:
                if name not in self._names:
                    raise AdapterError(f"adapter {name!r} is not loaded (loaded: {', '.join(self._names) or 'none'})")
                self.model.set_adapter(self._names[name], inference_mode=True)
            self._active = name

    def drop_adapter(self, name: str) -> None:
        """Unload adapter `name`; if it was serving, the base model serves."""
        with self.lock:
            pname = self._names.pop(name, None)
            if pname is None:
                return
            if self._active == name:
                self._active = None
            if self._followed and name in self._followed:
                self._followed.remove(name)
            if not self._names:
                self.model = self.model.unload()  # the last one: back to the plain base model
            else:
                if pname in self.model.active_adapters:  # move peft off it first (else it warns)
                    self.model.set_adapter(next(iter(self._names.values())), inference_mode=True)
                self.model.delete_adapter(pname)
                if self._active is not None:
                    self.model.set_adapter(self._names[self._active], inference_mode=True)

    def follow_pointer(self) -> str | None:
        """Switch to the version `adapters_dir/current` names, if it changed since the last look.

        Cheap when unchanged (one stat). A version that cannot load is logged and
        kept in `pointer_error`; the adapter in service stays, so answers go on."""
        if self.adapters_dir is None:
            return self._active
        try:
            st = (self.adapters_dir / POINTER).stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        with self.lock:
            if key == self._pointer_key:
                return self._active
            self._pointer_key = key
            version = read_pointer(self.adapters_dir) if key else None
            try:
                hotswap.check_name(version)
                if version is not None and version not in self._names:
                    self.load_adapter(version, self.adapters_dir / version)
                self.use_adapter(version)
                if version is not None:  # most recently served last
                    self._followed = [v for v in self._followed if v != version] + [version]
                self.pointer_error = None
            except AdapterError as e:
                self.pointer_error = f"pointer names {version!r}, which cannot serve: {e}"
                log.warning("%s; still serving %s", self.pointer_error, self._active or "the base model")
            # Keep the served version and the one before it (instant rollback); older ones free memory.
            for old in self._followed[:-2]:
                if old != self._active:
                    self.drop_adapter(old)
            return self._active
