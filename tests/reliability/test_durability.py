"""Durability: a burst of 1,000 votes and corrections from concurrent writers, kill -9 in the middle.

The writers are threads in a child process (tests/reliability/feedback_burst.py)
calling the real `feedback.vote` / `feedback.correct` on a real database file;
each op is acknowledged on stdout only after the call returned, as a user
would be told "saved". After SIGKILL the database is opened again, as a
restarted process opens it: every acknowledged row must be there, intact (the
vote's value, the correction's text, id and review status), then the ops
that never landed are run to reach 1,000, each stored exactly once.
"""
from __future__ import annotations

import pytest

import feedback_burst  # tests/reliability/, next to this file

OPS = 1000


@pytest.mark.parametrize("seed, threads", [(6, 8), (7, 4), (8, 16)])
def test_every_acknowledged_vote_and_correction_survives_kill_9(seed, threads, tmp_path):
    out = feedback_burst.burst(tmp_path / "bot.db", ops=OPS, threads=threads, seed=seed)
    print(out)  # the figures, with -s
    # The kill landed in the middle of the burst, not after it.
    assert out["killed"] and out["writer_exit"] == -9
    assert out["kill_after_acks"] <= out["acknowledged_before_kill"] < OPS
    assert out["writer_errors"] == []  # no "database is locked", no other failure, in either writer
    # After the restart: every acknowledged op present and intact.
    assert out["integrity_after_kill"] == "ok"
    assert out["acknowledged_but_missing_or_damaged"] == [] and out["damaged_after_restart"] == []
    assert out["acknowledged_and_present"] == out["acknowledged_before_kill"]
    # At most the ops in flight when the kill came landed without being acknowledged.
    assert out["present_but_unacknowledged"] <= threads
    assert out["present_after_restart"] == out["acknowledged_before_kill"] + out["present_but_unacknowledged"]
    # The rest, run again, reach the total: each op once, none damaged.
    assert out["rerun_ops"] == OPS - out["present_after_restart"] == out["rerun_acknowledged"]
    assert out["final_present"] == OPS and out["final_absent"] == [] and out["final_damaged"] == []
    assert out["final_rows"] == {"votes": OPS // 2, "corrections": OPS // 2}
    assert out["final_integrity"] == "ok"


def test_the_check_notices_a_missing_or_altered_row(tmp_path):
    """The restart check is not vacuous: a deleted vote, an edited correction and a second copy are found."""
    from bot import store

    out = feedback_burst.burst(tmp_path / "bot.db", ops=40, threads=2, seed=1)
    assert out["final_present"] == 40
    db = store.connect(tmp_path / "bot.db")
    vote, fix, twice = (feedback_burst.expected(i) for i in (0, 1, 3))
    with db.conn:
        db.execute("delete from votes where user = ?", [vote["user"]])
        db.execute("update corrections set text = text || '!' where user = ?", [fix["user"]])
        db.execute("insert into corrections (answer_id, user, platform, text, status, created_at)"
                   " select answer_id, user, platform, text, status, created_at from corrections where user = ?",
                   [twice["user"]])
    got = feedback_burst._check(db, range(40), {})
    assert got["absent"] == {0} and sorted(d["op"] for d in got["damaged"]) == [1, 3]
    assert len(got["present"]) == 37
    # An acknowledged correction must also carry the id and review status the writer was told.
    (row,) = db.query("select id, status from corrections where user = ?", [feedback_burst.expected(5)["user"]])
    told = {5: ["correction", str(row["id"] + 1), row["status"]]}
    assert [d["op"] for d in feedback_burst._check(db, [5], told)["damaged"]] == [5]
