"""The learning loop on the tiny preset for a test: settings, a golden set and huey in immediate mode."""
from __future__ import annotations

import json
from types import SimpleNamespace


def tiny_loop(tiny_model_dir, kb_db, tmp_path, monkeypatch, golden_rows: list[dict]) -> SimpleNamespace:
    """Point every loop setting at `tmp_path` (2 training steps: tests that need learning set their own)
    and run jobs inline; `golden_rows` ({"question", "answer"}) become the golden set."""
    from bot.learning import jobs

    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in golden_rows), encoding="utf-8")
    env = {"BOT_DB": tmp_path / "bot.db", "BOT_MODEL": "tiny", "BOT_CACHE_DIR": tiny_model_dir.parent,
           "BOT_ADAPTERS_DIR": tmp_path / "adapters", "BOT_GOLDEN_SET": golden, "BOT_EMBEDDER": "none",
           "BOT_TRAIN_STEPS": 2, "BOT_HUEY_DB": tmp_path / "huey.db"}
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(jobs.huey, "immediate", True)
    return SimpleNamespace(db=kb_db, jobs=jobs, adapters=tmp_path / "adapters", env={k: str(v) for k, v in env.items()},
                           tmp=tmp_path)
