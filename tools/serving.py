"""Waiting for a real `python -m bot serve` subprocess to be ready: shared by tools/replica_check.py and
tests/reliability/ack_crash.py (both start serve and drive it over loopback HTTP)."""
from __future__ import annotations

import asyncio
import subprocess
import time


async def wait_ready(session, port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll http://127.0.0.1:<port>/readyz with an aiohttp `session` until it answers 200; fail at once
    if `proc` exits first (its log says why), or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode} before it was ready")
        try:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("serve was not ready in time")
