"""Several `serve` replicas on one database: the index generation, the Discord lease, the leases themselves.

Real SQLite files, real processes where the point is another process
(`python -m bot serve` refusing to start); no Redis needed (tests/scale/ has those).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot import cli, config, store, wiring
from bot.knowledge import retrieval
from bot.learning import leases
from bot.ops import serve

ROOT = Path(__file__).resolve().parent.parent
NEW_DOC = "# 量子咖啡机\n\n量子咖啡机是团队在二〇二六年采购的设备，每天早上九点自动清洗。\n"


def test_a_reindex_in_one_replica_is_served_by_the_others_on_their_next_question(env):
    settings = config.Settings.load()
    db_a = wiring.connect_db(settings)
    a = wiring.build_searcher(settings, db_a)  # indexes the fresh database first
    b = retrieval.Searcher(store.connect(settings.db))  # another replica: its own connection, its own index
    question = "量子咖啡机什么时候清洗？"
    assert all(h.doc != "coffee.md" for h in b.search(question))
    loaded = b.rows
    b.search(question)
    assert b.rows is loaded  # nothing re-indexed: no reload, the same index object

    (env.kb_dir / "coffee.md").write_text(NEW_DOC, encoding="utf-8")
    before = store.index_generation(db_a)
    text = wiring.reindexer(settings, db_a, a)()  # `/kb reindex` in replica A
    assert "1 indexed" in text and store.index_generation(db_a) == before + 1
    assert b.search(question)[0].doc == "coffee.md" and b.generation == before + 1  # replica B, next question
    assert b.search_parts([(question, 1.0)])[0].doc == "coffee.md"

    wiring.reindexer(settings, db_a, a)()  # nothing changed: no new generation, no reload elsewhere
    assert store.index_generation(db_a) == before + 1

    (env.kb_dir / "coffee.md").unlink()
    assert cli.main(["index", "--json"]) == 0  # the release phase's `index` counts as a re-index too
    assert store.index_generation(db_a) == before + 2
    assert all(h.doc != "coffee.md" for h in b.search(question))


def test_generation_counts_up_from_nothing(db):
    assert store.index_generation(db) == 0
    assert [store.bump_index_generation(db) for _ in range(3)] == [1, 2, 3]
    assert store.index_generation(store.connect(db._path)) == 3


def test_a_lease_is_held_by_one_owner_renewed_and_free_once_expired_or_released(db):
    assert store.acquire_lease(db, "discord", "host-a:1:aa", ttl_s=0.4)
    assert not store.acquire_lease(db, "discord", "host-b:2:bb", ttl_s=5)
    assert store.acquire_lease(db, "discord", "host-a:1:aa", ttl_s=0.4)  # its own: renewed
    assert not store.renew_lease(db, "discord", "host-b:2:bb", ttl_s=5)
    time.sleep(0.5)
    assert store.lease(db, "discord")["live"] is False
    assert store.acquire_lease(db, "discord", "host-b:2:bb", ttl_s=5)  # expired: anyone may take it
    assert not store.renew_lease(db, "discord", "host-a:1:aa", ttl_s=5)  # the old holder learns it lost it
    store.release_lease(db, "discord", "host-a:1:aa")  # not theirs: no effect
    assert store.lease(db, "discord")["owner"] == "host-b:2:bb"
    store.release_lease(db, "discord", "host-b:2:bb")
    assert store.lease(db, "discord") is None


def test_the_heartbeat_keeps_a_lease_past_its_time_to_live_until_released(db):
    held = leases.Lease(db, "job:7", ttl_s=0.3)
    assert held.acquire()
    time.sleep(1.0)  # more than three times the time to live: only the renewals keep it
    assert leases.live(db, "job:7") and not held.lost.is_set()
    assert not leases.Lease(db, "job:7", ttl_s=0.3).acquire()
    held.release()
    assert not leases.live(db, "job:7") and leases.describe(db, "job:7") == "nobody"
    with pytest.raises(ValueError, match="above 0"):
        leases.Lease(db, "x", ttl_s=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_second_serve_with_discord_refuses_to_start_while_one_holds_the_lease(env, kb_db, monkeypatch):
    monkeypatch.setenv("BOT_DB", str(Path(kb_db._path)))
    monkeypatch.setenv("DISCORD_TOKEN", "discord-token")
    # The child takes seconds to start: only renewals keep the lease held that long. Not shorter: a
    # heartbeat every 0.1 s (a third of 0.3 s) missed its turn under a loaded CI machine.
    monkeypatch.setenv("BOT_LEASE_TTL", "1")
    settings = config.Settings.load()
    first = serve._discord_lease(settings, kb_db)  # replica 1 runs Discord (its heartbeat renews the lease)
    try:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_",))}
        child_env.update(PORT=str(_free_port()), BOT_LOG_FORMAT="text")
        t0 = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "bot", "serve"], env=child_env, cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert time.monotonic() - t0 > 1.0  # past its time to live: the heartbeat kept it held
        assert second.returncode == 1, second.stderr[-2000:]
        assert "Discord is already served by" in second.stderr and first.owner in second.stderr
        assert "exactly one `serve` replica" in second.stderr and "Traceback" not in second.stderr
        with pytest.raises(config.SettingError, match="unset DISCORD_TOKEN"):
            serve._discord_lease(settings, store.connect(kb_db._path))  # two holders in one process, too
    finally:
        first.release()
    again = serve._discord_lease(settings, kb_db)  # released at stop: the next replica may take it at once
    assert again is not None and store.lease(kb_db, "discord")["owner"] == again.owner
    again.release()
    assert serve._discord_lease(settings.replace(discord_token=""), kb_db) is None  # no Discord: no lease
