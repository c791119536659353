"""Terminal chat: `python -m bot chat`.

Until the model layer lands, an answer is the best passages with their
sources, which is also what the assistant falls back to when no model can be
loaded.
"""
from __future__ import annotations

import sys

BANNER = (
    "Ask a question about the knowledge base (中文或English). "
    "Commands: /quit to leave. Answers are the best passages and their sources."
)


def render(hits, limit: int = 400) -> str:
    if not hits:
        return "I found nothing in the knowledge base about that."
    out = []
    for n, h in enumerate(hits, 1):
        text = " ".join(h.text.split())
        if len(text) > limit:
            text = text[:limit] + "…"
        out.append(f"[{n}] {text}\n    — {h.doc} › {h.heading}")
    return "\n".join(out)


def run(searcher, k: int = 3, stdin=None, stdout=None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    interactive = stdin.isatty()
    print(BANNER, file=stdout)
    while True:
        if interactive:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        question = line.strip()
        if not question:
            continue
        if question in ("/quit", "/exit", "quit", "exit"):
            break
        print(render(searcher.search(question, k)), file=stdout, flush=True)
        print(file=stdout)
    return 0
