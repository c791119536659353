"""The model benchmarks on the tiny preset's architecture (the figures themselves come from the CLI)."""
from __future__ import annotations

from bot import cli
from bot.llm import bench as model_bench


def test_bench_shrinks_linear_layers_in_4bit_and_times_generation():
    r = model_bench.run("tiny", "cpu", new_tokens=4, prompt_tokens=16, concurrency=2, log=lambda *a: None)
    assert set(r["variants"]) == {"bf16", "nf4", "nf4-train"}
    assert r["ratio_linear"] < 0.5  # 4 bits a weight and block scales against 16 bits
    assert all(v["tokens_per_s"] > 0 for v in r["variants"].values())
    assert "4-bit / bf16" in model_bench.format_text(r)


def test_bench_train_runs_qlora_beside_a_serving_copy(capsys):
    assert cli.main(["models", "bench-train", "tiny", "--steps", "2", "--seq-len", "32", "--json"]) == 0
    import json

    r = json.loads(capsys.readouterr().out)
    assert r["preset"] == "tiny" and r["steps"] == 2 and r["seq_len"] == 32
    # LoRA only: a few percent of the weights train, the 4-bit base stays frozen.
    assert 0 < r["train"]["trainable_params"] < r["params"] / 5
    assert r["train"]["tokens_per_s"] > 0 and r["serve"]["tokens_per_s"] > 0
    assert r["peak_together_gib"] is None  # GPU memory is only measured on a GPU
