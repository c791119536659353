"""GPU host only: QLoRA training on the 7B preset's architecture beside a serving copy, on one GPU.

Skipped where torch sees no CUDA GPU (CI, the 2-core dev machine). Run on a
GPU host with `python -m pytest -q -m gpu -s tests/gpu`, or print the
figures with `python -m bot models bench-train qwen2.5-7b-instruct --device cuda`.
Needs about 16 GB of free disk for the temporary bf16 checkpoint.
"""
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_7b_qlora_training_and_serving_fit_one_80gb_gpu_together():
    from bot.llm import bench as model_bench

    r = model_bench.run_train("qwen2.5-7b-instruct", "cuda", steps=5, seq_len=1024)
    print(model_bench.format_train_text(r))
    assert r["train"]["tokens_per_s"] > 0 and r["train"]["trainable_params"] > 0
    assert r["peak_together_gib"] < 80, r
