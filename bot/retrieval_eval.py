"""Retrieval quality and speed on a question set: `python -m bot eval-retrieval [FILE]`.

A hit is correct when it comes from the expected document and its text
contains the `evidence` span verbatim. Unanswerable questions (no `doc`) are
left out of recall and MRR; they only count towards latency.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def load_questions(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not str(row.get("question", "")).strip():
            raise SystemExit(f"{path}:{n}: each line needs a non-empty \"question\"")
        rows.append(row)
    return rows


def correct(hit, row: dict) -> bool:
    return Path(hit.doc).name == row["doc"] and row["evidence"] in hit.text


def evaluate(searcher, rows: list[dict], k: int = 5) -> dict:
    """Recall@1, recall@k and MRR per language, plus latency percentiles and misses."""
    searcher.search("warm-up 预热", k)  # first call pays for lazy imports and caches
    per_lang: dict[str, dict] = {}
    latencies, misses = [], []
    for row in rows:
        t0 = time.perf_counter()
        hits = searcher.search(row["question"], k)
        latencies.append((time.perf_counter() - t0) * 1000)
        if not row.get("doc"):
            continue
        rank = next((i + 1 for i, h in enumerate(hits) if correct(h, row)), None)
        s = per_lang.setdefault(row.get("lang", "?"), {"n": 0, "r1": 0, "rk": 0, "rr": 0.0})
        s["n"] += 1
        s["r1"] += rank == 1
        s["rk"] += rank is not None
        s["rr"] += 1 / rank if rank else 0.0
        if rank != 1:
            misses.append({"id": row.get("id"), "lang": row.get("lang"), "rank": rank, "question": row["question"]})
    report = {
        lang: {"n": s["n"], "recall@1": s["r1"] / s["n"], f"recall@{k}": s["rk"] / s["n"], "mrr": s["rr"] / s["n"]}
        for lang, s in sorted(per_lang.items())
    }
    lat = np.array(latencies or [0.0])
    return {
        "k": k,
        "by_lang": report,
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)), "n": len(latencies)},
        "misses": misses,
    }


def format_report(result: dict, path: Path) -> str:
    k = result["k"]
    lines = [f"{path}", f"{'lang':<6}{'n':>4}{'recall@1':>10}{f'recall@{k}':>10}{'MRR':>8}"]
    for lang, s in result["by_lang"].items():
        lines.append(f"{lang:<6}{s['n']:>4}{s['recall@1']:>10.3f}{s[f'recall@{k}']:>10.3f}{s['mrr']:>8.3f}")
    lat = result["latency_ms"]
    lines.append(f"latency over {lat['n']} queries: p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms")
    if result.get("load_ms") is not None:
        lines.append(f"index load {result['load_ms']:.0f} ms")
    for m in result["misses"]:
        where = f"rank {m['rank']}" if m["rank"] else f"not in top {k}"
        lines.append(f"  miss {m['id']} ({m['lang']}, {where}): {m['question']}")
    return "\n".join(lines)
