"""The CLI flows on both engines, in process through `bot.cli.main`: index, ask, feedback, jobs.
The same commands with BOT_DB a SQLite file and then a PostgreSQL URL must give the same answers
(retrieval-only: BOT_MODEL=none, so the comparison is about the database, not sampling)."""
from __future__ import annotations

import json
import re

from bot import cli, store

QUESTIONS = ["什么是天使投资？", "How do I apply for leave?"]


def _flows(capsys, monkeypatch, target) -> dict:
    monkeypatch.setenv("BOT_DB", str(target))

    def run(*argv):
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        assert code == 0, (argv, err)
        return out

    run("index")
    again = run("index")  # a second run finds nothing changed
    answers = [json.loads(run("ask", q, "--json")) for q in QUESTIONS]
    fb = json.loads(run("feedback", answers[0]["id"], "--down", "--correction", "天使投资是早期投资[1]。", "--json"))
    jobs = json.loads(run("jobs", "--json"))
    db = store.connect(target)
    stored = store.answer(db, answers[0]["id"])
    again = re.sub(r"\([\d.]+ s\)", "", again)  # the run's duration differs, nothing else
    return {"reindex": again, "answers": [(a["mode"], a["answer"], a.get("citations")) for a in answers],
            "feedback": {k: v for k, v in fb.items() if k != "answer_id"}, "jobs": jobs,
            "stored_question": stored["question"], "votes": store.operations_counts(db)["votes"],
            "corrections": store.operations_counts(db)["corrections"]}


def test_index_ask_feedback_jobs_same_on_sqlite_and_postgresql(env, pg_url, capsys, monkeypatch):
    on_sqlite = _flows(capsys, monkeypatch, env.db_path)
    on_postgres = _flows(capsys, monkeypatch, pg_url)
    assert on_postgres == on_sqlite
    assert on_sqlite["answers"][0][1] and on_sqlite["votes"] == {-1: 1}
    assert on_sqlite["corrections"]["accepted"] == 1  # filed and accepted at once from the CLI
