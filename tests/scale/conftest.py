"""Engines for tests/scale/: a real redis-server per session (`make test-scale` installs it).

Under `make test-scale` (BOT_SCALE_TESTS=1) a missing engine FAILS the test:
CI must not pass by skipping what it was asked to prove. Run any other way
(`pytest tests/`), the tests skip with the reason.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ helpers (loop_harness) beside conftest

REQUIRED = os.environ.get("BOT_SCALE_TESTS") == "1"


def missing(what: str):
    """Fail under `make test-scale`, skip elsewhere."""
    if REQUIRED:
        pytest.fail(f"{what} (make test-scale installs it: see the Makefile's scale-deps)", pytrace=False)
    pytest.skip(what)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """redis://127.0.0.1:<free port>/0 of a redis-server started for this session, no persistence; stopped by its pid."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server is not installed")
    for module in ("redis", "limits"):
        try:
            __import__(module)
        except ImportError:
            missing(f"the Python package {module!r} is not installed (pip install '.[redis]')")
    port = _free_port()
    work = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"redis-server did not start on port {port}", pytrace=False)
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_clean(redis_url):
    """The session's Redis, emptied for this test (queues, locks, rate windows)."""
    import redis

    redis.Redis.from_url(redis_url).flushall()
    return redis_url
