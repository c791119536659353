"""`python -m bot dashboard`: each canned query over a real database with data, through Datasette's own client.

The database is a real bot database (store.connect, the real store and
feedback functions write it), opened by `dashboard.build` exactly as the
command does; requests go through `Datasette.client` (in-process ASGI, no
browser, no port).
"""
from __future__ import annotations

import json
import time

import pytest
import pytest_asyncio

from bot import cli, store
from bot.ops import dashboard
from bot.learning import feedback

DAY = 86400.0


def _answer(db, answer_id: str, adapter: str | None, created_at: float, question: str = "q") -> None:
    store.record_answer(db, {
        "id": answer_id, "created_at": created_at, "platform": "slack", "channel": "C1", "thread": "", "user": "U1",
        "question": question, "passages": [], "answer": "a [1]", "citations": [], "mode": "llm", "notice": "",
        "model": "m", "revision": "r", "adapter": adapter, "latency_ms": 120.0, "retrieval_ms": 1.0,
        "prompt_tokens": 10, "completion_tokens": 5})


@pytest.fixture
def data(tmp_path):
    """A bot database with answers from two adapters and the base model, votes, corrections, jobs and audit rows."""
    db = store.connect(tmp_path / "bot.db")
    t = time.time() - DAY
    for i, (adapter, votes) in enumerate([("v0001", [-1, -1, 1]), ("v0002", [1, 1, 1, -1]), (None, [-1])]):
        for j, value in enumerate(votes):
            _answer(db, f"a{i}{j}", adapter, t + i * 100 + j)
            feedback.vote(db, f"a{i}{j}", "slack", f"U{j}", value)
    _answer(db, "unvoted", "v0002", t + 500)
    c1 = feedback.correct(db, "a00", "the right figure is 18 months", "slack", "U7")["id"]
    c2 = feedback.correct(db, "a01", "see chapter 8", "slack", "U8")["id"]
    feedback.review(db, c2, False, by="slack:UADMIN")
    feedback.correct(db, "a10", "accepted at once", "cli", "operator")
    done = store.create_job(db, "train", "slack:UADMIN", "slack", "C1", "1.1")
    store.update_job(db, done, state="promoted", verdict="promoted", version="v0002", step=60, steps=60, loss=1.25)
    failed = store.create_job(db, "nightly", "schedule")
    store.update_job(db, failed, state="failed", error="worker stopped during training")
    store.create_job(db, "train", "cli:operator")
    store.audit(db, "slack", "UADMIN", "adapter promote", "v0002")
    store.audit(db, "discord", "42", "train", result="refused")
    return {"db": db, "path": tmp_path / "bot.db", "pending": c1, "rejected": c2}


async def _rows(ds, query: str) -> list[dict]:
    resp = await ds.client.get(f"/{dashboard.DB_NAME}/{query}.json?_shape=array")
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest_asyncio.fixture
async def ds(data):
    ds = dashboard.build(data["path"])
    await ds.invoke_startup()
    return ds


@pytest.mark.asyncio
async def test_thumbs_down_rate_per_adapter(ds):
    rows = {r["adapter"]: r for r in await _rows(ds, "thumbs_down_rate_per_adapter")}
    assert set(rows) == {"v0001", "v0002", "(base model)"}
    assert (rows["v0001"]["votes"], rows["v0001"]["down"], rows["v0001"]["down_rate"]) == (3, 2, 0.667)
    assert (rows["v0002"]["answers"], rows["v0002"]["votes"], rows["v0002"]["up"], rows["v0002"]["down_rate"]) \
        == (5, 4, 3, 0.25)
    assert rows["(base model)"]["down_rate"] == 1.0


@pytest.mark.asyncio
async def test_recent_corrections_with_their_status(ds, data):
    rows = await _rows(ds, "recent_corrections")
    assert [(r["correction"], r["status"]) for r in rows] == [
        ("accepted at once", "accepted"), ("see chapter 8", "rejected"), ("the right figure is 18 months", "pending")]
    rejected = next(r for r in rows if r["id"] == data["rejected"])
    assert rejected["reviewed_by"] == "slack:UADMIN" and rejected["reviewed"] and rejected["answered_by"] == "v0001"


@pytest.mark.asyncio
async def test_job_history_newest_first(ds):
    rows = await _rows(ds, "job_history")
    assert [(r["kind"], r["state"]) for r in rows] == [
        ("train", "queued"), ("nightly", "failed"), ("train", "promoted")]
    assert rows[1]["error"] == "worker stopped during training" and rows[1]["finished"]
    assert (rows[2]["version"], rows[2]["steps"], rows[2]["loss"]) == ("v0002", 60, 1.25)


@pytest.mark.asyncio
async def test_audit_log(ds):
    rows = await _rows(ds, "audit_log")
    assert [(r["user"], r["action"], r["target"], r["result"]) for r in rows] == [
        ("42", "train", "", "refused"), ("UADMIN", "adapter promote", "v0002", "ok")]


@pytest.mark.asyncio
async def test_the_pages_render_and_new_rows_show_without_a_restart(ds, data):
    for path in ("/", "/bot", "/bot/thumbs_down_rate_per_adapter", "/bot/recent_corrections", "/bot/job_history",
                 "/bot/audit_log", "/bot/answers"):
        assert (await ds.client.get(path)).status_code == 200, path
    # The bot goes on writing while the dashboard is open (WAL): a read-only, not immutable, open sees it.
    store.audit(data["db"], "cli", "operator", "purge", detail="{}")
    assert (await _rows(ds, "audit_log"))[0]["action"] == "purge"


def _counts(db) -> dict:
    return {t: db.execute(f"select count(*) from {t}").fetchone()[0] for t in ("answers", "votes", "corrections")}


@pytest.mark.asyncio
async def test_nothing_can_write_through_the_dashboard(data):
    db, before = data["db"], _counts(data["db"])
    assert not any(q.get("write") for q in dashboard.QUERIES.values())
    meta = json.loads(json.dumps(dashboard.METADATA))
    meta["databases"][dashboard.DB_NAME]["queries"]["wipe"] = {"sql": "delete from votes", "write": True}
    ds = dashboard.build(data["path"], metadata=meta)
    await ds.invoke_startup()
    # Custom SQL: Datasette runs only a single SELECT.
    resp = await ds.client.get("/bot.json?sql=delete+from+votes")
    assert resp.status_code == 400 and "must be a SELECT" in resp.json()["error"]
    # Even a writable canned query, were one ever configured, is refused by SQLite (query_only) ...
    resp = await ds.client.post("/bot/wipe", json={})
    assert resp.status_code == 302 and _counts(db) == before
    messages = ds.unsign(resp.cookies["ds_messages"], "messages")  # what the operator is shown
    assert any("attempt to write a readonly database" in m for m, _ in messages), messages
    # ... and it is that guard that holds: the same Datasette without it would have deleted the votes.
    unguarded = dashboard.build(data["path"], metadata=meta)
    setattr(unguarded, dashboard._FLAG, False)
    await unguarded.invoke_startup()
    await unguarded.client.post("/bot/wipe", json={})
    assert _counts(db)["votes"] == 0


def test_the_command_refuses_a_missing_database(env, capsys):
    assert cli.main(["dashboard", "--port", "1"]) == 2
    assert "no database at" in capsys.readouterr().err
    assert not env.db_path.exists()  # and did not create one


def test_the_command_says_what_to_use_on_postgresql(env, monkeypatch, capsys):
    monkeypatch.setenv("BOT_DB", "postgresql://bot@127.0.0.1:1/bot")  # refused before any connection
    assert cli.main(["dashboard", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "SQLite files only" in err and "psql" in err and "no database at" not in err


# -- served over HTTP: Host names and methods -----------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, host: str | None) -> tuple[int, dict, str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.putheader("Content-Length", "2")
        conn.endheaders(b"{}")
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


@pytest.fixture
def served(data, monkeypatch):
    """`python -m bot dashboard` itself, in a child process on a free loopback port, with one --allow-host."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    port = _free_port()
    env = {**os.environ, "BOT_DB": str(data["path"])}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "bot", "dashboard", "--port", str(port),
                             "--allow-host", "Dash.Example.org"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            if _request(port, "GET", "/-/versions.json", f"127.0.0.1:{port}")[0] == 200:
                break
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    yield port
    proc.terminate()
    proc.wait(10)


def test_the_dashboard_answers_only_to_its_own_host_names_and_only_reads(served, data):
    port, path = served, f"/{dashboard.DB_NAME}/audit_log.json?_shape=array"
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}",
                 "dash.example.org", f"dash.example.org:{port}", "dash.example.org.:443"):
        status, _, body = _request(port, "GET", path, host)
        assert status == 200 and json.loads(body)[0]["action"] == "train", (host, status, body)
    assert _request(port, "HEAD", path, f"127.0.0.1:{port}")[0] == 200
    # DNS rebinding: a page on another site, its name now resolving to 127.0.0.1, is not served.
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1",
                 f"dash.example.org.evil.example:{port}", f"127.0.0.2:{port}"):
        status, _, body = _request(port, "GET", path, host)
        assert status == 421 and "does not serve" in body and "--allow-host" in body, (host, status, body)
    for host in (f"127.0.0.1:{port}:1", "127.0.0.1:http", ""):
        status, _, body = _request(port, "GET", path, host)
        assert status == 400, (host, status, body)
    before = _counts(data["db"])
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for where in (path, f"/{dashboard.DB_NAME}/recent_corrections", f"/{dashboard.DB_NAME}/votes"):
            status, headers, body = _request(port, method, where, f"localhost:{port}")
            assert (status, headers.get("allow")) == (405, "GET, HEAD") and "read-only" in body, (method, where)
        assert _request(port, method, path, "evil.example")[0] == 421  # the name is checked first
    assert _counts(data["db"]) == before


def test_host_headers_are_split_into_name_and_port_and_wildcard_binds_serve_only_localhost():
    assert dashboard.split_host("Example.org.:8001") == ("example.org", 8001)
    assert dashboard.split_host("[::1]:8001") == ("::1", 8001)
    assert dashboard.split_host("[::1]") == ("::1", None)
    for bad in ("", ":80", "a:b", "a:1:2", "[::1]x", "a:123456", "a:²"):
        assert dashboard.split_host(bad) is None, bad
    assert dashboard.allowed_names("0.0.0.0") == (dashboard.LOOPBACK, set())
    assert dashboard.allowed_names("dash.internal", ["Proxy.Example."]) == ({"dash.internal"}, {"proxy.example"})
