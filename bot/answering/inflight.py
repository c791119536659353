"""Answers in flight: every placeholder is on record until its answer lands, so a restart can finish it.

A transport records a question as it starts answering (`begin`, before the
"Thinking…" message is posted or the interaction deferred), names the
placeholder once it exists (`placed`), and removes the record when the final
answer replaced it (`end`). If the final update cannot be made, the answer goes
to the outbox instead (`hand_off`), which retries it. A process killed mid-answer
leaves its records behind; `serve` runs `recover` at start, which gives each
record of a dead owner an apology with the retrieval-only answer (retrieval
needs no model) through the outbox: the Slack sender updates the placeholder,
the Discord sender edits the deferred reply or, where that is no longer
possible, posts in the channel.

An owner is `host:pid:start`, the process start time telling a live process
from a later one that reuses its pid. Only owners on this host can be judged
dead (their pid is gone or started at another time); records of other hosts
are left alone, so replicas never finish each other's live answers. A
replica that dies for good on another host needs a lease or a heartbeat to
be recovered: not done yet.
"""
from __future__ import annotations

import logging
import os
import socket

from bot import store
from bot.messages import RESTARTED_EN, RESTARTED_ZH  # noqa: F401  (the apology's words live in the catalogue)

log = logging.getLogger(__name__)


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux /proc); "" where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            # The command name may hold spaces and parentheses: the fields after its last ')' are fixed.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_id(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


OWNER = owner_id()


def dead(owner: str, host: str | None = None) -> bool:
    """True when `owner` ran on this host and is no longer running; False for live or other hosts' owners."""
    try:
        name, pid, start = (owner or "").rsplit(":", 2)
        pid_n = int(pid)
    except ValueError:
        return False  # not an owner id this code wrote: not ours to judge
    if name != (host or socket.gethostname()):
        return False
    if pid_n == os.getpid():
        return start != _start_time(pid_n)
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's: a pid reused by another user's process
        return True
    return start != _start_time(pid_n)


def begin(db, caller, question: str, *, interaction: str | None = None) -> int:
    return store.add_inflight(db, caller.platform, caller.channel, caller.thread, caller.user, question, OWNER,
                              interaction=interaction)


def placed(db, inflight_id: int, message: str) -> None:
    """The placeholder now exists as `message` (a Slack ts): recovery updates it rather than posting anew."""
    store.set_inflight_message(db, inflight_id, message)


def end(db, inflight_id: int) -> None:
    store.clear_inflight(db, inflight_id)


def hand_off(db, inflight_id: int, text: str) -> int | None:
    """The final update failed (rate limit, a network error): the outbox makes it, retrying."""
    return store.hand_inflight_to_outbox(db, inflight_id, text)


def apology(question: str, searcher, k: int = 5) -> str:
    from bot.answering.pipeline import _notice, retrieval_only_text

    hits = searcher.search(question, k) if searcher is not None and question.strip() else []
    reason = _notice(question, "the assistant restarted", "助手重新启动")
    return _notice(question, RESTARTED_EN, RESTARTED_ZH) + "\n" + retrieval_only_text(question, hits, reason)


def recover(db, searcher, k: int = 5, host: str | None = None) -> list[int]:
    """Give every placeholder a dead process left on this host its apology and retrieval-only answer,
    through the outbox; returns the outbox ids. Safe to run from several processes at once."""
    out = []
    for row in store.inflight(db):
        if row["owner"] == OWNER or not dead(row["owner"], host):
            continue
        try:
            text = apology(row["question"] or "", searcher, k)
        except Exception:  # noqa: BLE001 (a broken index): the apology alone still replaces "Thinking…"
            log.exception("retrieval for recovered question %s failed", row["id"])
            text = RESTARTED_EN
        outbox_id = store.hand_inflight_to_outbox(db, row["id"], text)
        if outbox_id is not None:
            out.append(outbox_id)
    if out:
        log.info("recovered %d answers a stopped process left unfinished", len(out), extra={"answers": len(out)})
    return out
