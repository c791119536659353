"""What the bot checks before it does any work: input limits, rate limits and the bound on waiting questions.

Pure Python with no SDK and no I/O of its own (the settings aside), so every
transport (and the CLI) refuses alike through `bot.commands`.

Input: a question or correction is refused, with a message saying why,
when it is empty (once whitespace and invisible format characters are
removed: a question of zero-width spaces alone says nothing), over its size limit, or holds characters no person
typed: control characters (other than newline, tab and carriage return),
lone UTF-16 surrogates (they cannot even be written to SQLite as UTF-8),
U+FFFD (bytes that were not UTF-8 somewhere on the way, so the text is no
longer what was written) and Unicode noncharacters. A correction is also
refused when it holds a control token of the model's chat format
(`bot/answering/control_tokens.py`), since it becomes a training target. Ids carried
in button values and form metadata are checked against the shape the bot
gives them.

Admission: a person may ask `BOT_RATE_USER` questions per window, a
channel `BOT_RATE_CHANNEL`, and at most `BOT_QUEUE_MAX` admitted questions
may be waiting for (or being answered by) the model at once. Past any of
them the person is told "busy, try again in N s" at once, never left to
time out. Each admitted question holds a slot until the transport releases
it; a slot not released within `hold_s` (a transport that died half-way) is
dropped, so a bug cannot wedge the bot into refusing everyone.

The per-user and per-channel windows are this process's memory, unless
BOT_REDIS_URL is set: then they live in Redis (`SharedWindows`, the
`limits` package's moving window), so N `serve` replicas allow a person the
limit once, not N times. That is the one I/O here, and it fails open to the
process's own windows while Redis is unreachable. The queue bound stays per
process: it protects this replica's model worker.
"""
from __future__ import annotations

import logging
import math
import re
import threading
import time
import unicodedata
from collections import deque
from dataclasses import dataclass
from typing import Callable

from bot import config

log = logging.getLogger(__name__)
MAX_QUESTION_CHARS = 4000
MAX_CORRECTION_CHARS = 8000
ANSWER_ID = re.compile(r"[0-9a-f]{6,32}")  # answering makes 12 hex digits; Discord's button template allows 6-32
_ALLOWED_CONTROLS = {"\n", "\t", "\r"}  # line ends and tabs are part of pasted text, unlike NUL or ESC


# -- input ----------------------------------------------------------------------

def _bad_character(text: str) -> str | None:
    """Why `text` cannot be taken as typed, or None: the first character that is not text."""
    for i, ch in enumerate(text):
        cp = ord(ch)
        if 0xD800 <= cp <= 0xDFFF:
            return "it contains invalid Unicode (a lone surrogate)"
        if cp == 0xFFFD:
            return "it contains U+FFFD (�), a sign that part of it was garbled on the way"
        if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
            return f"it contains invalid Unicode (the noncharacter U+{cp:04X})"
        if ch not in _ALLOWED_CONTROLS and unicodedata.category(ch) == "Cc":
            return f"it contains a control character (U+{cp:04X}) at position {i + 1}"
    return None


def _visible(text: str) -> str:
    """`text` without format characters (Unicode category Cf: zero-width spaces and joiners, the word
    joiner, BOM, bidi marks) and surrounding whitespace: what a reader sees of it. Cf characters are
    not whitespace to `str.strip`, so a message of them alone would otherwise pass as a question."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip()


def check_text(text, *, what: str, limit: int, empty: str) -> str | None:
    """A message saying why `text` cannot be taken as a `what` ("question", "correction"), or None."""
    body = text.strip() if isinstance(text, str) else ""
    if not body or not _visible(body):
        return empty
    if len(body) > limit:
        return f"That {what} is {len(body)} characters; the limit is {limit}. Nothing was recorded."
    why = _bad_character(body)
    if why:
        return f"Sorry, I can't take that {what}: {why}. Please retype it; nothing was recorded."
    return None


def check_question(text) -> str | None:
    return check_text(text, what="question", limit=MAX_QUESTION_CHARS,
                      empty="Please add a question, e.g. `/ask 什么是边缘计算？`")


def check_correction(text, model: str | None = None) -> str | None:
    """Also refuses chat-template control tokens (`<|im_end|>`, `<tool_call>`) of the serving preset
    `model` (None: of every preset): a correction becomes a training target, and a tokenizer would read
    them as real turn markers."""
    from bot.answering import control_tokens

    return (check_text(text, what="correction", limit=MAX_CORRECTION_CHARS,
                       empty="The correction is empty; nothing was recorded.")
            or control_tokens.check(text, "correction", model))


def check_answer_id(value) -> str | None:
    """A message for an answer id that the bot cannot have made (a forged or garbled button), or None."""
    if isinstance(value, str) and ANSWER_ID.fullmatch(value):
        return None
    return "That button or form does not name an answer of mine (malformed answer id); nothing was recorded."


# -- rates ------------------------------------------------------------------------

@dataclass(frozen=True)
class Rate:
    """At most `count` questions in any `window_s` seconds."""

    count: int
    window_s: float

    def __str__(self) -> str:
        return f"{self.count} question{'s' if self.count != 1 else ''} every {self.window_s:g} s"


_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*s?\s*")


def parse_rate(text: str) -> Rate | None:
    """`COUNT/SECONDS` ("10/60": ten questions in any 60 s) -> Rate; `off` (or empty) -> None (no limit).

    Raises ValueError with a message naming the format for anything else,
    a zero count or a zero window included: a limit of nothing is `off`'s
    opposite and almost certainly a typo."""
    raw = (text or "").strip().lower()
    if raw in ("", "off", "none"):
        return None
    m = _RATE.fullmatch(raw)
    if not m or int(m[1]) < 1 or float(m[2]) <= 0:
        raise ValueError(f"{text!r} is not a rate: use COUNT/SECONDS with both above 0, e.g. 10/60, or off")
    return Rate(int(m[1]), float(m[2]))


@dataclass(frozen=True)
class Busy:
    """Why a question was not admitted, and when to try again (whole seconds, at least 1)."""

    reason: str  # "user" | "channel" | "queue"
    seconds: int
    detail: str

    @property
    def text(self) -> str:
        # "busy, try again in N s" is the phrase people (and the load test) look for: keep it exact.
        return f"Sorry, I'm busy, try again in {self.seconds} s ({self.detail}). Nothing was recorded."


def _ceil_s(seconds: float) -> int:
    return max(1, math.ceil(seconds - 1e-9))


class SharedWindows:
    """The rate windows in Redis, shared by every process that points at it: a moving window per
    (kind, platform, id) key, through the `limits` package (`pip install '.[redis]'`).

    A window is whole seconds there (`limits` counts in whole multiples of a second): 10/0.5 is 10/1."""

    def __init__(self, url: str, namespace: str = "bot-admission"):
        from limits import storage, strategies

        self._limiter = strategies.MovingWindowRateLimiter(storage.storage_from_string(url))
        self.namespace = namespace

    def _item(self, rate: Rate):
        from limits import RateLimitItemPerSecond

        return RateLimitItemPerSecond(rate.count, max(1, math.ceil(rate.window_s)), namespace=self.namespace)

    def wait(self, key: tuple, rate: Rate) -> float:
        """Seconds until one more hit fits in `key`'s window (0: it fits now)."""
        item = self._item(rate)
        if self._limiter.test(item, *key):
            return 0.0
        reset, _ = self._limiter.get_window_stats(item, *key)  # when the oldest hit leaves the window
        return max(reset - time.time(), 0.001)

    def hit(self, key: tuple, rate: Rate) -> bool:
        """Count one question in `key`'s window, atomically in Redis; False when another replica took the last place."""
        return self._limiter.hit(self._item(rate), *key)


class Admission:
    """Per-user and per-channel sliding windows, and the slots of admitted questions; thread-safe.

    `depth()`, when given, reports questions in the answering pipeline that
    did not come through here (the serving process has none, but a shared
    answerer might): the bound applies to the larger of the two counts."""

    def __init__(self, user: Rate | None = None, channel: Rate | None = None, queue_max: int | None = 32, *,
                 depth: Callable[[], int] | None = None, clock: Callable[[], float] = time.monotonic,
                 hold_s: float = 900.0, answer_s: float = 5.0, shared: SharedWindows | None = None):
        if queue_max is not None and queue_max < 1:
            raise ValueError("queue_max must be at least 1 (or None for no bound)")
        self.user, self.channel, self.queue_max = user, channel, queue_max
        self._depth, self._clock, self.hold_s = depth, clock, hold_s
        self.answer_s = answer_s  # running mean of how long an admitted question holds its slot
        self._lock = threading.Lock()
        self._hits: dict[tuple, deque] = {}
        self._slots: list[tuple[tuple, float]] = []  # (who, admitted at), oldest first
        self._admits = 0
        self.shared = shared  # the windows in Redis (BOT_REDIS_URL), or None: this process's own

    @classmethod
    def from_settings(cls, settings: config.Settings, depth: Callable[[], int] | None = None) -> "Admission":
        """Built from BOT_RATE_USER, BOT_RATE_CHANNEL and BOT_QUEUE_MAX; a bad value is a SettingError naming
        it, which the entry point reports as it stops."""
        rates = {}
        for name in ("BOT_RATE_USER", "BOT_RATE_CHANNEL"):
            try:
                rates[name] = parse_rate(settings.value(name))
            except ValueError as e:
                raise config.SettingError(f"setting {name}: {e}") from None
        queue_max = settings.queue_max
        if queue_max < 1:
            raise config.SettingError(f"setting BOT_QUEUE_MAX={queue_max} must be at least 1")
        hold = settings.generation_timeout + 600  # no answer holds a slot longer than its timeout
        shared = None
        if settings.redis_url and (rates["BOT_RATE_USER"] or rates["BOT_RATE_CHANNEL"]):
            try:
                shared = SharedWindows(settings.redis_url)
            except ImportError as e:
                raise config.SettingError(f"setting BOT_REDIS_URL: shared rate limits need the `limits` and `redis` "
                                          f"packages (pip install '.[redis]'): {e}") from None
        return cls(rates["BOT_RATE_USER"], rates["BOT_RATE_CHANNEL"], queue_max, depth=depth, hold_s=hold,
                   shared=shared)

    # -- the counts ------------------------------------------------------------

    def _expire(self, now: float) -> None:
        self._slots = [s for s in self._slots if now - s[1] < self.hold_s]

    def depth(self) -> int:
        """Admitted questions not yet released (waiting for or being answered by the model)."""
        with self._lock:
            self._expire(self._clock())
            return len(self._slots)

    def _window_wait(self, key: tuple, rate: Rate | None, now: float) -> float:
        if rate is None:
            return 0.0
        if self.shared is not None:
            return self.shared.wait(key, rate)
        hits = self._hits.get(key)
        if not hits:
            return 0.0
        while hits and now - hits[0] >= rate.window_s:
            hits.popleft()
        if len(hits) < rate.count:
            return 0.0
        # The oldest hit that must leave the window before one more fits.
        return hits[len(hits) - rate.count] + rate.window_s - now

    def _sweep(self, now: float) -> None:
        """Forget windows with nothing left in them, so the table never grows with every user ever seen."""
        longest = max((r.window_s for r in (self.user, self.channel) if r), default=0.0)
        for key in [k for k, hits in self._hits.items() if not hits or now - hits[-1] >= longest]:
            del self._hits[key]

    # -- admitting and releasing -------------------------------------------------

    def admit(self, platform: str, user: str, channel: str = "") -> Busy | None:
        """None, and a slot held for this question; or why not and for how long. Refusals cost nothing."""
        who, where = ("user", platform, user), ("channel", platform, channel)
        with self._lock:
            now = self._clock()
            self._expire(now)
            try:
                return self._admit(who, where, channel, now)
            except Exception as e:  # Redis unreachable: limit with this process's windows, and say so
                if self.shared is None:
                    raise
                log.warning("shared rate limits unavailable (%s: %s); this process limits on its own",
                            type(e).__name__, e)
                shared, self.shared = self.shared, None
                try:
                    return self._admit(who, where, channel, now)
                finally:
                    self.shared = shared

    def _admit(self, who: tuple, where: tuple, channel: str, now: float) -> Busy | None:
        """`admit` under the lock, with the windows where they live (self.shared or this process)."""
        refusals = []
        wait = self._window_wait(who, self.user, now)
        if wait > 0:
            refusals.append(Busy("user", _ceil_s(wait), f"you can ask {self.user}"))
        wait = self._window_wait(where, self.channel, now) if channel else 0.0
        if wait > 0:
            refusals.append(Busy("channel", _ceil_s(wait), f"this channel can ask {self.channel}"))
        waiting = max(len(self._slots), self._depth() if self._depth else 0)
        if self.queue_max is not None and waiting >= self.queue_max:
            # A slot frees when the oldest question is answered: about one answer's time, less its age.
            oldest = now - self._slots[0][1] if self._slots else 0.0
            refusals.append(Busy("queue", _ceil_s(max(1.0, self.answer_s - oldest)),
                                 f"{waiting} questions are already waiting for the model"))
        if refusals:
            return max(refusals, key=lambda b: b.seconds)
        for key, rate in ((who, self.user), (where, self.channel if channel else None)):
            if rate is not None and self.shared is not None:
                # Checked above, but another replica may have taken the last place since: refuse then
                # (the user's hit, when only the channel's failed, stays counted: a rare race, on the safe side).
                if not self.shared.hit(key, rate):
                    return Busy(key[0], _ceil_s(self.shared.wait(key, rate)), f"you can ask {rate}"
                                if key[0] == "user" else f"this channel can ask {rate}")
            elif rate is not None:
                self._hits.setdefault(key, deque()).append(now)
        self._slots.append((who[1:], now))
        self._admits += 1
        if self._admits % 1000 == 0:
            self._sweep(now)
        return None

    def release(self, platform: str, user: str) -> None:
        """Free the oldest slot this person holds (no-op when they hold none)."""
        with self._lock:
            now = self._clock()
            for i, (who, at) in enumerate(self._slots):
                if who == (platform, user):
                    del self._slots[i]
                    self.answer_s = 0.8 * self.answer_s + 0.2 * (now - at)
                    return
