"""Per-row token streaming for batched `generate` calls.

transformers' own TextStreamer refuses batches, yet the model worker runs
up to eight questions as one `generate` call and each asker wants its own
answer as it is written. `RowStreamer` splits each step's tokens by row,
stops a row at its own stop token or token limit, and hands each row's new
text to that row's callback. The text a row's callbacks receive, joined,
is exactly the row's final text, which is what `Generation.text` holds.
"""
from __future__ import annotations

import logging
from typing import Callable

from transformers.generation.streamers import BaseStreamer

log = logging.getLogger(__name__)


class RowStreamer(BaseStreamer):
    def __init__(self, tokenizer, callbacks: list[Callable[[str], None] | None], limits: list[int], stop_ids: set[int]):
        self.tokenizer = tokenizer
        self.callbacks = list(callbacks)
        self.limits = limits
        self.stop_ids = stop_ids
        n = len(callbacks)
        self.ids: list[list[int]] = [[] for _ in range(n)]  # completion tokens, stop token included
        self.done = [False] * n
        self.sent = [""] * n  # text already handed to each callback
        self._prompt_seen = False

    def put(self, value) -> None:
        # generate() first puts the whole prompt batch, then one token per row per step.
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.done[row]:
                continue  # finished rows get pad tokens from generate(): not ours
            self.ids[row].append(token)
            if token in self.stop_ids or len(self.ids[row]) >= self.limits[row]:
                self.done[row] = True
            self._emit(row, final=False)

    def end(self) -> None:
        for row in range(len(self.ids)):
            self._emit(row, final=True)

    def text(self, row: int) -> str:
        """The row's completion as text (stop token and specials dropped)."""
        ids = [t for t in self.ids[row] if t not in self.stop_ids]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def completion_tokens(self, row: int) -> int:
        return len(self.ids[row])

    def _emit(self, row: int, final: bool) -> None:
        text = self.text(row)
        # Byte-level BPE splits a Chinese character across tokens: a trailing
        # U+FFFD is half a character, so wait for the rest before sending.
        if not final and text.endswith("\ufffd"):
            return
        sent = self.sent[row]
        if len(text) <= len(sent) or not text.startswith(sent):
            return
        self.sent[row] = text
        callback = self.callbacks[row]
        if callback is None:
            return
        try:
            callback(text[len(sent):])
        except Exception:
            # One asker's broken transport must not abort the others' answers.
            log.exception("token callback failed; no more tokens go to it")
            self.callbacks[row] = None
