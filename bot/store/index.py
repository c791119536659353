"""The knowledge base as indexed: documents, passages, where they occur, embeddings, the lexicon,
the re-ranker, the `meta` key-value rows (the index generation among them), and the documents added
from chat (`uploads`).
"""
from __future__ import annotations

import time
from typing import Iterable

from bot.store.engine import _lock, transaction


def document(db, doc: str) -> dict | None:
    rows = list(db.query("select * from documents where doc = ?", [doc]))
    return rows[0] if rows else None


def documents(db) -> list[dict]:
    return list(db.query("select * from documents order by doc"))


def remove_document(db, doc: str) -> None:
    """Forget a document; passages no other document shares go with it."""
    with transaction(db):
        _lock(db, "index")
        db.execute("delete from occurrences where doc = ?", [doc])
        db.execute("delete from documents where doc = ?", [doc])
        _drop_orphans(db)


def _drop_orphans(db) -> None:
    orphan = "select id from passages where id not in (select passage_id from occurrences)"
    db.execute(f"delete from embeddings where passage_id in ({orphan})")
    db.execute(f"delete from passages where id in ({orphan})")


def replace_document(db, record: dict, chunks: list[tuple[str, str, str, str]]) -> list[int]:
    """Store a document's chunks (heading, text, hash, tokens[, location]) in one transaction.

    Plain SQL here rather than sqlite-utils' insert helpers: those commit on
    their own, and a crash half-way must leave the previous version intact.
    Returns the ids of passages that were new to the database.
    """
    new: list[int] = []
    with transaction(db):
        # PostgreSQL: two re-indexes at once (two replicas' /kb reindex) would both miss a new passage
        # and both insert it, or drop as orphans the passages the other is linking; one at a time.
        _lock(db, "index")
        db.execute("delete from occurrences where doc = ?", [record["doc"]])
        db.execute(
            "insert or replace into documents (doc, source, sha256, size, mtime, indexed_at, chunks)"
            " values (:doc, :source, :sha256, :size, :mtime, :indexed_at, :chunks)",
            {**record, "chunks": len(chunks)},
        )
        for ord_, (heading, text, digest, tokens, *where) in enumerate(chunks):
            row = db.execute("select id from passages where hash = ?", [digest]).fetchone()
            if row:
                pid = row[0]
            else:
                pid = db.execute(
                    "insert into passages (hash, text, tokens) values (?, ?, ?)", [digest, text, tokens]
                ).lastrowid
                new.append(pid)
            db.execute(
                "insert or ignore into occurrences (doc, ord, heading, passage_id, location) values (?, ?, ?, ?, ?)",
                [record["doc"], ord_, heading, pid, where[0] if where else ""],
            )
        _drop_orphans(db)
    return new


def replace_document_meta(db, record: dict) -> None:
    """A file touched but not changed: remember its new mtime so the next run skips it cheaply."""
    with transaction(db):
        db.execute("update documents set mtime = ?, size = ?, indexed_at = ? where doc = ?",
                   [record["mtime"], record["size"], record["indexed_at"], record["doc"]])


def passages(db) -> list[dict]:
    """Every passage with the first place it occurs (document order), for building indexes."""
    sql = """
    select p.id, p.text, p.tokens, o.doc, o.heading, o.ord, o.location
    from passages p
    join occurrences o on (o.doc, o.ord) = (
        select doc, ord from occurrences where passage_id = p.id order by doc, ord limit 1)
    order by p.id
    """
    return list(db.query(sql))


def passage_count(db) -> int:
    return db.execute("select count(*) from passages").fetchone()[0]


def embeddings(db, model: str) -> dict[int, bytes]:
    return {r[0]: r[1] for r in db.execute("select passage_id, vector from embeddings where model = ?", [model])}


def save_embeddings(db, model: str, vectors: dict[int, bytes]) -> None:
    with transaction(db):
        db.conn.executemany(
            "insert or replace into embeddings (passage_id, model, vector) values (?, ?, ?)",
            [(pid, model, v) for pid, v in vectors.items()],
        )


def lexicon(db) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for term, zh, weight in db.execute("select term, zh, weight from lexicon order by term, weight desc"):
        out.setdefault(term, []).append((zh, weight))
    return out


def save_lexicon(db, rows: Iterable[tuple[str, str, float]]) -> None:
    with transaction(db):
        _lock(db, "index")  # PostgreSQL: a concurrent delete-then-insert would mix two lexicons
        db.execute("delete from lexicon")
        db.conn.executemany("insert or replace into lexicon (term, zh, weight) values (?, ?, ?)", list(rows))


def ranker(db, name: str = "lexical") -> dict | None:
    """The stored re-ranker: {"model": JSON text, "signature": ..., "trained_at": ...}, or None."""
    rows = list(db.query("select model, signature, trained_at from rankers where name = ?", [name]))
    return rows[0] if rows else None


def save_ranker(db, model: str | None, signature: str, name: str = "lexical") -> None:
    """Store (or, with model None, remove) the re-ranker."""
    with transaction(db):
        _lock(db, "index")  # PostgreSQL: two saves at once would both delete, then both insert (a key conflict)
        db.execute("delete from rankers where name = ?", [name])
        if model is not None:
            db.execute("insert into rankers (name, model, signature, trained_at) values (?, ?, ?, ?)",
                       [name, model, signature, time.time()])


def get_meta(db, key: str) -> str | None:
    row = db.execute("select value from meta where key = ?", [key]).fetchone()
    return row[0] if row else None


def set_meta(db, key: str, value: str) -> None:
    with transaction(db):
        db.execute("insert or replace into meta (key, value) values (?, ?)", [key, value])


# --- the index generation: replicas reload when another one re-indexed ----------

INDEX_GENERATION = "index_generation"


def bump_index_generation(db) -> int:
    """Count one more re-index (the new generation): every replica's searcher reloads when it sees it."""
    with transaction(db):
        return int(db.execute(
            "insert into meta (key, value) values (?, '1') on conflict (key) do update"
            " set value = cast(cast(meta.value as integer) + 1 as text) returning value",
            [INDEX_GENERATION]).fetchone()[0])


def index_generation(db) -> int:
    """The index generation as stored (0: never re-indexed through `bump_index_generation`)."""
    row = db.execute("select value from meta where key = ?", [INDEX_GENERATION]).fetchone()
    return int(row[0]) if row else 0


# --- documents added from chat (`/kb add`) -------------------------------------------


def record_upload(db, doc: str, name: str, added_by: str, size: int, sha256: str) -> None:
    """Who added `doc` from chat, and when (now); a replacement is added again, by whoever replaced it."""
    with transaction(db):
        db.execute("insert into uploads (doc, name, added_at, added_by, size, sha256) values (?, ?, ?, ?, ?, ?)"
                   " on conflict (doc) do update set name = excluded.name, added_at = excluded.added_at,"
                   " added_by = excluded.added_by, size = excluded.size, sha256 = excluded.sha256",
                   [doc, name, time.time(), added_by, size, sha256])


def uploads(db) -> dict[str, dict]:
    """The documents added from chat, by document name."""
    return {r["doc"]: r for r in db.query("select * from uploads")}


def forget_upload(db, doc: str) -> None:
    with transaction(db):
        db.execute("delete from uploads where doc = ?", [doc])


def document_passages(db, doc: str, limit: int = 3) -> list[dict]:
    """A document's first passages in order (heading, text): what a sample search is made from."""
    return list(db.query("select o.heading, p.text from occurrences o join passages p on p.id = o.passage_id"
                         " where o.doc = ? order by o.ord limit ?", [doc, limit]))
