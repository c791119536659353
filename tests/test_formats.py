"""Documents beyond Markdown: conversion, locations in citations, bad files, and the ingest seam
that chat uploads use (`SUPPORTED_SUFFIXES`, `index_paths`, `remove_document`)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bot import store
from bot.knowledge import ingest


def test_remove_document_by_name_and_by_file_name(db, tmp_path):
    kb = tmp_path / "kb"
    (kb / "a").mkdir(parents=True)
    (kb / "b").mkdir()
    (kb / "a" / "notes.md").write_text("# Alpha\n\nThe alpha warehouse opens at nine.\n", encoding="utf-8")
    (kb / "b" / "notes.md").write_text("# Beta\n\nThe beta warehouse closes at five.\n", encoding="utf-8")
    (kb / "plan.md").write_text("# Plan\n\nFirst paragraph.\n\nSecond paragraph.\n", encoding="utf-8")
    ingest.index_paths(db, [kb], kb, limit=20, progress=False)
    generation = store.get_meta(db, store.INDEX_GENERATION)
    assert ingest.remove_document(db, "plan.md") == 2
    assert store.document(db, "plan.md") is None
    assert store.get_meta(db, store.INDEX_GENERATION) != generation  # serving replicas reload
    with pytest.raises(LookupError, match="a/notes.md, b/notes.md"):
        ingest.remove_document(db, "notes.md")
    assert ingest.remove_document(db, "a/notes.md") == 1
    assert ingest.remove_document(db, "a/notes.md") == 0
    assert [p["doc"] for p in store.passages(db)] == ["b/notes.md"]
    assert (kb / "plan.md").exists()  # the original stays where it is
    assert {".pdf", ".docx", ".pptx", ".xlsx", ".html", ".htm", ".md", ".txt", ".zip"} <= ingest.SUPPORTED_SUFFIXES
