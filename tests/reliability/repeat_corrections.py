"""One person sends the same correction on one answer many times, from several threads at once.

    python tests/reliability/repeat_corrections.py [--n 50] [--threads 8] [--db PATH]

prints the figures as JSON: corrections sent, review items (pending
corrections) they made, rows stored, and what happened after the pending one
was reviewed (one more correction from the same person must be a new item).
Everything goes through the real `feedback.correct` on a real SQLite file,
one connection per thread, as the Slack and Discord handlers write it.
`tests/test_loop_feedback.py` runs a small version.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANSWER = "0123456789ab"
TEXT = "更正：边缘计算在靠近数据源的地方处理数据[1]。"


def run(db_path: str, n: int = 50, threads: int = 8) -> dict:
    sys.path.insert(0, str(ROOT))
    from bot.learning import feedback
    from bot import store

    db = store.connect(db_path)
    store.record_answer(db, {
        "id": ANSWER, "created_at": time.time(), "platform": "slack", "channel": "C1", "thread": "", "user": "U1",
        "question": "什么是边缘计算？", "passages": [], "answer": "边缘计算[1]", "citations": [], "mode": "llm",
        "notice": "", "model": "m", "revision": "r", "adapter": None, "latency_ms": 1.0, "retrieval_ms": 0.1,
        "prompt_tokens": 1, "completion_tokens": 1})
    with ThreadPoolExecutor(threads) as pool:
        ids = list(pool.map(lambda _: feedback.correct(db, ANSWER, TEXT, "slack", "UREPEAT", reviewers=[])["id"],
                            range(n)))
    pending = feedback.pending(db)
    rows = len(store.corrections(db, ANSWER))
    feedback.review(db, pending[0]["id"], False, "slack:UADMIN")
    again = feedback.correct(db, ANSWER, TEXT + " (again)", "slack", "UREPEAT", reviewers=[])
    return {"corrections_sent": n, "threads": threads, "distinct_ids_returned": len(set(ids)),
            "review_items": len(pending), "rows": rows,
            "after_review": {"new_item": again["id"] != pending[0]["id"], "status": again["status"],
                             "review_items": len(feedback.pending(db)),
                             "rows": len(store.corrections(db, ANSWER))}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50, help="corrections sent (default 50)")
    ap.add_argument("--threads", type=int, default=8, help="threads sending them at once (default 8)")
    ap.add_argument("--db", help="database file (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.db:
        figures = run(args.db, args.n, args.threads)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            figures = run(str(Path(tmp) / "bot.db"), args.n, args.threads)
    print(json.dumps(figures, ensure_ascii=False))
    return 0 if figures["review_items"] == 1 and figures["after_review"]["review_items"] == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
