"""The PII corpus (tests/fixtures/pii_corpus.jsonl): no secret survives scrubbing, none reaches any file a
snapshot or a training job writes, and the negatives are left alone. The figures come from
tests/reliability/pii_corpus.py, run here small."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot.learning import snapshot
from bot.learning.privacy import findings, scrub

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "reliability" / "pii_corpus.py"
sys.path.insert(0, str(SCRIPT.parent))
import pii_corpus  # noqa: E402

ROWS = pii_corpus.load()
PII = [r for r in ROWS if r["kind"] not in ("negative", "control token")]
NEGATIVES = [r for r in ROWS if r["kind"] == "negative"]


def test_the_corpus_is_big_enough_and_well_formed():
    assert len(PII) >= 100
    assert sum(r["lang"] == "zh" for r in PII) >= 40
    assert len(NEGATIVES) >= 20 and any(r["kind"] == "control token" for r in ROWS)
    assert len({r["id"] for r in ROWS}) == len(ROWS)
    for r in PII:
        assert r["secret"] and r["secret"] in r["text"], r["id"]
    # The eight variants the adversary found reaching a promoted train.jsonl.
    texts = "\n".join(r["text"] for r in PII)
    for variant in ("１３８００１３８０００", "josé@example.com", "张三@example.com", "李@例子.中国", "令牌xoxb-", "密钥是sk-",
                    "访问密钥AKIA", "AWS_SECRET_ACCESS_KEY="):
        assert variant in texts, variant


@pytest.mark.parametrize("row", PII, ids=[f"{r['id']}-{r['kind']}" for r in PII])
def test_no_secret_survives_scrubbing(row):
    out = scrub(row["text"])
    assert row["secret"] not in out, out
    assert scrub(out) == out  # idempotent: a placeholder is never scrubbed again
    assert findings(row["text"])


@pytest.mark.parametrize("row", NEGATIVES, ids=[r["id"] for r in NEGATIVES])
def test_negatives_are_left_alone(row):
    assert scrub(row["text"]) == row["text"]
    assert findings(row["text"]) == []


@pytest.fixture(scope="module")
def corpus_run(tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("pii")
    return pii_corpus.run(ROWS, work, tiny_model_dir.parent), work


def test_zero_leaks_into_any_file_a_snapshot_writes(corpus_run):
    report, work = corpus_run
    snap = report["snapshot"]
    assert sorted(snap["files"]) == ["heldout.jsonl", "negatives.jsonl", "train.jsonl"]
    assert sum(snap["leaks_per_kind"].values()) == 0, snap["leaks_per_kind"]
    assert set(snap["leaks_per_kind"]) == {r["kind"] for r in PII}
    assert snap["special_tokens_inside"] == {"tiny": 0, "qwen2.5-shaped": 0}
    assert snap["control_token_strings_in_jsonl"] == 0 and snap["negatives_missing_from_files"] == 0
    # Every case went in: each is a question, a correction and a negative, and controls were refused.
    assert snap["examples"] >= 3 * len(ROWS)
    assert report["feedback"]["refused"] == sum(r["kind"] == "control token" for r in ROWS)
    assert report["scrub"]["false_positives"] == 0
    assert pii_corpus.ok(report)


def test_the_file_check_sees_a_leak_when_scrubbing_is_off(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot, "scrub", lambda text: text or "")
    rows = pii_corpus.load(limit=1)
    report = pii_corpus.run(rows, tmp_path, tiny_model_dir.parent)
    assert all(report["snapshot"]["leaks_per_kind"].values()), report["snapshot"]["leaks_per_kind"]
    assert not pii_corpus.ok(report)


def test_the_command_with_a_training_job_writes_no_secret_anywhere(tiny_model_dir, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "BOT_CACHE_DIR": str(tiny_model_dir.parent), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, str(SCRIPT), "--train", "--limit", "1", "--steps", "2", "--json",
                          "--kinds", "email,phone,aws secret key,slack token,password,control token,negative",
                          "--keep", str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout)
    train = report["train"]
    assert train["version"] and any(f.endswith("adapter_model.safetensors") for f in train["files"])
    assert {"card.json", "evaluation.json", "train.jsonl"} <= {Path(f).name for f in train["files"]}
    assert sum(train["leaks_per_kind"].values()) == 0 and train["special_tokens_inside"]["tiny"] == 0
    card = json.loads(next((tmp_path / "run" / "adapters").glob("v*/card.json")).read_text(encoding="utf-8"))
    assert card["data"]["control_tokens"]["special_tokens_inside"] == 0
