"""The store on both engines: the same calls, the same results, on a SQLite file and on a real
PostgreSQL 15 (tests/scale/conftest.py starts one per session). What runs on PostgreSQL is what
this file proves; bot/store/postgres.py says how the one copy of the queries is translated."""
from __future__ import annotations

import threading

import pytest

from bot import store
from bot.store import postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    target = tmp_path / "bot.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    database = store.connect(target)
    database.target = target
    yield database
    if request.param == "postgresql":
        database.close()


def _answer(db, answer_id="a1", user="U1", **extra):
    row = {"id": answer_id, "created_at": 1.0, "platform": "slack", "channel": "C", "thread": "T", "user": user,
           "question": "怎么请假？", "passages": [{"id": 1, "text": "请假 100%"}], "answer": "找经理",
           "citations": ["hr.md"], "mode": "retrieval", "latency_ms": 120.0, **extra}
    store.record_answer(db, row)
    return row


def test_migrations_run_once_and_are_recorded(db):
    names = [fn.__name__ for fn in store.MIGRATIONS]
    assert store.ping(db.target) == len(names)
    again = store.connect(db.target)  # a second start applies nothing twice
    assert [r["name"] for r in again.query("select name from _migrations order by name")] == sorted(names)
    if isinstance(again, postgres.PostgresDatabase):
        again.close()


def test_answers_round_trip_with_json_user_and_percent(db):
    row = _answer(db)
    got = store.answer(db, "a1")
    assert got["passages"] == row["passages"] and got["citations"] == ["hr.md"]
    assert got["user"] == "U1" and got["abstained"] == 0 and got["latency_ms"] == 120.0
    assert store.thread_turns(db, "slack", "C", "T") == [("怎么请假？", "找经理")]
    assert store.answer(db, "nope") is None
    assert store.answer_counters(db)[("slack", "retrieval")]["count"] == 1


def test_votes_replace_and_move_counters(db):
    _answer(db)
    store.record_vote(db, "a1", "U2", "slack", 1)
    store.record_vote(db, "a1", "U2", "slack", -1)  # the last click wins
    assert [(v["user"], v["value"]) for v in store.votes(db, "a1")] == [("U2", -1)]
    assert store.operations_counts(db)["votes"] == {1: 0, -1: 1}
    assert [r["vote"] for r in store.recent_answers(db, "slack", "U1")] == [None]


def test_corrections_pending_replaced_then_reviewed(db):
    _answer(db)
    first = store.record_correction(db, "a1", "U3", "slack", "不对")
    again = store.record_correction(db, "a1", "U3", "slack", "应该找人事")
    assert first == again and isinstance(first, int)
    assert [c["text"] for c in store.pending_corrections(db)] == ["应该找人事"]
    assert store.review_correction(db, first, "accepted", "admin") is True
    assert store.review_correction(db, first, "rejected", "admin") is False
    assert store.operations_counts(db)["corrections"] == {"pending": 0, "accepted": 1}
    assert [a["id"] for a in store.feedback_answers(db)] == ["a1"]


def test_delivery_keys_make_a_resend_a_duplicate(db):
    _answer(db)
    assert store.first_delivery(db, "E1") is True
    assert store.first_delivery(db, "E1") is False
    store.record_vote(db, "a1", "U2", "slack", 1, delivery="V1")
    with pytest.raises(store.Duplicate):
        store.record_vote(db, "a1", "U2", "slack", -1, delivery="V1")
    assert store.votes(db, "a1")[0]["value"] == 1  # the duplicate's write rolled back with it
    assert store.delivered(db, "V1")


def test_first_delivery_once_across_threads(db):
    wins, barrier = [], threading.Barrier(8)

    def race():
        barrier.wait()
        wins.append(store.first_delivery(db, "shared"))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_jobs_claim_once_cancel_and_list(db):
    a = store.create_job(db, "train", "slack:U1", "slack", "C", "T")
    b = store.create_job(db, "train", "slack:U1")
    assert b == a + 1
    assert store.claim_job(db, a) is True and store.claim_job(db, a) is False
    store.update_job(db, a, state="promoted", version="v0001", step=3)
    assert store.job(db, a)["finished_at"] is not None
    assert store.cancel_queued_job(db, b, "slack:U1") is True
    assert [j["state"] for j in store.list_jobs(db)] == ["cancelled", "promoted"]
    assert store.operations_counts(db)["jobs"] == {"cancelled": 1, "promoted": 1}


def test_outbox_claims_are_disjoint_and_expire(db):
    job_id = store.create_job(db, "train", "x")
    ids = [store.post_outbox(db, job_id, "slack", "C", "T", f"m{i}") for i in range(30)]
    got: dict[str, list[int]] = {}
    barrier = threading.Barrier(3)

    def claim(name):
        barrier.wait()
        got[name] = [r["id"] for r in store.claim_outbox(db, "slack", name, limit=10)]

    threads = [threading.Thread(target=claim, args=(f"p{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [i for rows in got.values() for i in rows]
    assert sorted(claimed) == ids and len(set(claimed)) == 30
    store.mark_outbox_sent(db, ids[:29])
    assert store.claim_outbox(db, "slack", "p9") == []  # the last one is still under its claim
    again = store.claim_outbox(db, "slack", "p9", lease_s=-1)  # a claim past its lease is offered again
    assert [r["id"] for r in again] == ids[29:]


def test_leases(db):
    assert store.acquire_lease(db, "discord", "A", 30) is True
    assert store.acquire_lease(db, "discord", "B", 30) is False
    assert store.renew_lease(db, "discord", "A", 30) is True
    assert store.lease(db, "discord")["owner"] == "A"
    store.release_lease(db, "discord", "A")
    assert store.acquire_lease(db, "discord", "B", -1) is True  # taken, already expired
    assert store.acquire_lease(db, "discord", "A", 30) is True  # an expired lease is anyone's
    assert store.index_generation(db) == 0
    assert store.bump_index_generation(db) == 1 and store.bump_index_generation(db) == 2


def test_knowledge_meta_and_passages(db):
    record = {"doc": "hr.md", "source": "hr.md", "sha256": "x", "size": 3, "mtime": 1.0, "indexed_at": 2.0}
    new = store.replace_document(db, record, [("请假", "请假找经理", "h1", "请假 经理"), ("病假", "病假要证明", "h2", "病假")])
    assert len(new) == 2
    store.replace_document(db, {**record, "sha256": "y"}, [("请假", "请假找经理", "h1", "请假 经理")])
    assert [p["text"] for p in store.passages(db)] == ["请假找经理"] and store.passage_count(db) == 1
    assert store.document(db, "hr.md")["sha256"] == "y"
    store.save_embeddings(db, "m", {new[0]: b"\x00\x01"})
    store.save_embeddings(db, "m", {new[0]: b"\x02"})
    assert store.embeddings(db, "m") == {new[0]: b"\x02"}
    store.save_lexicon(db, [("leave", "请假", 0.9)])
    assert store.lexicon(db) == {"leave": [("请假", 0.9)]}
    store.set_meta(db, "k", "1")
    store.set_meta(db, "k", "2")
    assert store.get_meta(db, "k") == "2"


def test_forget_and_purge_in_batches(db):
    for i in range(5):
        _answer(db, f"a{i}", user="U1" if i < 3 else "U2")
        store.record_vote(db, f"a{i}", "U9", "slack", 1)
    counts = store.forget_user(db, "slack", "U1", opt_out=True, batch=2)
    assert counts == {"answers": 3, "votes": 3, "corrections": 0}
    assert ("slack", "U1") in store.opted_out(db)
    assert store.purge_before(db, 2.0, batch=1)["answers"] == 2
    assert store.operations_counts(db)["votes"] == {1: 0}
    assert store.answer_counters(db)[("slack", "retrieval")]["count"] == 5  # counters never go down


# --- read-then-write under concurrency: exact on both engines ------------------------------------
# SQLite runs one writer at a time (BEGIN IMMEDIATE); PostgreSQL runs these at READ COMMITTED, where
# a transaction that reads then writes needs its own lock (bot/store/engine.py: _lock, _for_update).

def _together(n: int, work) -> list[BaseException]:
    """Run work(i) on n threads released at once; the exceptions they raised."""
    errors, barrier = [], threading.Barrier(n)

    def go(i):
        barrier.wait()
        try:
            work(i)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def _stored_votes(db) -> dict[int, int]:
    return {v: n for v, n in db.execute("select value, count(*) from votes group by value").fetchall()}


def test_concurrent_votes_keep_one_row_and_exact_counters(db):
    _answer(db)
    # Eight clicks of one person at once (a first vote: no row to lock yet), then sixteen people turn
    # their votes round and round at once (+1 -> -1 and -1 -> +1 move two counter rows each).
    assert _together(8, lambda i: store.record_vote(db, "a1", "U1", "slack", 1 if i % 2 else -1)) == []
    assert len(store.votes(db, "a1")) == 1
    assert store.operations_counts(db)["votes"] == {**{1: 0, -1: 0}, **_stored_votes(db)}
    # Without one order, PostgreSQL failed these with deadlocks (155 of 16 x 30 votes, once).
    assert _together(16, lambda i: [store.record_vote(db, "a1", f"P{i}", "slack", 1 if (i + r) % 2 else -1)
                                    for r in range(20)]) == []
    assert len(store.votes(db, "a1")) == 17
    counted = {k: v for k, v in store.operations_counts(db)["votes"].items() if v}
    assert counted == _stored_votes(db) and sum(counted.values()) == 17


def test_concurrent_corrections_keep_one_pending_item(db):
    _answer(db)
    ids = []
    assert _together(8, lambda i: ids.append(store.record_correction(db, "a1", "U3", "slack", f"改正 {i}"))) == []
    assert len(set(ids)) == 1 and len(store.pending_corrections(db)) == 1
    assert store.operations_counts(db)["corrections"] == {"pending": 1}


def test_concurrent_votes_and_purge_keep_counters_exact(db):
    for i in range(20):
        _answer(db, f"a{i}")
        store.record_vote(db, f"a{i}", "U9", "slack", 1)
    # The purge deletes every answer while votes are written on them (one turned round, one new): each
    # vote is either purged (and uncounted as it stood) or refused because its answer is gone; the
    # purge never trips on a vote written under it; the counters match the rows.
    errors = _together(3, lambda i: store.purge_before(db, 2.0, batch=5) if i == 0 else [
        _vote_or_gone(db, f"a{k}", "U9" if i == 1 else "U8") for k in range(20)])
    assert errors == []
    assert store.votes(db, "a3") == [] and _stored_votes(db) == {}
    assert {k: v for k, v in store.operations_counts(db)["votes"].items() if v} == {}


def _vote_or_gone(db, answer_id, user):
    try:
        store.record_vote(db, answer_id, user, "slack", -1)
    except Exception as e:  # the answer was purged first: a foreign key refusal, on both engines
        assert "foreign key" in str(e).lower(), e


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_replicas_migrating_a_fresh_database_together(engine, tmp_path, request):
    target = tmp_path / "fresh.db" if engine == "sqlite" else request.getfixturevalue("pg_url")
    opened = []
    assert _together(4, lambda i: opened.append(store.connect(target))) == []
    names = [r["name"] for r in opened[0].query("select name from _migrations order by name")]
    assert names == sorted(fn.__name__ for fn in store.MIGRATIONS)  # each once (the primary key says so too)
    for db in opened:
        if isinstance(db, postgres.PostgresDatabase):
            db.close()


def test_passage_location_round_trip(db):
    """m015: where in a converted file a passage sits (`p. 2`), stored per occurrence on both engines."""
    record = {"doc": "report.pdf", "source": "report.pdf", "sha256": "x", "size": 3, "mtime": 1.0, "indexed_at": 2.0}
    store.replace_document(db, record, [("Revenue", "营收4870万元", "h1", "营收", "p. 2"),
                                        ("Offices", "工程师137名", "h2", "工程师", "p. 3")])
    assert [(p["text"], p["location"]) for p in store.passages(db)] == [("营收4870万元", "p. 2"), ("工程师137名", "p. 3")]
    store.replace_document(db, {**record, "doc": "notes.md"}, [("Notes", "plain", "h3", "plain")])  # no location: ""
    assert {p["doc"]: p["location"] for p in store.passages(db) if p["text"] == "plain"} == {"notes.md": ""}


def test_two_admins_promoting_at_once_record_one_move_from_the_version_they_read(db):
    store.record_promotion(db, "v1", None, "promote", "slack:A")
    moved = []

    def promote(i):
        try:
            store.record_promotion(db, f"v{i + 2}", "v1", "promote", f"slack:U{i}", check=True)
        except store.ServiceMoved as e:
            moved.append(e.now)

    assert _together(6, promote) == []
    winners = [p for p in store.promotions(db) if p["previous"] == "v1"]
    assert len(winners) == 1 and len(moved) == 5  # the other five were told, not recorded
    assert set(moved) == {winners[0]["version"]} and store.in_service(db) == (True, winners[0]["version"])
