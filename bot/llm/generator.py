"""The generator seam: what answering may ask of a model, what it gets back, and how a model fault is told.

`Answerer` (bot/answering/pipeline.py) sees a model only through the
`Generator` protocol. Three things stand behind it today: `LocalGenerator`
(one model in this process, bot/llm/generation.py), `ModelWorker` (the
thread that batches questions for it, bot/llm/model_worker.py) and the
tests' `ScriptedGenerator` (tests/fakes.py); a remote engine (an
OpenAI-compatible vLLM client) is next. Every member is required, so the
caller never probes: tests/test_generator_seam.py checks each
implementation against this list.

No torch here: answering and the chat transports import this module.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    adapter: str | None  # adapter version used, None for the base model


@runtime_checkable
class Generator(Protocol):
    """A chat model that answers with streaming.

    `model_id` and `revision` go into every answer's record. `count_tokens`
    sizes the prompt to the context budget. `generate` blocks until the
    answer is complete; `submit` returns at once with a future, so that the
    caller can bound its wait (the answerer's timeout) whether the model is
    queued behind a worker thread, far away, or in this very thread.
    `on_token` receives the answer piece by piece, possibly on another thread.
    """

    # Read-only: a worker reports the model it wraps; a plain attribute satisfies these too.
    @property
    def model_id(self) -> str: ...

    @property
    def revision(self) -> str: ...

    @property
    def depth(self) -> int:
        """Questions waiting for this generator, not yet being generated (/healthz, /metrics); 0 for one
        with no queue of its own."""
        ...

    @property
    def active_adapter(self) -> str | None:
        """The adapter version answering now (None: the base model): /healthz compares it with the pointer."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def generate(self, messages: list[dict], max_new_tokens: int | None = None,
                 on_token: Callable[[str], None] | None = None) -> Generation: ...

    def submit(self, messages: list[dict], max_new_tokens: int | None = None,
               on_token: Callable[[str], None] | None = None) -> Future[Generation]: ...


def resolved(generate: Callable[..., Generation], *args) -> Future[Generation]:
    """`generate(*args)` run now, in this thread, as a finished future: `submit` for a generator that
    has no queue of its own. Its error is kept in the future, as a worker's would be."""
    future: Future = Future()
    try:
        future.set_result(generate(*args))
    except Exception as e:
        future.set_exception(e)
    return future


class EngineUnavailable(Exception):
    """A remote engine cannot answer now (down, unreachable, too slow); the message says why, in words."""


class EngineBusy(EngineUnavailable):
    """A remote engine shed the request (HTTP 429/503): the user is told to try again in `retry_after` s."""

    def __init__(self, retry_after: int, message: str):
        super().__init__(message)
        self.retry_after = retry_after


def is_out_of_memory(e: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (a RuntimeError subclass), a MemoryError, or a CUDA/CPU allocator's message.

    Told by name and message, not by class, so that this needs no torch import."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()
