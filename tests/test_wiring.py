"""The composition root (bot.wiring) and the seams it wires: the index reload, the outbox adapter."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bot import config, store, wiring

ROOT = Path(__file__).resolve().parent.parent


def test_reindex_serves_a_new_document_at_once_through_the_same_searcher(env, kb_dir):
    settings = config.Settings.load()
    db = wiring.connect_db(settings)
    searcher = wiring.build_searcher(settings, db)  # a fresh database: indexes the knowledge dir first
    assert not any(h.doc == "quokka.md" for h in searcher.search("quokkafish migration", 5))
    (kb_dir / "quokka.md").write_text("# Quokkafish migration\n\nThe quokkafish migrates every spring.\n",
                                      encoding="utf-8")
    reindex = wiring.reindexer(settings, db, searcher)
    assert reindex() == "Re-indexed: 1 indexed"
    assert searcher.search("quokkafish migration", 5)[0].doc == "quokka.md"  # no new Searcher needed
    assert reindex() == "Re-indexed: nothing changed."


def test_store_outbox_claims_leases_and_marks_rows(db):
    job = store.create_job(db, "train", "slack:U1", "slack", "C1", "1.1")
    first = store.post_outbox(db, job, "slack", "C1", "1.1", "one")
    second = store.post_outbox(db, job, "slack", "C1", "1.1", "two")
    outbox = wiring.StoreOutbox(db)
    assert [r["id"] for r in outbox.claim("slack", "me", 20, 60.0)] == [first, second]
    assert outbox.claim("slack", "other", 20, 60.0) == []  # leased
    outbox.sent([first])
    outbox.dropped(second, "gone")
    rows = {r["id"]: r for r in store.outbox(db, job)}
    assert rows[first]["sent_at"] and rows[second]["sent_at"] and rows[second]["dropped"] == "gone"


def test_the_outbox_poster_and_senders_import_no_store_and_no_model():
    code = ("import sys; import bot.chat.outbox, bot.chat.slack.send, bot.chat.discord.send; "
            "bad = {'bot.store', 'bot.learning', 'bot.llm', 'torch'} & set(sys.modules); assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
