"""Shared fixtures: real files and real SQLite databases under pytest's tmp dirs.

Nothing here touches the checkout's data/ folder: the `env` fixture points
BOT_DB and BOT_KNOWLEDGE_DIR at temporary paths and runs each test from a
temporary working directory (so no stray `.env` is read).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "knowledge" / "docs"
EVAL_DIR = ROOT / "knowledge" / "eval"


@pytest.fixture
def kb_dir(tmp_path) -> Path:
    """A private copy of the bundled knowledge base, safe to edit."""
    dest = tmp_path / "kb"
    shutil.copytree(DOCS, dest)
    return dest


@pytest.fixture
def db(tmp_path):
    """A fresh, migrated database file."""
    from bot import store

    return store.connect(tmp_path / "bot.db")


@pytest.fixture
def env(tmp_path, kb_dir, monkeypatch) -> SimpleNamespace:
    """Settings for CLI tests: a temporary database and knowledge dir, defaults for the rest."""
    db_path = tmp_path / "data" / "bot.db"
    monkeypatch.setenv("BOT_DB", str(db_path))
    monkeypatch.setenv("BOT_KNOWLEDGE_DIR", str(kb_dir))
    monkeypatch.setenv("BOT_EMBEDDER", "none")
    monkeypatch.setenv("BOT_MODEL", "none")  # retrieval-only answers: no model download or load
    monkeypatch.setenv("BOT_ADAPTERS_DIR", str(tmp_path / "adapters"))
    for name in ("BOT_SEARCH_K", "BOT_CHUNK_CHARS", "BOT_GENERATION_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return SimpleNamespace(db_path=db_path, kb_dir=kb_dir, tmp=tmp_path)


@pytest.fixture(scope="session")
def indexed_kb(tmp_path_factory) -> SimpleNamespace:
    """The bundled docs indexed once per test session (about 2 s); treat it as read-only."""
    from bot.knowledge import ingest
    from bot import store

    base = tmp_path_factory.mktemp("indexed")
    kb = base / "kb"
    shutil.copytree(DOCS, kb)
    db_path = base / "bot.db"
    database = store.connect(db_path)
    reports = ingest.index_paths(database, [kb], kb, progress=False)
    assert {r.status for r in reports} == {"indexed"}, reports
    yield SimpleNamespace(db=database, db_path=db_path, kb_dir=kb, reports=reports)
    # Every test that writes takes a copy (kb_db); a write here leaks into every later copy.
    written = {t: database.execute(f"select count(*) from {t}").fetchone()[0]
               for t in ("answers", "votes", "corrections")}
    assert not any(written.values()), f"a test wrote to the shared indexed database: {written}"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny model (bot/llm/tinymodel.py), built once into a cache that outlives test
    sessions (about 20 s the first time): `BOT_CACHE_DIR`, default `.cache/models`."""
    import os

    from bot import wiring

    cache = Path(os.environ.get("BOT_CACHE_DIR") or ROOT / ".cache" / "models")
    return wiring.build_tiny_model(cache, DOCS, log=lambda *a: None)


@pytest.fixture()
def kb_db(indexed_kb, tmp_path):
    """A private, writable copy of the session's indexed database (SQLite's backup: milliseconds)."""
    import sqlite3

    from bot import store

    path = tmp_path / "bot.db"
    copy = sqlite3.connect(path)
    indexed_kb.db.conn.backup(copy)
    copy.close()
    return store.connect(path)
