"""Model benchmark: `python -m bot.model_bench [PRESET] [cpu|cuda] [--json]`.

Memory and speed of a preset's architecture in bf16 and in 4-bit NF4,
without its weights; `run(...)` and `format_text(...)` serve the CLI. The model is built at random from the preset's
`[architecture]` table: memory and speed depend on the shapes, not on the
values, so no hub is needed. The 4-bit model is loaded the way serving loads
one (from a saved checkpoint through `BitsAndBytesConfig`), once as the
serving process does and once with the CPU repack fix the trainer needs.
"""
from __future__ import annotations

import gc
import tempfile
import time


def _tensor_bytes(t, seen: set) -> int:
    if t is None or t.data_ptr() in seen:
        return 0
    seen.add(t.data_ptr())  # tied weights and the shared NF4 code table count once
    return t.numel() * t.element_size()


def _quant_state_bytes(weight, seen: set) -> int:
    """Scales of a 4-bit weight live in its quant_state, not in parameters: count them too."""
    qs = getattr(weight, "quant_state", None)
    if qs is None:
        return 0
    n = sum(_tensor_bytes(t, seen) for t in (qs.absmax, qs.code, getattr(qs, "offset", None)))
    if getattr(qs, "state2", None) is not None:  # double quantisation: the scales' own scales
        n += sum(_tensor_bytes(t, seen) for t in (qs.state2.absmax, qs.state2.code))
    return n


def weight_bytes(model) -> dict:
    """Bytes held by the weights: all of them, and the decoder's linear layers alone (what 4-bit shrinks)."""
    import torch

    seen: set = set()
    total = sum(_tensor_bytes(t, seen) for t in list(model.parameters()) + list(model.buffers()))
    total += sum(_quant_state_bytes(m.weight, seen) for m in model.modules() if isinstance(m, torch.nn.Linear))
    seen = set()
    linear = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"):  # Linear4bit is an nn.Linear
            linear += sum(_tensor_bytes(p, seen) for p in m.parameters(recurse=False))
            linear += _quant_state_bytes(m.weight, seen)
    return {"weights": total, "linear": linear}


class _FirstToken:
    """A streamer that notes when the first new token arrives (generate puts the prompt first)."""

    def __init__(self):
        self.calls, self.first_at = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2 and self.first_at is None:
            self.first_at = time.perf_counter()

    def end(self):
        pass


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _speed(model, device: str, vocab: int, prompt_tokens: int, new_tokens: int, concurrency: int) -> dict:
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Streamer(_FirstToken, BaseStreamer):
        pass

    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, vocab - 10, (max(1, concurrency), prompt_tokens), generator=gen)
    # min_new_tokens: a random model may emit EOS at once; every run must write the same number of tokens.
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    def one(ids, streamer=None):
        ids = ids.to(device)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, streamer=streamer, **kw)

    one(prompts[:1, :8])  # warm-up: kernels, allocator, lazy inits
    _sync(device)
    streamer = Streamer()
    t0 = time.perf_counter()
    one(prompts[:1], streamer)
    _sync(device)
    seconds = time.perf_counter() - t0
    out = {"ttft_s": round(streamer.first_at - t0, 4), "tokens_per_s": round(new_tokens / seconds, 2)}
    if concurrency > 1:
        t0 = time.perf_counter()
        for i in range(concurrency):
            one(prompts[i : i + 1])
        _sync(device)
        sequential = concurrency * new_tokens / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        one(prompts)  # the model worker's way: one generate call for all waiting questions
        _sync(device)
        batched = concurrency * new_tokens / (time.perf_counter() - t0)
        out.update(concurrency=concurrency, sequential_tokens_per_s=round(sequential, 2),
                   batched_tokens_per_s=round(batched, 2), batching_gain=round(batched / sequential, 2))
    return out


def _measure(model, label, device, vocab, prompt_tokens, new_tokens, concurrency, log) -> dict:
    import torch

    model.eval()
    row = weight_bytes(model)
    if device == "cuda":
        row["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    log(f"{label}: weights {row['weights'] / 2**20:.0f} MiB; timing {new_tokens} new tokens")
    row.update(_speed(model, device, vocab, prompt_tokens, new_tokens, concurrency))
    return row


def run(preset: str, device: str = "cpu", *, new_tokens: int = 32, prompt_tokens: int = 64,
        concurrency: int | None = None, log=print) -> dict:
    """Build the preset's architecture at random in bf16 and in 4-bit NF4; measure weight memory and generation speed.

    `concurrency` questions are also timed batched against one by one
    (default: 8 on cuda, none on cpu, where it would take minutes)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    from . import presets
    from .generation import _disable_cpu_repack, _dtype

    p = presets.load(preset)
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda asked for, but torch sees no CUDA GPU here")
    concurrency = (8 if device == "cuda" else 0) if concurrency is None else concurrency
    arch = dict(p.architecture)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    q = p.quantization
    result = {"preset": p.name, "device": device, "torch_threads": torch.get_num_threads(),
              "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        log(f"building {p.name}'s architecture at random in bf16 on {device}")
        torch.manual_seed(0)
        t0 = time.perf_counter()
        with torch.device(device):  # initialise in place: a 7B model is built on the GPU, not copied there
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.eval()
        result["params"] = sum(t.numel() for t in model.parameters())
        result["build_s"] = round(time.perf_counter() - t0, 1)
        log(f"{result['params']:,} parameters; saving a checkpoint to quantise from")
        model.save_pretrained(tmp)
        result["variants"]["bf16"] = _measure(model, "bf16", device, config.vocab_size, prompt_tokens, new_tokens,
                                              concurrency, log)
        del model  # free it before the 4-bit load, so the GPU peak below is the 4-bit model's own
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        # Serving keeps bitsandbytes' CPU inference layout; the training worker
        # turns it off (STACK.md trap A). Both are measured: they differ on CPU.
        for label, trainable in (("nf4", False), ("nf4-train", True)):
            if label == "nf4-train" and device == "cuda":
                continue  # the repack is a CPU code path: on CUDA the two are the same
            t0 = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(
                tmp, dtype=torch.bfloat16, device_map={"": 0} if device == "cuda" else None,
                quantization_config=BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                    bnb_4bit_compute_dtype=_dtype(q.compute_dtype), bnb_4bit_use_double_quant=q.double_quant))
            if trainable:
                _disable_cpu_repack(model)
            load_s = round(time.perf_counter() - t0, 1)
            result["variants"][label] = {"load_s": load_s, **_measure(
                model, label, device, config.vocab_size, prompt_tokens, new_tokens, concurrency, log)}
            del model
            gc.collect()
    bf16, nf4 = result["variants"]["bf16"], result["variants"]["nf4"]
    result["ratio_weights"] = round(nf4["weights"] / bf16["weights"], 3)
    result["ratio_linear"] = round(nf4["linear"] / bf16["linear"], 3)
    return result


def format_text(r: dict) -> str:
    """The benchmark as a small table for people."""
    mib = 2**20
    lines = [f"{r['preset']} architecture, random weights, on {r['device']} ({r['torch_threads']} threads): "
             f"{r['params']:,} parameters; prompt {r['prompt_tokens']} tokens, {r['new_tokens']} new tokens, greedy",
             f"{'':10}{'weights MiB':>12}{'linear MiB':>12}{'TTFT s':>9}{'tok/s':>8}"
             f"{'seq tok/s':>11}{'batch tok/s':>13}{'gain':>7}"]
    for label, v in r["variants"].items():
        extra = (f"{v['sequential_tokens_per_s']:>11.1f}{v['batched_tokens_per_s']:>13.1f}{v['batching_gain']:>6.2f}x"
                 if "batching_gain" in v else f"{'-':>11}{'-':>13}{'-':>7}")
        lines.append(f"{label:10}{v['weights'] / mib:>12.1f}{v['linear'] / mib:>12.1f}{v['ttft_s']:>9.3f}"
                     f"{v['tokens_per_s']:>8.1f}{extra}")
    lines.append("nf4: as the serving process loads it; nf4-train: with the CPU repack fix training needs")
    lines.append(f"4-bit / bf16: all weights {r['ratio_weights']:.3f}x, linear layers {r['ratio_linear']:.3f}x")
    if "gpu_peak_bytes" in r["variants"]["bf16"]:
        lines.append("GPU peak after load: " + ", ".join(
            f"{k} {v['gpu_peak_bytes'] / 2**30:.2f} GiB" for k, v in r["variants"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    res = run(args[0] if args else "qwen2.5-0.5b-instruct", args[1] if len(args) > 1 else "cpu",
              log=lambda msg: print(msg, file=sys.stderr))
    print(json.dumps(res, indent=2) if "--json" in sys.argv else format_text(res))
