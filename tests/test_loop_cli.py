"""The loop's CLI twins, in process through `bot.cli.main`: feedback, review, train --wait, jobs, adapters, forget.

Real tiny model, real SQLite and files, huey in immediate mode; a two-step
training, since learning itself is tests/test_loop.py's business.
"""
from __future__ import annotations

import json

import pytest

from bot import cli, store

GOLDEN = '{"question": "什么是天使投资？", "answer": "天使投资是指个人投资者对初创企业的早期投资。"}\n'


@pytest.fixture
def loopenv(env, tiny_model_dir, monkeypatch):
    from bot.learning import jobs

    golden = env.tmp / "golden.jsonl"
    golden.write_text(GOLDEN, encoding="utf-8")
    for name, value in {"BOT_MODEL": "tiny", "BOT_CACHE_DIR": tiny_model_dir.parent, "BOT_GOLDEN_SET": golden,
                        "BOT_TRAIN_STEPS": 2, "BOT_GATE_NLL_TOLERANCE": 100, "BOT_GATE_F1_TOLERANCE": 1,
                        "BOT_GATE_MIN_GAIN": -100}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(jobs.huey, "immediate", True)
    return env


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def asked(capsys, question: str) -> dict:
    code, out, _ = run(capsys, "ask", question, "--json")
    assert code == 0
    return json.loads(out)


def test_feedback_train_wait_jobs_and_adapters_from_the_cli(loopenv, capsys):
    a = asked(capsys, "什么是天使投资？")
    assert a["mode"] == "llm" and a["adapter"] is None
    code, out, _ = run(capsys, "feedback", a["id"], "--down", "--correction", "天使投资是早期投资[1]。", "--json")
    assert code == 0 and json.loads(out) == {"answer_id": a["id"], "vote": -1,
                                             "correction": {"id": 1, "status": "accepted"}}

    code, out, err = run(capsys, "train", "--wait", "--json")
    result = json.loads(out)
    assert code == 0 and set(result) == {"job", "version", "verdict"}, err
    # The gate's tolerances are opened wide above: this checks the plumbing, not the gate.
    assert result["verdict"] == "promoted" and result["version"] == "v0001"
    assert "no worker is running, training in this process" in err

    code, out, _ = run(capsys, "adapters", "list", "--json")
    listing = json.loads(out)
    assert listing["in_service"] == "v0001"
    (v,) = listing["versions"]
    assert v["version"] == "v0001" and v["verdict"] == "promoted" and v["metrics"]["learned"]["candidate"]["n"] == 1
    assert asked(capsys, "什么是天使投资？")["adapter"] == "v0001"  # the next answer, no restart

    code, out, _ = run(capsys, "jobs", "--json")
    (job,) = json.loads(out)["jobs"]
    assert (job["id"], job["state"], job["version"], job["steps"]) == (result["job"], "promoted", "v0001", 2)
    code, out, _ = run(capsys, "jobs")
    assert f"#{job['id']} train promoted v0001" in out

    code, out, _ = run(capsys, "adapters", "chart", "--out", str(loopenv.tmp / "chart.png"), "--json")
    assert code == 0 and json.loads(out)["path"].endswith("chart.png")
    import matplotlib.image

    pixels = matplotlib.image.imread(loopenv.tmp / "chart.png")  # a real PNG, decodable
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 800 and pixels.std() > 0
    from bot.learning import charts

    (drawn,) = charts.chart_data(loopenv.tmp / "adapters")["versions"]  # the card a real run wrote
    assert drawn["recorded"] and drawn["sets"]["learned"]["passed"] and drawn["sets"]["learned"]["decided_by"]

    code, out, _ = run(capsys, "adapters", "rollback", "--json")
    assert code == 0 and json.loads(out) == {"in_service": None}
    assert asked(capsys, "什么是天使投资？")["adapter"] is None
    code, _, err = run(capsys, "adapters", "promote", "v0009")
    assert code == 1 and "v0009" in err

    # Nothing new to learn: the next job is skipped, and says so.
    code, out, _ = run(capsys, "train", "--wait", "--json")
    assert json.loads(out)["verdict"] == "skipped"


def test_review_forget_and_bad_input_from_the_cli(loopenv, capsys):
    monkeypatch_free = asked(capsys, "什么是边缘计算？")
    code, out, _ = run(capsys, "feedback", monkeypatch_free["id"], "--correction", "边缘计算在数据源附近计算。",
                       "--user", "slack:U7", "--json")
    fix = json.loads(out)["correction"]
    assert fix["status"] == "pending"  # a chat user's correction waits, even when entered here
    code, out, _ = run(capsys, "feedback", "review", "--json")
    assert [r["id"] for r in json.loads(out)["pending"]] == [fix["id"]]
    code, out, _ = run(capsys, "feedback", "review", "--reject", str(fix["id"]), "--json")
    assert json.loads(out)["status"] == "rejected"
    code, _, err = run(capsys, "feedback", "review", "--accept", str(fix["id"]))
    assert code == 1 and "already rejected" in err

    assert run(capsys, "feedback", monkeypatch_free["id"])[0] == 2  # neither a vote nor a correction
    code, _, err = run(capsys, "feedback", "no-such-answer", "--up")
    assert code == 1 and "no longer exists" in err
    code, _, err = run(capsys, "feedback", monkeypatch_free["id"], "--correction", "   ")
    assert code == 1 and "empty" in err

    db = store.connect(loopenv.db_path)
    store.record_answer(db, {**store.answer(db, monkeypatch_free["id"]), "id": "x2", "platform": "slack",
                             "user": "U7"})
    code, out, _ = run(capsys, "forget", "slack:U7", "--json")
    nothing = {"files": 0, "rows": 0, "marked": [], "weights_deleted": [], "retrain_job": None}
    assert json.loads(out) == {"user": "slack:U7", "answers": 1, "votes": 0, "corrections": 1, "opted_out": True,
                               "adapters": nothing}
    assert store.answer(db, "x2") is None and ("slack", "U7") in store.opted_out(db)

    code, _, err = run(capsys, "jobs", "cancel", "42")
    assert code == 1 and "no job #42" in err
