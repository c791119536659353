"""The GPU half of "Scaling out", in one go: `make gpu-check` (or `python -m tools.gpu_check --vllm-python PY`).

What the CPU suite cannot test: vLLM's 4-bit bitsandbytes path with LoRA, on
one CUDA GPU (an H100/H200), with no model hub. It

1. builds a preset's real architecture (`[architecture]` of models/<preset>.toml,
   default qwen2.5-0.5b-instruct) with random weights in bf16, the way
   `models bench` does, and saves it with a tokenizer built offline
   (tests/qwen_tokenizer.py: Qwen2.5's added tokens and ChatML; the
   vocabulary is that tokenizer's, so a random model never emits an id the
   tokenizer cannot decode);
2. saves two LoRA versions for it (tools/vllm_server.make_adapter: random,
   non-zero weights), one in the resolver's folder, one only the runtime API
   can reach;
3. starts vLLM from the GPU venv with `--quantization bitsandbytes`
   (in-flight 4-bit) and `--enable-lora`, both live-adapter routes on
   (VLLM_PLUGINS=lora_filesystem_resolver, VLLM_ALLOW_RUNTIME_LORA_UPDATING);
4. checks, through the bot's own RemoteGenerator: streaming == non-streaming
   (base and adapter), a version found by the resolver answers differently
   from the base, load/unload through `/v1/load_lora_adapter` and
   `/v1/unload_lora_adapter`, and 8 concurrent questions against 8 in a row
   (tools/vllm_bench.py; PASS at a ratio of 2 or more);
5. runs the GPU-marked tests (`pytest -m gpu`) in the bot's venv, unless
   --no-pytest;

and prints PASS/FAIL per check with its figures; exit 0 only when all pass.
On a machine without an NVIDIA GPU it refuses at once (exit 2), before
building or installing anything. Target: under 10 minutes on one H100/H200
once the venvs exist (the first `make gpu-check` also installs vLLM, a few
GB).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVED = "kb-gpu-check"
CHAT = [{"role": "user", "content": "什么是用户优势？"}]
NO_GPU = 2  # exit status of a refusal: nothing was checked


def gpu_present() -> str | None:
    """None when an NVIDIA GPU is visible, else why not (no torch import: the refusal must be instant)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "nvidia-smi is not installed (no NVIDIA driver)"
    try:
        r = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi did not answer ({e})"
    if r.returncode != 0 or "GPU" not in r.stdout:
        return f"nvidia-smi lists no GPU ({(r.stderr or r.stdout).strip()[:200] or 'empty output'})"
    return None


def build_checkpoint(preset: str, out: Path, *, layers: int | None = None, device: str = "cpu", log=print) -> dict:
    """The preset's architecture at random (bf16) with the offline Qwen-shaped tokenizer, saved at `out` so
    vLLM can load it (its transformers may be older: the tokenizer class and rope_theta are written plainly).
    `layers` trims the depth (a CPU test builds a tiny one); the other shapes are the preset's."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    import qwen_tokenizer

    from bot.llm import presets
    from tools.scale_demo import servable

    p = presets.load(preset)
    t0 = time.perf_counter()
    tok = qwen_tokenizer.build()
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    arch = dict(p.architecture)
    model_type = arch.pop("model_type")
    arch["vocab_size"] = len(tok)
    if layers:
        arch["num_hidden_layers"] = layers
    config = AutoConfig.for_model(model_type, bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id, **arch)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    params = sum(t.numel() for t in model.parameters())
    log(f"{p.name}: {params:,} parameters at random (vocabulary {len(tok)}), saving to {out}")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    servable(Path(out))
    del model
    return {"preset": p.name, "params": params, "vocab": len(tok), "seconds": round(time.perf_counter() - t0, 1)}


def vllm_command(python: str, model: Path, port: int) -> list[str]:
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", SERVED,
            "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16",
            # In-flight 4-bit: vLLM quantises the bf16 checkpoint with bitsandbytes as it loads it.
            "--quantization", "bitsandbytes",
            "--enable-lora", "--max-lora-rank", "16", "--max-loras", "4",
            "--max-model-len", "4096", "--gpu-memory-utilization", "0.5"]


def start_vllm(python: str, model: Path, resolver_dir: Path, log_file: Path, timeout_s: float = 420):
    from tools.vllm_server import free_port, wait_serving

    port = free_port()
    env = dict(os.environ, VLLM_PLUGINS="lora_filesystem_resolver", VLLM_LORA_RESOLVER_CACHE_DIR=str(resolver_dir),
               VLLM_ALLOW_RUNTIME_LORA_UPDATING="true", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(vllm_command(python, model, port), stdout=open(log_file, "wb"),
                            stderr=subprocess.STDOUT, env=env, cwd=str(model.parent))
    return proc, wait_serving(proc, port, log_file, timeout_s)


class Checks:
    def __init__(self):
        self.rows: list[tuple[str, bool, str]] = []

    def check(self, name: str, fn) -> None:
        """Run one check; it returns (passed, figures). An exception is a FAIL with its message."""
        t0 = time.perf_counter()
        try:
            ok, figures = fn()
        except Exception as e:  # one broken check must not hide the others' results
            ok, figures = False, f"{type(e).__name__}: {e}"
        self.rows.append((name, ok, f"{figures} ({time.perf_counter() - t0:.1f} s)"))
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {self.rows[-1][2]}", flush=True)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(ok for _, ok, _ in self.rows)

    def summary(self) -> str:
        width = max(len(n) for n, _, _ in self.rows)
        lines = [f"{'PASS' if ok else 'FAIL'}  {n.ljust(width)}  {f}" for n, ok, f in self.rows]
        verdict = "PASS" if self.passed else "FAIL"
        return "\n".join(["", "gpu-check summary", *lines, f"gpu-check: {verdict} "
                          f"({sum(ok for _, ok, _ in self.rows)}/{len(self.rows)} checks)"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm-gpu" / "bin" / "python"),
                   help="the python of a venv with the GPU build of vLLM (`make gpu-check` creates .venv-vllm-gpu)")
    p.add_argument("--preset", default="qwen2.5-0.5b-instruct", help="whose [architecture] to build at random")
    p.add_argument("--workdir", help="keep the checkpoint, adapters and logs here (default: a temporary directory)")
    p.add_argument("--no-pytest", action="store_true", help="skip the GPU-marked tests of the bot's venv")
    p.add_argument("--preflight", action="store_true", help="only say whether this machine can run the check")
    args = p.parse_args(argv)

    why = gpu_present()
    if why:
        print(f"gpu-check: refused: this machine has no NVIDIA GPU: {why}. The check needs one CUDA GPU "
              f"(an H100/H200); nothing was built, installed or run.", file=sys.stderr)
        return NO_GPU
    if args.preflight:
        print("gpu-check: an NVIDIA GPU is visible")
        return 0
    if not Path(args.vllm_python).is_file():
        print(f"gpu-check: no vLLM venv at {args.vllm_python}: run `make gpu-check` (it creates it) or give "
              f"--vllm-python", file=sys.stderr)
        return NO_GPU

    import torch

    from bot.llm import remote
    from tools import vllm_bench, vllm_server

    t_all = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model, adapters, outside = work / "model", work / "adapters", work / "api-adapters"
    checks = Checks()
    built: dict = {}

    def build():
        built.update(build_checkpoint(args.preset, model, device="cuda" if torch.cuda.is_available() else "cpu"))
        vllm_server.make_adapter(model, adapters / "v0001", seed=1)
        vllm_server.make_adapter(model, outside / "v0101", seed=101)
        return True, f"{built['preset']} at random, {built['params']:,} parameters, 2 LoRA versions"

    checks.check("random checkpoint and adapters saved", build)
    if not checks.passed:
        print(checks.summary())
        return 1
    proc = None
    state: dict = {}

    def serve():
        nonlocal proc
        t0 = time.perf_counter()
        proc, state["url"] = start_vllm(args.vllm_python, model, adapters, work / "vllm.log")
        log = (work / "vllm.log").read_text(errors="replace").lower()
        return "bitsandbytes" in log, (f"ready in {time.perf_counter() - t0:.0f} s with --quantization "
                                        f"bitsandbytes --enable-lora; 'bitsandbytes' in its log: {'bitsandbytes' in log}")

    try:
        checks.check("vLLM 4-bit (bitsandbytes) + LoRA server", serve)
        if "url" in state:
            url, tok = state["url"], remote.load_tokenizer(str(model))
            pointer = {"v": None}
            gen = remote.RemoteGenerator(url, tokenizer=tok, pointer=lambda: pointer["v"])

            def streaming():
                out = []
                for version in (None, "v0001"):
                    pointer["v"] = version
                    pieces: list[str] = []
                    streamed, whole = gen.generate(CHAT, 32, pieces.append), gen.generate(CHAT, 32)
                    same = len(pieces) > 1 and "".join(pieces) == streamed.text == whole.text
                    out.append((version or "base", same, streamed.adapter == version, whole.completion_tokens))
                pointer["v"] = None
                state["base"] = gen.generate(CHAT, 32)  # what the adapters' answers must differ from
                return all(s and a for _, s, a, _ in out), "; ".join(
                    f"{v}: equal {s}, adapter recorded {a}, {n} tokens" for v, s, a, n in out)

            def resolver():
                pointer["v"] = "v0001"
                served = gen.generate(CHAT, 32)
                return (served.adapter == "v0001" and served.text != state["base"].text and gen.pointer_error is None,
                        f"v0001 served by name from the resolver's folder; differs from the base: "
                        f"{served.text != state['base'].text}")

            def runtime_api():
                api = remote.RemoteGenerator(url, tokenizer=tok, pointer=lambda: "v0101",
                                             server_adapters_dir=str(outside))
                first = api.generate(CHAT, 32)
                api.unload_adapter("v0101")
                names_after_unload = [m["id"] for m in _models(url)]
                again = api.generate(CHAT, 32)  # loaded again through the API
                api.close()
                ok = (first.adapter == again.adapter == "v0101" and first.text == again.text
                      and "v0101" not in names_after_unload and first.text != state["base"].text)
                return ok, (f"loaded v0101 from outside the resolver's folder, unloaded (listed after unload: "
                            f"{'v0101' in names_after_unload}), loaded again: same answer {first.text == again.text}")

            def concurrency():
                figures = vllm_bench.bench(url, n=8, max_tokens=64)
                return (figures["ratio"] >= 2.0 and figures["same_answers"],
                        f"8 concurrent {figures['concurrent_tok_s']} tok/s vs in a row {figures['sequential_tok_s']} "
                        f"tok/s: ratio {figures['ratio']} (PASS at 2.0), same answers {figures['same_answers']}")

            checks.check("streaming == non-streaming (base, v0001)", streaming)
            checks.check("a promoted version served by the filesystem resolver", resolver)
            checks.check("runtime load/unload API", runtime_api)
            checks.check("8 concurrent vs sequential", concurrency)
            gen.close()
    finally:
        if proc is not None:
            vllm_server.stop(proc)

    if not args.no_pytest:
        def gpu_tests():
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                "tests/gpu", "tests/test_models.py"], cwd=ROOT, capture_output=True, text=True,
                               timeout=300)
            tail = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
            return r.returncode == 0 and "skipped" not in tail, f"pytest -m gpu: {tail}"

        checks.check("GPU-marked tests (bot venv)", gpu_tests)
    print(checks.summary())
    print(f"total {time.perf_counter() - t_all:.0f} s; checkpoint, adapters and vllm.log in {work}")
    (work / "gpu-check.json").write_text(json.dumps({"rows": checks.rows, "built": built}, indent=2))
    return 0 if checks.passed else 1


def _models(url: str) -> list[dict]:
    import httpx

    return httpx.get(url + "/models", timeout=10).json()["data"]


if __name__ == "__main__":
    raise SystemExit(main())
