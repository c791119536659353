"""GPU host only: the 7B preset's architecture, bf16 against 4-bit NF4, batched against sequential.

Skipped where torch sees no CUDA GPU (CI, the 2-core dev machine). Run on a
GPU host with `python -m pytest -q -m gpu -s tests/gpu` (-s shows the table).
It builds the model at random from the preset's [architecture] table, so it
needs no hub access, but about 16 GB of GPU memory and 16 GB of free disk
for the temporary bf16 checkpoint that the 4-bit model is loaded from.
"""
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_7b_batches_eight_questions_and_4bit_shrinks_the_linear_layers():
    from bot.llm import bench

    r = bench.run("qwen2.5-7b-instruct", "cuda", new_tokens=32, prompt_tokens=64, concurrency=8)
    print(bench.format_text(r))
    nf4 = r["variants"]["nf4"]
    # Decoding reads every weight once per step whatever the batch: 8 rows should cost little more than 1.
    assert nf4["batching_gain"] >= 3, nf4
    # NF4 is 4 bits a weight plus block scales (double-quantised): about 0.27x of bf16.
    assert r["ratio_linear"] <= 0.35, r
    assert nf4["gpu_peak_bytes"] < r["variants"]["bf16"]["gpu_peak_bytes"]
