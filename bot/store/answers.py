"""Answers as given: the `answers` rows (what was asked, what was seen, what answered), and the
reads of a conversation's earlier turns and of a person's recent answers.
"""
from __future__ import annotations

import json

from bot.store.engine import transaction
from bot.store.metrics import _count_answer


def record_answer(db, row: dict) -> None:
    row = {**row, "passages": json.dumps(row["passages"], ensure_ascii=False),
           "citations": json.dumps(row["citations"], ensure_ascii=False)}
    cols = ", ".join(row)
    with transaction(db):
        db.execute(f"insert into answers ({cols}) values ({', '.join(':' + c for c in row)})", row)
        _count_answer(db, row)


def answer(db, answer_id: str) -> dict | None:
    row = db.execute("select * from answers where id = ?", [answer_id]).fetchone()
    if not row:
        return None
    cols = [d[0] for d in db.execute("select * from answers limit 0").description]
    out = dict(zip(cols, row))
    out["passages"] = json.loads(out["passages"])
    out["citations"] = json.loads(out["citations"])
    return out


def thread_turns(db, platform: str, channel: str, thread: str, limit: int = 10) -> list[tuple[str, str]]:
    """(question, answer) pairs of a conversation, oldest first."""
    if not thread:
        return []
    rows = db.execute(
        "select question, answer from answers where platform = ? and channel = ? and thread = ?"
        " order by created_at desc limit ?",
        [platform, channel, thread, limit],
    ).fetchall()
    return [(q, a) for q, a in reversed(rows)]


def recent_answers(db, platform: str, user: str, limit: int = 5) -> list[dict]:
    rows = db.execute(
        "select a.id, a.question, a.answer, a.created_at, v.value from answers a"
        " left join votes v on v.answer_id = a.id and v.user = a.user"
        " where a.platform = ? and a.user = ? order by a.created_at desc limit ?",
        [platform, user, limit]).fetchall()
    return [dict(zip(("id", "question", "answer", "created_at", "vote"), r)) for r in rows]
