"""One thread owns the model and serialises access to it; waiting questions are answered as one batch.

A GPU runs eight decoding rows in about the time of one (decoding is bound
by reading the weights, not by arithmetic), so questions that arrive
together are drained from the queue and sent as one batched `generate`
call, each row streaming to its own asker. Callers never block:
`submit` returns a `concurrent.futures.Future` at once, which asyncio
transports await with `asyncio.wrap_future(worker.submit(...))`.
`on_token` callbacks run on the worker thread; an event-loop transport
should hop back with `loop.call_soon_threadsafe`.

A worker is itself a `Generator` (bot/llm/generator.py): it answers for
the model it wraps (`model_id`, `revision`, `count_tokens`), so the
answerer never needs to know whether a worker stands in front.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Protocol

from bot.llm.generator import Generation, is_out_of_memory

log = logging.getLogger(__name__)
_STOP = object()


class BatchGenerator(Protocol):
    """What the worker needs of the model it owns: a LocalGenerator, or a test's stand-in."""

    model_id: str
    revision: str

    def count_tokens(self, text: str) -> int: ...

    def generate_batch(self, requests: list[tuple]) -> list[Generation]: ...


class ModelWorker:
    def __init__(self, generator: BatchGenerator, max_batch: int = 8, max_wait_s: float = 0.005):
        """`generator` is a LocalGenerator (see BatchGenerator).

        `max_wait_s` is how long the worker, woken by one question, waits for
        others to join its batch: a burst of questions arrives within
        microseconds, and 5 ms is nothing beside a generation."""
        self.generator = generator
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.calls = 0  # generate calls made by this worker
        self.batched_calls = 0  # of which with more than one question
        self.largest_batch = 0
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="model-worker", daemon=True)
        self._thread.start()

    def submit(self, messages: list[dict], max_new_tokens: int | None = None,
               on_token: Callable[[str], None] | None = None) -> Future:
        """Queue one chat for generation; the future resolves to a `Generation` (or its error)."""
        if self._closed:
            raise RuntimeError("the model worker is closed")
        future: Future = Future()
        self._queue.put((future, messages, max_new_tokens, on_token))
        return future

    def generate(self, messages: list[dict], max_new_tokens: int | None = None,
                 on_token: Callable[[str], None] | None = None) -> Generation:
        """`submit`, waiting for the answer."""
        return self.submit(messages, max_new_tokens, on_token).result()

    @property
    def model_id(self) -> str:
        return self.generator.model_id

    @property
    def revision(self) -> str:
        return self.generator.revision

    def count_tokens(self, text: str) -> int:
        """Counted on the caller's thread: the tokenizer does not wait for the model."""
        return self.generator.count_tokens(text)

    @property
    def active_adapter(self) -> str | None:
        return self.generator.active_adapter

    @property
    def depth(self) -> int:
        """Questions waiting for the model (not counting the batch being generated): /healthz and /metrics."""
        return self._queue.qsize()

    def close(self, timeout: float | None = None) -> None:
        """Finish the questions already queued, then stop the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _take_batch(self, first) -> tuple[list, bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            batch, stop = self._take_batch(item)
            # A caller may have cancelled while queued: drop it before spending tokens on it.
            batch = [b for b in batch if b[0].set_running_or_notify_cancel()]
            if batch:
                self._serve(batch)

    def _serve(self, batch: list) -> None:
        streamed = [False] * len(batch)

        def relay(i, callback):
            def on_token(piece):
                streamed[i] = True
                callback(piece)
            return on_token if callback else None

        requests = [(m, n, relay(i, cb)) for i, (_, m, n, cb) in enumerate(batch)]
        try:
            results = self.generator.generate_batch(requests)
        except Exception as e:
            if is_out_of_memory(e):
                _free_gpu_cache()  # what the failed batch held goes back before the next question
            if len(batch) > 1 and not any(streamed):
                # One bad question (too long for the context, say) must not fail
                # the others: answer each alone. Nothing was streamed yet, so no
                # asker sees text twice.
                log.warning("batch of %d failed (%s); answering one by one", len(batch), e)
                for item in batch:
                    self._serve([item])
                return
            for future, *_ in batch:
                future.set_exception(e)
            return
        self.calls += 1
        self.batched_calls += len(batch) > 1
        self.largest_batch = max(self.largest_batch, len(batch))
        for (future, *_), result in zip(batch, results):
            future.set_result(result)


def _free_gpu_cache() -> None:
    """Return cached CUDA blocks after an out-of-memory error; nothing to do without torch or CUDA."""
    import sys

    torch = sys.modules.get("torch")  # a generator that ran on CUDA has imported it already
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
