"""Model benchmarks: `python -m bot models bench` and `python -m bot models bench-train`.

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

    from bot.llm import presets
    from bot.llm.generation import _disable_cpu_repack, _dtype

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


def run_train(preset: str, device: str = "cpu", *, steps: int = 10, seq_len: int = 512, batch_size: int | None = None,
              serve_batch: int = 8, serve_tokens: int = 32, gradient_checkpointing: bool = True, log=print) -> dict:
    """QLoRA training speed and memory for a preset's architecture, beside a serving copy: `models bench-train`.

    The architecture is built at random in bf16 and saved; then, in one
    process, a 4-bit serving copy answers `serve_batch` questions at once, and
    a second 4-bit copy with the preset's LoRA recipe trains `steps` steps of
    `batch_size` x `seq_len` tokens. On a GPU the process's peak allocated
    memory is therefore what inference and training need together on one
    card (the deployment goal: both fit one 80 GB GPU). Loss values mean
    nothing here (random weights, random tokens): this measures cost only."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    from bot.llm import presets, training
    from bot.llm.generation import _disable_cpu_repack, _dtype

    p = presets.load(preset)
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda asked for, but torch sees no CUDA GPU here")
    batch_size = batch_size or p.training.batch_size
    arch = dict(p.architecture)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    q = p.quantization
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                             bnb_4bit_compute_dtype=_dtype(q.compute_dtype), bnb_4bit_use_double_quant=q.double_quant)
    gib = 2**30
    result = {"preset": p.name, "device": device, "steps": steps, "seq_len": seq_len, "batch_size": batch_size,
              "lora": {"r": p.lora.r, "alpha": p.lora.alpha, "target_modules": list(p.lora.target_modules)},
              "gradient_checkpointing": gradient_checkpointing}

    def peak() -> float | None:
        return round(torch.cuda.max_memory_allocated() / gib, 2) if device == "cuda" else None

    def load4():
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.bfloat16, quantization_config=bnb,
                                                     device_map={"": 0} if device == "cuda" else None)
        return model

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        log(f"building {p.name}'s architecture at random in bf16 (on {device}) and saving it")
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        result["params"] = sum(t.numel() for t in model.parameters())
        model.save_pretrained(tmp)
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

        log(f"serving copy: 4-bit, {serve_batch} questions of 64 tokens at once, {serve_tokens} new tokens")
        served = load4().eval()
        ids = torch.randint(10, config.vocab_size - 10, (serve_batch, 64), generator=torch.Generator().manual_seed(1))
        t0 = time.perf_counter()
        with torch.inference_mode():
            served.generate(input_ids=ids.to(served.device), attention_mask=torch.ones_like(ids).to(served.device),
                            max_new_tokens=serve_tokens, min_new_tokens=serve_tokens, do_sample=False, pad_token_id=0)
        _sync(device)
        result["serve"] = {"batch": serve_batch, "tokens_per_s": round(serve_batch * serve_tokens /
                                                                        (time.perf_counter() - t0), 2),
                           "peak_gib": peak()}

        log(f"training copy: 4-bit + LoRA r={p.lora.r}, {steps} steps of {batch_size}x{seq_len} tokens")
        model = load4()
        if device == "cpu":
            _disable_cpu_repack(model)  # STACK.md trap A: the inference layout loses gradients
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        model = training.add_lora(model, p.lora)
        trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
        params = [t for t in model.parameters() if t.requires_grad]
        opt = torch.optim.AdamW(params, lr=p.training.learning_rate)
        gen = torch.Generator().manual_seed(2)
        model.train()
        times = []
        for step in range(steps + 1):  # step 0 warms up kernels and the allocator; it is not timed
            batch = torch.randint(10, config.vocab_size - 10, (batch_size, seq_len), generator=gen).to(device)
            _sync(device)
            t0 = time.perf_counter()
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            if step:
                times.append(time.perf_counter() - t0)
            log(f"  step {step}/{steps}: {time.perf_counter() - t0:.2f} s")
        seconds = sum(times)
        result["train"] = {"trainable_params": trainable, "tokens_per_s": round(steps * batch_size * seq_len / seconds, 1),
                           "s_per_step": round(seconds / steps, 3)}
        result["peak_together_gib"] = peak()
        if device == "cuda":
            result["fits_80gb_together"] = result["peak_together_gib"] < 80
        del model, served, opt
        gc.collect()
    return result


def format_train_text(r: dict) -> str:
    lines = [f"{r['preset']} architecture, random weights, on {r['device']}: {r['params']:,} parameters",
             f"serving copy (4-bit): {r['serve']['batch']} questions at once, {r['serve']['tokens_per_s']:.1f} tok/s",
             f"QLoRA (r={r['lora']['r']}, {len(r['lora']['target_modules'])} target modules, "
             f"gradient checkpointing {'on' if r['gradient_checkpointing'] else 'off'}): "
             f"{r['train']['trainable_params']:,} trainable parameters, {r['batch_size']}x{r['seq_len']} tokens/step, "
             f"{r['train']['s_per_step']:.3f} s/step, {r['train']['tokens_per_s']:.1f} tokens/s"]
    if r.get("peak_together_gib") is not None:
        lines.append(f"GPU peak: serving alone {r['serve']['peak_gib']:.2f} GiB; serving + training "
                     f"{r['peak_together_gib']:.2f} GiB ({'fits' if r['fits_80gb_together'] else 'does NOT fit'} "
                     "one 80 GB GPU)")
    return "\n".join(lines)


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
