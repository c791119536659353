"""The one fake model of the test suite: a `Generator` (bot/llm/generator.py) that says what it is told.

Where a test is not about the model, the model is this (as simonw's `llm`
fakes its models); retrieval, SQLite, the prompt builder and the transports
stay real. tests/test_generator_seam.py holds it to the same protocol as the
real generators, so a test cannot lean on something a real model lacks.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Callable

from bot.llm.generator import Generation, resolved

# An answer that cites the first passage, as a grounded model would.
ANSWER = "边缘计算是在靠近数据源的地方进行计算[1]，可以降低延迟。"

Reply = str | Callable[[list[dict]], str]


class ScriptedGenerator:
    """Replies with `replies` in order (each a text, or a function of the messages), the last one
    again once they run out; `ANSWER` when given none.

    The reply streams `piece` characters at a time (None: nothing streams, the whole text comes at
    the end), sleeping `delay` seconds before each piece. `fail` is raised at once, or after
    `fail_after` pieces. One question at a time, like a model on one device; every chat it was
    given is kept in `seen`. `delay` and `fail` may be changed while it serves.
    """

    def __init__(self, *replies: Reply, piece: int | None = 2, delay: float = 0.0,
                 fail: Exception | None = None, fail_after: int | None = None, prompt_tokens: int = 10,
                 adapter: str | None = None, model_id: str = "scripted/model", revision: str = "rev1"):
        self.replies: list[Reply] = list(replies) or [ANSWER]
        self.piece, self.delay, self.fail, self.fail_after = piece, delay, fail, fail_after
        self.prompt_tokens, self.adapter = prompt_tokens, adapter
        self.model_id, self.revision = model_id, revision
        self.seen: list[list[dict]] = []
        self.lock = threading.Lock()

    depth = 0  # one question at a time, none waiting: the caller's thread is the queue

    @property
    def active_adapter(self) -> str | None:
        return self.adapter

    def count_tokens(self, text: str) -> int:
        return len(text)

    def generate(self, messages: list[dict], max_new_tokens: int | None = None,
                 on_token: Callable[[str], None] | None = None) -> Generation:
        with self.lock:
            self.seen.append(messages)
            if self.fail is not None and self.fail_after is None:
                raise self.fail
            reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
            text = reply(messages) if callable(reply) else reply
            step = self.piece or len(text) or 1
            for n, i in enumerate(range(0, len(text), step)):
                if self.fail is not None and n >= self.fail_after:
                    raise self.fail
                if self.delay:
                    time.sleep(self.delay)
                if on_token and self.piece:
                    on_token(text[i:i + step])
        return Generation(text, self.prompt_tokens, len(text), self.adapter)

    def submit(self, messages: list[dict], max_new_tokens: int | None = None,
               on_token: Callable[[str], None] | None = None) -> Future[Generation]:
        return resolved(self.generate, messages, max_new_tokens, on_token)
