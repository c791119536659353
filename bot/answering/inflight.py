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

An owner is `host:pid:start:random`, and a `serve` process holds the
heartbeat lease `inflight:<owner>` in the database (bot.ops.serve renews it
through bot.learning.leases) from before its first placeholder until it
stops. A record is recovered when its owner's lease is gone: released by a
stopping process, or expired because the process died, froze, or lost the
database, on whatever host it ran. A pid and a hostname cannot tell that
from another host, or from another container that shares the hostname and
reuses the pid, so they are not consulted. A live replica renews its lease
and its placeholders are never touched; a killed one's are recovered at the
next `recover` after its lease expires (BOT_LEASE_TTL): `serve` runs it at
start and then every BOT_LEASE_TTL seconds.
"""
from __future__ import annotations

import logging
import os
import socket
import uuid

from bot import store
from bot.answering.pipeline import retrieval_only_text
from bot.answering.searcher import Searcher
from bot.knowledge.textproc import is_mostly_english
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
    """host:pid:start for the operator to read; the random tail keeps two containers that share a hostname,
    a pid and a start tick apart."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}:{uuid.uuid4().hex[:8]}"


OWNER = owner_id()
LEASE_PREFIX = "inflight:"


def lease_name(owner: str | None = None) -> str:
    """The lease a process holds while its placeholders are its own to finish."""
    return LEASE_PREFIX + (owner or OWNER)


def dead(db, owner: str) -> bool:
    """True when `owner`'s placeholders are for someone else to finish: its lease is released or expired.
    This process is never dead to itself."""
    if owner == OWNER:
        return False
    row = store.lease(db, lease_name(owner))
    return not (row and row["live"])


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


def apology(question: str, searcher: Searcher | None, k: int = 5) -> str:
    hits = searcher.search(question, k) if searcher is not None and question.strip() else []
    english = is_mostly_english(question)
    reason = "the assistant restarted" if english else "助手重新启动"
    return (RESTARTED_EN if english else RESTARTED_ZH) + "\n" + retrieval_only_text(question, hits, reason)


def recover(db, searcher, k: int = 5) -> list[int]:
    """Give every placeholder whose owner holds no live lease (a dead process, on any host) its apology and
    retrieval-only answer, through the outbox; returns the outbox ids. Safe to run from several processes at
    once (each record goes to the outbox once)."""
    out = []
    verdicts: dict[str, bool] = {}  # one lease read per owner, however many placeholders it left
    for row in store.inflight(db):
        owner = row["owner"]
        if owner not in verdicts:
            verdicts[owner] = dead(db, owner)
        if not verdicts[owner]:
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
