"""Terminal chat: `python -m bot chat`.

One conversation per session: follow-up questions see the earlier turns
(within the prompt's history budget). Tokens print as they are generated;
the sources follow the answer. When no model can be had, the answers are the
best passages and their sources, and the chat says why once at the start.
"""
from __future__ import annotations

import sys
import uuid

BANNER = "Ask a question about the knowledge base (中文或English). /quit leaves."


def render_answer(answer, streamed: bool = False) -> str:
    """The answer text (unless it was streamed already), then its sources and any notice."""
    out = [] if streamed and answer.mode == "llm" else [answer.answer]
    sources = answer.sources or answer.citations  # every passage the model was given, cited ones first
    if answer.mode == "llm" and sources:
        out.append("Sources:")
        out.extend(f"  [{c.n}] {c.doc} › {c.heading}" for c in sources)
    if answer.mode == "llm" and answer.notice:
        out.append(f"({answer.notice})")
    label = f"{answer.mode}" + (f", {answer.model}" if answer.model else "") + \
        (f", adapter {answer.adapter}" if answer.adapter else "") + f", {answer.ms:.0f} ms, id {answer.id}"
    out.append(f"— {label}")
    return "\n".join(out)


def run(answerer, stdin=None, stdout=None) -> int:
    from bot.commands import Caller

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    interactive = stdin.isatty()
    print(BANNER, file=stdout)
    print("(loading the model…)", file=stdout, flush=True)
    if answerer.generator() is None:
        print(f"(answering without a model: {answerer.unavailable_reason}; "
              "answers are the best passages and their sources)", file=stdout)
    ctx = Caller("cli", "console", "terminal", uuid.uuid4().hex[:12]).context()
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
        streamed = []

        def on_token(piece):
            streamed.append(piece)
            print(piece, end="", file=stdout, flush=True)

        answer = answerer.ask(question, ctx, on_token=on_token)
        if streamed:
            print(file=stdout)
        print(render_answer(answer, streamed=bool(streamed)), file=stdout, flush=True)
        print(file=stdout)
    return 0
