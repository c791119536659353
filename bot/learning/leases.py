"""Leases in the database, renewed by a heartbeat thread: which process holds a job or the Discord client.

A pid and a hostname say whether a process lives only on the host that
asks, so a worker on another host (or in another container) would take a
live job for a dead one. A lease says it from the shared database instead:
the holder renews `expires_at` every third of its time to live, and a lease
past its expiry belongs to a process that stopped (killed, frozen, cut off
from the database), wherever it ran. bot/store/jobs.py holds the SQL; this module
holds the thread. It lives in learning because the training jobs are its
first users; bot.ops (the Discord lease of `serve`) sits above and imports it.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from bot import store

log = logging.getLogger(__name__)


def owner_id() -> str:
    """This process, as a lease owner: host and pid for the operator to read, and a random part so that
    a pid reused after a restart (or the same pid in two containers) is never taken for the old holder."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """Lease `name` held by this process: `acquire()`, then renewed by a daemon thread until `release()`.

    Also a context manager around an acquired lease (`with lease:` releases at the end). `lost` is set when
    a renewal finds the lease gone to another owner (this process stalled past its expiry): the holder's
    work is then someone else's to recover, which the holder can check between steps."""

    def __init__(self, db, name: str, ttl_s: float, owner: str | None = None):
        if ttl_s <= 0:
            raise ValueError(f"a lease's time to live must be above 0 s, not {ttl_s}")
        self.db, self.name, self.ttl_s = db, name, float(ttl_s)
        self.owner = owner or owner_id()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lease and start renewing it; False (nothing started) while another owner holds it."""
        if not store.acquire_lease(self.db, self.name, self.owner, self.ttl_s):
            return False
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.name}", daemon=True)
        self._thread.start()
        return True

    def _beat(self) -> None:
        # A third of the time to live: two renewals may fail (a locked database, a slow disk) before it expires.
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not store.renew_lease(self.db, self.name, self.owner, self.ttl_s):
                    log.error("lease %s was taken by another process; %s stops renewing it", self.name, self.owner)
                    self.lost.set()
                    return
            except Exception:  # a failed renewal is retried at the next beat; the lease has time left
                log.exception("renewing lease %s failed", self.name)

    def release(self) -> None:
        """Stop renewing and give the lease up (others may take it at once)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        if not self.lost.is_set():
            store.release_lease(self.db, self.name, self.owner)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def live(db, name: str) -> bool:
    """Whether some process holds lease `name` now (acquired, not released, not expired)."""
    row = store.lease(db, name)
    return bool(row and row["live"])


def describe(db, name: str) -> str:
    """The holder of lease `name` for a message: "host:pid:xxxx (renewed until 12:00:03)", or "nobody"."""
    import time

    row = store.lease(db, name)
    if not row or not row["live"]:
        return "nobody"
    return f"{row['owner']} (renewed until {time.strftime('%H:%M:%S', time.localtime(row['expires_at']))})"
