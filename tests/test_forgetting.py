"""Forgetting reaches every copy, with no model: version folders written by the real snapshot writer,
redacted by `forget` and the retention purge; marks, weights, the queued retrain, the audit trail.

The folders hold what a training job writes (train/heldout/negatives.jsonl from `Snapshot.write`,
an evaluation.json in `evaluation.evaluate`'s shape, a card, adapter_config.json and safetensors
weights); `tests/reliability/test_forget.py` runs the same on a real training run of the tiny model.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from bot import cli, store
from bot.learning import evaluation, feedback, forgetting, jobs, registry, snapshot
from bot.llm import hotswap
from bot.ops import retention
from test_loop_feedback import answer

sys.path.insert(0, str(Path(__file__).parent / "reliability"))
from forget_check import holding  # noqa: E402  (the measuring script's own check)

ALICE_Q, ALICE_FIX = "爱丽丝想知道边缘计算是什么？", "边缘计算就是在数据源附近处理数据，爱丽丝说的。"
BOB_Q, BOB_FIX = "混合并行是什么？", "混合并行结合数据并行与模型并行。"


def _feedback(db, *, alice_age_days: float = 0):
    a = answer(db, ALICE_Q, user="UALICE")
    if alice_age_days:
        db.execute("update answers set created_at = ? where id = ?", [time.time() - alice_age_days * 86400, a])
        db.conn.commit()
    b = answer(db, BOB_Q, user="UBOB")
    for aid, text, user in ((a, ALICE_FIX, "UALICE"), (b, BOB_FIX, "UBOB")):
        fix = feedback.correct(db, aid, text, "slack", user, reviewers=[])
        feedback.review(db, fix["id"], True, "slack:UADMIN")
    return a, b


def _version(adapters: Path, name: str, snap: snapshot.Snapshot, parent: str | None) -> Path:
    folder = adapters / name
    files = snap.write(folder)
    rows = [{"question": i.question, "reference": i.reference, "answer": "模型答：" + i.reference[:6],
             "f1": 0.5, "nll": 1.0} for i in evaluation.items_of(snap.train)]
    block = {"n": len(rows), "f1": 0.5, "nll": 1.0, "rows": rows}
    (folder / "evaluation.json").write_text(json.dumps({"learned": {"candidate": block, "current": block}},
                                                       ensure_ascii=False), encoding="utf-8")
    (folder / "card.json").write_text(json.dumps({"version": name, "parent": parent, "verdict": "promoted",
                                                  "data": {"files": files}}), encoding="utf-8")
    (folder / "adapter_config.json").write_text("{}", encoding="utf-8")
    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(folder / "adapter_model.safetensors"))
    return folder


def _world(db, tmp_path, **kw):
    _feedback(db, **kw)
    adapters = tmp_path / "adapters"
    both = snapshot.build(db)
    assert both.counts["train"] == 2
    bob_only = snapshot.Snapshot(train=[e for e in both.train if e["question"] == BOB_Q])
    _version(adapters, "v0001", both, None)        # learned Alice and Bob
    _version(adapters, "v0002", bob_only, "v0001")  # continued from v0001: no row of hers, her weights all the same
    _version(adapters, "v0003", bob_only, None)     # never saw her
    hotswap.set_pointer(adapters, "v0002")
    return adapters


def test_forget_redacts_every_file_marks_the_trained_versions_and_queues_a_retrain(db, tmp_path):
    adapters = _world(db, tmp_path)
    assert holding(adapters, {ALICE_Q, ALICE_FIX}) == ["v0001/evaluation.json", "v0001/train.jsonl"]
    done = feedback.forget(db, "slack", "UALICE", adapters_dir=adapters, by=("cli", "operator"), enqueue=False)
    files = done["adapters"]
    assert (done["answers"], done["corrections"]) == (1, 1)
    assert holding(adapters, {ALICE_Q, ALICE_FIX}) == []
    assert (files["files"], files["marked"], files["weights_deleted"]) == (2, ["v0001", "v0002"], ["v0001"])

    # Bob's rows, and every file, still whole and valid.
    for v in ("v0001", "v0002", "v0003"):
        train = [json.loads(x) for x in (adapters / v / "train.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [r["question"] for r in train] == [BOB_Q]
        rows = json.loads((adapters / v / "evaluation.json").read_text(encoding="utf-8"))["learned"]["candidate"]["rows"]
        assert [r["question"] for r in rows if r["question"] != forgetting.REDACTED] == [BOB_Q]
        assert all(r["f1"] == 0.5 for r in rows)  # scores kept, texts gone
    v1, v2, v3 = (registry.card(adapters, v) for v in ("v0001", "v0002", "v0003"))
    assert v1["forgotten"][0]["rows"] == 1 and v1["forgotten"][0]["why"] == "forget"
    assert v2["forgotten"][0]["inherited_from"] == "v0001" and "forgotten" not in v3
    assert "UALICE" not in json.dumps([v1, v2])  # when and why, never who or what
    # Out of service: its weights go now; the one in service serves until it is replaced.
    assert not (adapters / "v0001" / "adapter_model.safetensors").exists() and (adapters / "v0001" / forgetting.NOTE).is_file()
    assert (adapters / "v0002" / "adapter_model.safetensors").exists()
    job = store.job(db, files["retrain_job"])
    assert (job["state"], job["kind"]) == ("queued", "forget")
    assert forgetting.restarting(adapters) and forgetting.clean_ancestor(adapters, "v0002") is None

    listed = {v["version"]: v for v in registry.listing(adapters)["versions"]}
    assert [bool(listed[v]["forgotten"]) for v in ("v0001", "v0002", "v0003")] == [True, True, False]
    assert [listed[v]["weights"] for v in ("v0001", "v0002", "v0003")] == [False, True, True]
    actions = [(r["action"], r["detail"]) for r in reversed(store.audit_log(db, 20))]
    assert actions == [("forget redact", "files=2 rows=3"), ("forget mark", "versions=v0001,v0002"),
                       ("forget weights", "versions=v0001"), ("forget retrain", "for slack:UALICE")]
    assert ALICE_Q not in str(store.audit_log(db, 20)) and ALICE_FIX not in str(store.audit_log(db, 20))

    # A second forget finds nothing more, and the queued job serves both: no second retrain.
    again = feedback.forget(db, "slack", "UALICE", adapters_dir=adapters, enqueue=False)
    assert again["answers"] == 0 and again["adapters"]["retrain_job"] in (None, files["retrain_job"])


def test_once_a_clean_version_serves_the_marked_weights_go_and_with_nothing_left_the_base_serves(db, tmp_path):
    adapters = _world(db, tmp_path)
    feedback.forget(db, "slack", "UALICE", adapters_dir=adapters, enqueue=False)
    # A job that trained nothing though data is left (its data hash was trained already): the marked version
    # stays in service, its weights too, and the audit says so.
    assert forgetting.after_job(db, adapters, {"job": 5, "verdict": "skipped", "counts": {"train": 2}},
                                retrain=jobs.retrainer(db)) == \
        {"fallback": None, "weights_deleted": [], "late": None}
    assert (adapters / "v0002" / "adapter_model.safetensors").exists()
    assert store.audit_log(db, 1)[0]["result"] == "error: not clean yet"
    # Promotion of a clean version (v0003 stands in for the job's new one): v0002's weights go.
    hotswap.set_pointer(adapters, "v0003")
    assert forgetting.after_job(db, adapters, {"job": 6, "verdict": "promoted"},
                                retrain=jobs.retrainer(db))["weights_deleted"] == ["v0002"]
    assert registry.card(adapters, "v0002")["weights_deleted"]["why"] == "forget"
    # Rollback or promotion to a version whose weights are gone is refused with the reason.
    try:
        registry.promote(db, adapters, "v0002", by="cli:operator", base=None)
        raise AssertionError("promoted a version without weights")
    except registry.RegistryError as e:
        assert "v0002" in str(e)

    # Bob forgotten too: v0003 is marked in service, nothing is left; the job skips and the base serves.
    files = feedback.forget(db, "slack", "UBOB", adapters_dir=adapters, enqueue=False)["adapters"]
    assert "v0003" in files["marked"] and files["retrain_job"]
    out = forgetting.after_job(db, adapters, {"job": 7, "verdict": "skipped", "counts": {"train": 0}},
                               retrain=jobs.retrainer(db))
    assert out == {"fallback": "base", "weights_deleted": ["v0003"], "late": None}
    assert hotswap.read_pointer(adapters) is None and holding(adapters, {BOB_Q, BOB_FIX}) == []
    assert store.promotions(db)[-1]["action"] == "forget"


def test_a_rejected_clean_candidate_hands_service_to_the_clean_ancestor_it_was_gated_against(db, tmp_path):
    adapters = _world(db, tmp_path)  # v0002 (continued from v0001) serves; both learned from Alice
    feedback.forget(db, "slack", "UALICE", adapters_dir=adapters, enqueue=False)
    assert forgetting.clean_ancestor(adapters, "v0002") is None  # v0001 is marked too: the base model
    out = forgetting.after_job(db, adapters, {"job": 5, "verdict": "rejected", "version": "v0004"},
                               retrain=jobs.retrainer(db))
    assert out == {"fallback": "base", "weights_deleted": ["v0002"], "late": None}
    assert hotswap.read_pointer(adapters) is None and not (adapters / "v0002" / "adapter_model.safetensors").exists()
    fallback = next(r for r in store.audit_log(db, 5) if r["action"] == "forget fallback")
    assert "v0002 -> base" in fallback["detail"] and "rejected" in fallback["detail"]
    assert store.promotions(db)[-1]["action"] == "forget"


def test_the_thread_that_asked_is_told_which_clean_version_serves_after_a_rejected_retrain(db, tmp_path, monkeypatch):
    from bot import config
    from bot.learning import retrain

    adapters = _world(db, tmp_path)
    feedback.forget(db, "slack", "UALICE", adapters_dir=adapters, enqueue=False)
    job_id = store.create_job(db, "forget", "slack:UADMIN", "slack", "C1", "1.1")
    rejected = {"job": job_id, "version": "v0004", "verdict": "rejected", "parent": None,
                "reasons": ["learned: no improvement (F1 0.5 -> 0.5)"], "metrics": {}, "counts": {"train": 1}}
    monkeypatch.setattr(retrain, "run", lambda *a, **kw: rejected)  # the gate's verdict; training is tested elsewhere
    settings = config.Settings.load({"BOT_ADAPTERS_DIR": str(adapters), "BOT_DB": str(tmp_path / "x.db")})
    jobs.execute(db, job_id, settings)
    (said,) = [m["text"] for m in store.outbox(db, job_id) if "rejected" in m["text"]]
    assert "had learned from forgotten data, so the base model (the newest clean one) serves now" in said
    assert "stays in service" not in said
    assert hotswap.read_pointer(adapters) is None


def test_a_version_whose_snapshot_was_built_before_the_forget_is_cleaned_when_its_job_ends(db, tmp_path):
    adapters = _world(db, tmp_path)
    before = snapshot.build(db)  # a job already training: its snapshot still holds Alice
    files = feedback.forget(db, "slack", "UALICE", adapters_dir=adapters, enqueue=False)["adapters"]
    _version(adapters, "v0004", before, None)  # ... and its version lands after the forget, promoted
    hotswap.set_pointer(adapters, "v0004")
    assert holding(adapters, {ALICE_Q, ALICE_FIX}) == ["v0004/evaluation.json", "v0004/train.jsonl"]
    out = forgetting.after_job(db, adapters, {"job": 9, "verdict": "promoted", "version": "v0004"},
                               retrain=jobs.retrainer(db))
    assert out["late"] == {"files": 2, "rows": 3, "marked": ["v0004"]}
    assert holding(adapters, {ALICE_Q, ALICE_FIX}) == []
    assert registry.card(adapters, "v0004")["forgotten"][0]["why"] == "forgotten while it trained"
    # In service and marked: the retrain already queued serves (it has not started), and v0004 serves until then.
    assert store.audit_log(db, 2)[1]["target"] == f"#{files['retrain_job']}"
    assert (adapters / "v0004" / "adapter_model.safetensors").exists()
    assert ALICE_Q not in str(store.audit_log(db, 50)) and ALICE_FIX not in str(store.audit_log(db, 50))


def test_the_retention_purge_reaches_the_version_folders(db, tmp_path):
    adapters = _world(db, tmp_path, alice_age_days=40)
    done = retention.purge(db, 30, adapters_dir=adapters, enqueue=False)
    assert (done["answers"], done["corrections"]) == (1, 1)
    assert done["adapters"]["marked"] == ["v0001", "v0002"] and done["adapters"]["retrain_job"]
    assert holding(adapters, {ALICE_Q, ALICE_FIX}) == [] and holding(adapters, {BOB_Q, BOB_FIX})
    assert registry.card(adapters, "v0001")["forgotten"][0]["why"] == "retention"
    assert [r["action"] for r in reversed(store.audit_log(db, 10))] == [
        "purge", "forget redact", "forget mark", "forget weights", "forget retrain"]


def test_adapters_list_shows_the_mark(env, capsys):
    db = store.connect(env.db_path)
    adapters = _world(db, env.tmp)
    assert cli.main(["forget", "slack:UALICE", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["adapters"]["marked"] == ["v0001", "v0002"] and out["adapters"]["retrain_job"]
    assert adapters == Path(env.tmp) / "adapters"
    assert cli.main(["adapters", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "trained on forgotten data, weights deleted" in lines[0]
    assert "trained on forgotten data: replaced at the next training job" in lines[1]
    assert "forgotten" not in lines[2]


def test_the_cli_door_records_a_platform_user_as_that_person(env, capsys):
    """`ask --user slack:U9` is U9's question (so `forget slack:U9` finds it); `--user bob` is the operator's."""
    db = store.connect(env.db_path)
    for who in ("slack:U9", "bob"):
        assert cli.main(["ask", "--model", "none", "--user", who, "--json", "什么是边缘计算？"]) == 0
        aid = json.loads(capsys.readouterr().out)["id"]
        assert cli.main(["feedback", aid, "--up", "--user", who]) == 0
        capsys.readouterr()
    rows = sorted((r["platform"], r["user"]) for r in db.query("select platform, user from answers"))
    assert rows == [("cli", "bob"), ("slack", "U9")]
    capsys.readouterr()
    assert cli.main(["forget", "slack:U9", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["answers"], out["votes"]) == (1, 1)
    assert [(r["platform"], r["user"]) for r in db.query("select platform, user from answers")] == [("cli", "bob")]
