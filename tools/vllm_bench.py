"""Throughput of N concurrent questions against N in a row, through a vLLM server: `python -m tools.vllm_bench --url URL`.

`--start DIR` builds the test model and its adapters (tools/vllm_server.py) and
starts a CPU server first (needs `make vllm-venv`). Questions are the golden
set's (knowledge/eval/golden.jsonl, never the held-out test set), sent
through the bot's own `RemoteGenerator` with greedy decoding and a fixed
number of new tokens, so both runs do the same work. Prints one JSON object;
`ratio` is concurrent throughput (tokens/s) over sequential.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def questions(n: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in (ROOT / "knowledge/eval/golden.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return [[{"role": "user", "content": rows[i % len(rows)]["question"]}] for i in range(n)]


def bench(url: str, n: int = 8, max_tokens: int = 64, version: str | None = None) -> dict:
    from bot.llm import remote

    gen = remote.RemoteGenerator(url, tokenizer=None, pointer=lambda: version, max_concurrency=n)
    chats = questions(n)
    gen.generate(chats[0], max_tokens, lambda p: None)  # warm-up: the first request compiles and allocates
    t0 = time.perf_counter()
    seq = [gen.generate(c, max_tokens, lambda p: None) for c in chats]
    seq_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    futures = [gen.submit(c, max_tokens, lambda p: None) for c in chats]
    par = [f.result(timeout=600) for f in futures]
    par_s = time.perf_counter() - t0
    gen.close()
    seq_tok, par_tok = sum(g.completion_tokens for g in seq), sum(g.completion_tokens for g in par)
    return {"questions": n, "max_tokens": max_tokens, "adapter": version,
            "sequential_s": round(seq_s, 2), "concurrent_s": round(par_s, 2),
            "sequential_tok_s": round(seq_tok / seq_s, 1), "concurrent_tok_s": round(par_tok / par_s, 1),
            "ratio": round((par_tok / par_s) / (seq_tok / seq_s), 2),
            "same_answers": [g.text for g in seq] == [g.text for g in par]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="the server's base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--start", type=Path, help="build the test model under this folder and start a CPU server")
    p.add_argument("-n", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--adapter", help="ask for this adapter version instead of the base model")
    a = p.parse_args(argv)
    if not a.url and not a.start:
        p.error("give --url of a running server, or --start DIR")
    proc = None
    if a.start:
        from tools import vllm_server

        w = vllm_server.world(a.start)
        proc, a.url = vllm_server.start(w["model"], w["adapters"], a.start / "vllm.log")
    try:
        print(json.dumps(bench(a.url, a.n, a.max_tokens, a.adapter)))
    finally:
        if proc is not None:
            from tools import vllm_server

            vllm_server.stop(proc)


if __name__ == "__main__":
    main()
