"""`make gpu-check` where there is no GPU (CI, this machine): it refuses at once and clearly, and the part that
builds its random checkpoint works (on a CPU, trimmed to one layer). The check itself needs a CUDA GPU and the
GPU build of vLLM: README "GPU check"."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path, path_dir: Path, *args):
    env = dict(os.environ, PATH=str(path_dir))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "tools/gpu_check.py", "--workdir", str(tmp_path / "work"), *args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    return r, time.monotonic() - t0


def test_without_nvidia_smi_it_refuses_before_doing_anything(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    r, seconds = _run(tmp_path, empty)
    assert r.returncode == 2, r
    assert "no NVIDIA GPU" in r.stderr and "nvidia-smi is not installed" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "work").exists() and seconds < 20  # nothing built, no torch imported


def test_a_driver_that_sees_no_gpu_is_refused_with_its_message(tmp_path):
    # The GPU is what tests fake: an nvidia-smi that fails the way it does on a host whose driver is not loaded.
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'"
                   " >&2\nexit 9\n")
    smi.chmod(0o755)
    r, _ = _run(tmp_path, fake)
    assert r.returncode == 2 and "lists no GPU" in r.stderr and "could not communicate" in r.stderr, r
    r, _ = _run(tmp_path, fake, "--preflight")  # what `make gpu-check` runs before installing vLLM's GPU build
    assert r.returncode == 2 and not (tmp_path / "work").exists()


def test_the_random_checkpoint_of_a_preset_saves_loads_and_takes_an_adapter(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bot.llm import presets
    from tools import gpu_check, vllm_server

    out = tmp_path / "model"
    built = gpu_check.build_checkpoint("qwen2.5-0.5b-instruct", out, layers=1, log=lambda *a: None)
    arch = presets.load("qwen2.5-0.5b-instruct").architecture
    cfg = json.loads((out / "config.json").read_text())
    # The preset's shapes (one layer here), the offline tokenizer's vocabulary, rope_theta where vLLM reads it.
    assert (cfg["model_type"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (
        arch["model_type"], arch["hidden_size"], arch["num_attention_heads"], arch["num_key_value_heads"])
    assert cfg["num_hidden_layers"] == 1 and cfg["rope_theta"] == arch["rope_theta"]
    tok = AutoTokenizer.from_pretrained(out)
    assert cfg["vocab_size"] == len(tok) == built["vocab"] and tok.eos_token == "<|im_end|>"
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    prompt = tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(ids).logits.shape[-1] == len(tok)
    adapter = vllm_server.make_adapter(out, tmp_path / "v0001", seed=1)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(out)
