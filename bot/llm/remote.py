"""A `Generator` that streams chat completions from an OpenAI-compatible server (vLLM), chosen by BOT_LLM_URL.

With a remote engine the web process holds neither torch nor the model: it
sends the chat, streams the answer back (server-sent events), and counts
tokens with the model's tokenizer alone (the `tokenizers` library reading
tokenizer.json, no transformers, no torch). `import bot.llm.remote` imports
httpx only.

Adapters: every request names `model=<version in service>` (or the base
model's served name when none), so the answer records the adapter that
produced it. `pointer()` says the version in service (the database's
promotions log, read on every request, so every replica follows a
promotion at once). The server loads a version either by itself (vLLM's
filesystem resolver over the adapters folder) or, when `server_adapters_dir`
is given, through its runtime API (`POST /v1/load_lora_adapter`) the first
time the version is asked for. A version the server cannot serve (unknown,
corrupt) is remembered for `retry_bad_s` and the last version that served
(else the base model) answers instead, as the in-process model does; the
reason is kept in `pointer_error` for health checks.

Faults map onto the answerer's paths: 429/503 raise `EngineBusy` (the user is
told "busy, try again in N s"), a server that cannot be reached raises
`EngineUnavailable` (the answer is the retrieval-only one), and a server that
stops sending for `read_timeout_s`, or an answer past `total_timeout_s`,
raises `EngineUnavailable` too.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import httpx

from bot.llm.generator import EngineBusy, EngineUnavailable, Generation

log = logging.getLogger(__name__)


class AdapterRefused(Exception):
    """The server cannot serve this adapter version (unknown, corrupt, wrong base)."""


def load_tokenizer(source: str):
    """A `tokenizers.Tokenizer` from a model folder (its tokenizer.json) or a hub id: counting needs nothing more."""
    from tokenizers import Tokenizer

    path = Path(source)
    if path.is_dir():
        file = path / "tokenizer.json"
        if not file.is_file():
            raise EngineUnavailable(f"no tokenizer.json in {path}: set BOT_LLM_TOKENIZER to the served model's folder")
        return Tokenizer.from_file(str(file))
    if path.suffix == ".json" and path.is_file():
        return Tokenizer.from_file(str(path))
    try:
        return Tokenizer.from_pretrained(source)
    except Exception as e:
        raise EngineUnavailable(f"cannot load the tokenizer {source!r} (offline? set BOT_LLM_TOKENIZER "
                                f"to a local folder): {e}") from e


def parse_sse(lines: Iterator[str]) -> Iterator[dict]:
    """The JSON events of an OpenAI streaming response: `data: {...}` lines up to `data: [DONE]`.

    Comments (`: ping`), blank separators and other fields are skipped; an
    `error` event (vLLM sends one when generation fails mid-stream) raises."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            raise EngineUnavailable(f"the model server sent a malformed event: {data[:120]!r}") from None
        if isinstance(event, dict) and event.get("error"):
            err = event["error"]
            raise EngineUnavailable(f"the model server failed mid-answer: {err.get('message', err) if isinstance(err, dict) else err}")
        yield event


def _retry_after(response: httpx.Response, default: int = 5) -> int:
    try:
        return max(1, int(float(response.headers.get("retry-after", default))))
    except ValueError:  # an HTTP date: not worth parsing for a hint
        return default


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message", err) if isinstance(err, dict) else err
    except ValueError:
        msg = response.text
    return " ".join(str(msg).split())[:300]


class RemoteGenerator:
    """An OpenAI-compatible chat server behind the `Generator` seam; thread-safe."""

    def __init__(self, url: str, *, tokenizer, pointer: Callable[[], str | None] = lambda: None,
                 base_name: str | None = None, server_adapters_dir: str | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 384,
                 connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0, total_timeout_s: float = 300.0,
                 retry_bad_s: float = 60.0, max_concurrency: int = 16, transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        self.tokenizer, self.pointer = tokenizer, pointer
        self._base_name = base_name
        self.server_adapters_dir = server_adapters_dir
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.total_timeout_s, self.retry_bad_s = total_timeout_s, retry_bad_s
        self.revision = "remote"
        self.pointer_error: str | None = None
        self._good: str | None = None  # the last version that served (None: the base model)
        self._bad: dict[str, tuple[float, str]] = {}  # version -> (when refused, why)
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
                                  limits=httpx.Limits(max_connections=max_concurrency), transport=transport)
        # The server batches concurrent requests itself: one thread per request in flight, no queue here.
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="remote-llm")

    # -- the seam ----------------------------------------------------------

    @property
    def model_id(self) -> str:
        try:
            return self.base_name()
        except EngineUnavailable:
            return self.url  # answers are still recorded (retrieval-only) while the server is down

    @property
    def depth(self) -> int:
        return 0  # no queue here: the server batches what is in flight, and its own metrics show its queue

    @property
    def active_adapter(self) -> str | None:
        return self._good  # the last version the server answered with (None: the base model)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def submit(self, messages: list[dict], max_new_tokens: int | None = None,
               on_token: Callable[[str], None] | None = None) -> Future[Generation]:
        version = self.pointer()  # read on the caller's thread: a database connection stays on its own
        return self._pool.submit(self._generate, version, messages, max_new_tokens, on_token)

    def generate(self, messages: list[dict], max_new_tokens: int | None = None,
                 on_token: Callable[[str], None] | None = None) -> Generation:
        return self._generate(self.pointer(), messages, max_new_tokens, on_token)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    # -- the server --------------------------------------------------------

    def base_name(self) -> str:
        """The base model's served name: the model the server lists without a parent (vLLM lists adapters
        with their base as parent)."""
        if self._base_name is None:
            models = self._request("GET", "/models").json().get("data") or []
            bases = [m["id"] for m in models if not m.get("parent")]
            if not bases:
                raise EngineUnavailable(f"the model server at {self.url} lists no base model")
            self._base_name = bases[0]
        return self._base_name

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            r = self._http.request(method, self.url + path, **kw)
        except httpx.TimeoutException as e:
            raise EngineUnavailable(f"the model server at {self.url} did not answer in time ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise EngineUnavailable(f"the model server at {self.url} cannot be reached ({e})") from e
        self._check_busy(r)
        if r.status_code >= 400:
            raise EngineUnavailable(f"the model server answered {r.status_code} to {path}: {_detail(r)}")
        return r

    def _check_busy(self, r: httpx.Response) -> None:
        if r.status_code in (429, 503):
            raise EngineBusy(_retry_after(r), f"the model server is overloaded ({r.status_code})")

    def load_adapter(self, version: str) -> None:
        """Ask the server to load `version` from its adapters folder (runtime LoRA API). Idempotent:
        vLLM answers 400 "already loaded" for a name it has, which is success here."""
        body = {"lora_name": version, "lora_path": f"{self.server_adapters_dir.rstrip('/')}/{version}"}
        try:
            r = self._http.post(self.url.removesuffix("/v1") + "/v1/load_lora_adapter", json=body)
        except httpx.HTTPError as e:
            raise EngineUnavailable(f"the model server at {self.url} cannot be reached ({e})") from e
        self._check_busy(r)
        if r.status_code >= 400 and "already" not in _detail(r).lower():
            raise AdapterRefused(f"the server refused to load {version}: {r.status_code} {_detail(r)}")

    def unload_adapter(self, version: str) -> None:
        """Free a version the server holds (runtime LoRA API); a name it does not hold is not an error."""
        try:
            self._http.post(self.url.removesuffix("/v1") + "/v1/unload_lora_adapter", json={"lora_name": version})
        except httpx.HTTPError as e:
            raise EngineUnavailable(f"the model server at {self.url} cannot be reached ({e})") from e

    # -- one answer --------------------------------------------------------

    def _candidates(self, version: str | None) -> list[str | None]:
        """The versions to try, in order: the one in service unless it was refused lately, then the last
        that served, then the base model."""
        out: list[str | None] = []
        with self._lock:
            bad = self._bad.get(version) if version else None
            if bad and time.monotonic() - bad[0] < self.retry_bad_s:
                self.pointer_error = f"pointer names {version!r}, which cannot serve: {bad[1]}"
            else:
                out.append(version)
            for v in (self._good, None):
                if v not in out:
                    out.append(v)
        return out

    def _generate(self, version: str | None, messages: list[dict], max_new_tokens: int | None,
                  on_token: Callable[[str], None] | None) -> Generation:
        for v in self._candidates(version):
            try:
                result = self._complete(v, messages, max_new_tokens or self.max_new_tokens, on_token)
            except AdapterRefused as e:
                with self._lock:
                    self._bad[v] = (time.monotonic(), str(e))
                    if self._good == v:
                        self._good = None
                    self.pointer_error = f"pointer names {version!r}, which cannot serve: {e}" if v == version else self.pointer_error
                log.warning("%s; answering with %s", e, "the base model" if v is None else "an earlier version")
                continue
            with self._lock:
                self._good = v
                if v == version:
                    self.pointer_error = None
                    self._bad.pop(v, None)
            return result
        raise EngineUnavailable("no model on the server could answer")  # the base model itself was refused

    def _complete(self, version: str | None, messages: list[dict], max_new_tokens: int,
                  on_token: Callable[[str], None] | None, loaded: bool = False) -> Generation:
        body = {"model": version or self.base_name(), "messages": messages, "max_tokens": max_new_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "stream": on_token is not None}
        if on_token is not None:
            body["stream_options"] = {"include_usage": True}
        deadline = time.monotonic() + self.total_timeout_s
        try:
            with self._http.stream("POST", self.url + "/chat/completions", json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    self._check_busy(r)
                    if version is not None and r.status_code == 400 and (version in _detail(r) or "lora" in _detail(r).lower()):
                        # vLLM 0.32: "LoRA adapter 'v0004' was found but could not be loaded" (a corrupt folder)
                        raise AdapterRefused(f"{version}: the server answered 400: {_detail(r)}")
                    if r.status_code == 400:  # the request itself (a prompt past the context): the caller's error
                        raise ValueError(f"the model server refused the request: {_detail(r)}")
                    if version is not None and r.status_code in (404, 500):
                        if r.status_code == 404 and self.server_adapters_dir and not loaded:
                            self.load_adapter(version)  # runtime route: load it now, then ask again
                            return self._complete(version, messages, max_new_tokens, on_token, loaded=True)
                        raise AdapterRefused(f"{version}: the server answered {r.status_code}: {_detail(r)}")
                    raise EngineUnavailable(f"the model server answered {r.status_code}: {_detail(r)}")
                if on_token is None:
                    data = json.loads(r.read())
                    usage = data.get("usage") or {}
                    text = (data["choices"][0]["message"].get("content") or "")
                    return Generation(text, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), version)
                pieces, usage = [], {}
                for event in parse_sse(r.iter_lines()):
                    if time.monotonic() > deadline:
                        raise EngineUnavailable(f"the answer took over {self.total_timeout_s:g} s")
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            pieces.append(piece)
                            on_token(piece)
        except httpx.TimeoutException as e:
            raise EngineUnavailable(f"the model server at {self.url} stopped answering ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise EngineUnavailable(f"the model server at {self.url} cannot be reached ({e})") from e
        return Generation("".join(pieces), usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), version)
