"""Forgetting reaches every copy, measured on a real training run of the tiny model.

    python tests/reliability/forget_check.py [--steps 120] [--json] [--workdir DIR]

From a fresh database and adapters folder: Alice (slack:UALICE) and Bob
(slack:UBOB) each ask a question and correct the answer (an admin accepts
both); `train --wait` trains v0001 on both and the gate promotes it. Then
`python -m bot forget slack:UALICE` (the CLI itself, in this process) and the
figures:

- files under the adapters folder that hold Alice's text (her question or
  correction, as written or as a snapshot scrubbed it, raw or JSON-escaped),
  before and right after the forget (must be 0 after);
- the versions marked, and whether a retrain was queued;
- the retrain run (`jobs.run_inline`, as `train --wait` runs a job): its
  verdict, and whether the marked version's weights were deleted once the
  clean one served (or, if the clean candidate was rejected, what serves);
- then Bob is forgotten too: nothing is left to train on, so the queued job
  skips and the pointer falls back to the base model, and v0002's weights go.

The audit rows of each step are printed (ids and counts) and checked to hold
no text of theirs. Exit 1 when any figure is not what forgetting promises.
`tests/reliability/test_forget.py` runs it with fewer steps.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EVAL = ROOT / "knowledge" / "eval"


def _rows(name: str) -> list[dict]:
    return [json.loads(x) for x in (EVAL / name).read_text(encoding="utf-8").splitlines() if x.strip()]


def holding(adapters: Path, texts: set[str]) -> list[str]:
    """Files under `adapters` whose bytes contain any of `texts`, as UTF-8 or as JSON writes them."""
    needles = set()
    for t in texts:
        for form in (t, json.dumps(t, ensure_ascii=False)[1:-1], json.dumps(t)[1:-1]):
            needles.add(form.encode("utf-8"))
    found = []
    for f in sorted(adapters.rglob("*")):
        if f.is_file() and any(n in f.read_bytes() for n in needles):
            found.append(str(f.relative_to(adapters)))
    return found


def _cli(*argv: str) -> tuple[int, str]:
    from bot import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(list(argv))
    return code, out.getvalue()


def run(work: Path, steps: int) -> dict:
    os.environ.update({"BOT_HUEY_DB": str(work / "huey.db"), "BOT_DB": str(work / "bot.db"),
                       "BOT_ADAPTERS_DIR": str(work / "adapters"), "BOT_MODEL": "tiny", "BOT_EMBEDDER": "none",
                       "BOT_GATE_NLL_TOLERANCE": "0.5", "BOT_TRAIN_STEPS": str(steps),
                       "BOT_GOLDEN_SET": str(work / "golden.jsonl")})
    sys.path.insert(0, str(ROOT))
    from bot.answering import pipeline
    from bot import config, store
    from bot.learning import feedback, forgetting, jobs, privacy, registry
    from bot import wiring
    from bot.llm import generation, presets
    from bot.knowledge import ingest, retrieval

    t0 = time.perf_counter()
    demo = _rows("demo.jsonl")
    alice_q, bob_q = demo[0], demo[2]
    # Bob's question is in the golden set, as test_loop does: the tiny model answers no real golden
    # question, so only one it learned can show a regression; two it never sees ride along.
    golden = [bob_q] + _rows("golden.jsonl")[1:3]
    (work / "golden.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in golden),
                                       encoding="utf-8")
    cache, docs, adapters = config.Settings.load().cache_dir, ROOT / "knowledge" / "docs", work / "adapters"
    wiring.build_tiny_model(cache, docs, log=lambda *a: None)
    db = store.connect(work / "bot.db")
    ingest.index_paths(db, [docs], docs, progress=False)
    served = generation.load("tiny", cache_dir=cache, adapters_dir=adapters, trainable=False)
    g = presets.load("tiny").generation
    with generation.ModelWorker(served) as worker:
        answerer = pipeline.Answerer(db, retrieval.Searcher(db), lambda: worker, context_budget=g.context_budget_tokens,
                                      max_new_tokens=g.max_new_tokens)
        for user, q in (("UALICE", alice_q), ("UBOB", bob_q)):
            a = answerer.ask(q["question"], pipeline.Context("slack", user, "C1"))
            fix = feedback.correct(db, a.id, q["answer"], "slack", user, reviewers=[])
            feedback.review(db, fix["id"], True, "slack:UADMIN")
    alice_texts = {alice_q["question"], alice_q["answer"], privacy.scrub(alice_q["question"]),
                   privacy.scrub(alice_q["answer"])}
    bob_texts = {bob_q["question"], bob_q["answer"]}

    code, out = _cli("train", "--wait", "--json")
    first = json.loads(out) if code == 0 else {"verdict": f"exit {code}"}
    result = {"steps": steps, "first": first, "in_service": registry.read_pointer(adapters),
              "alice_files_before": holding(adapters, alice_texts)}

    code, out = _cli("forget", "slack:UALICE", "--json")
    forgot = json.loads(out)
    job = forgot["adapters"]["retrain_job"]
    code, out = _cli("adapters", "list", "--json")
    listing = json.loads(out)
    result["forget"] = {"answers": forgot["answers"], "corrections": forgot["corrections"], **forgot["adapters"],
                        "alice_files_after": holding(adapters, alice_texts),
                        "listing": [{k: v[k] for k in ("version", "verdict", "weights")} | {"marked": bool(v["forgotten"])}
                                    for v in listing["versions"]]}
    if job is not None:
        done = jobs.run_inline(db, job, config.Settings.load())
        result["retrain"] = {"job": job, "verdict": done["verdict"] or done["state"], "version": done["version"],
                             "in_service": registry.read_pointer(adapters),
                             "weights": {v: bool(registry.weights(adapters / v)) for v in registry.versions(adapters)},
                             "alice_files": holding(adapters, alice_texts)}

    # Bob too: nothing left to learn from, so the retrain skips and the service falls back.
    code, out = _cli("forget", "slack:UBOB", "--json")
    bob = json.loads(out)["adapters"]
    after = {"marked": bob["marked"], "retrain_job": bob["retrain_job"], "bob_files_after": holding(adapters, bob_texts)}
    if bob["retrain_job"] is not None:
        done = jobs.run_inline(db, bob["retrain_job"], config.Settings.load())
        after.update(verdict=done["verdict"] or done["state"], in_service=registry.read_pointer(adapters),
                     weights={v: bool(registry.weights(adapters / v)) for v in registry.versions(adapters)})
    result["forget_bob"] = after
    audit = [r for r in reversed(store.audit_log(db, 200)) if r["action"].startswith("forget")]
    result["audit"] = [f"{r['platform']}:{r['user']} {r['action']} {r['target']} {r['result']} {r['detail']}"
                       for r in audit]
    result["audit_holds_text"] = any(t in str(store.audit_log(db, 500)) for t in alice_texts | bob_texts)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["ok"] = _ok(result)
    return result


def _ok(r: dict) -> bool:
    f, t, b = r["forget"], r.get("retrain", {}), r["forget_bob"]
    first = r["first"].get("version")
    return (r["first"].get("verdict") == "promoted" and bool(r["alice_files_before"])
            and f["alice_files_after"] == [] and f["marked"] == [first] and f["retrain_job"] is not None
            and t.get("alice_files") == []
            and (t.get("verdict") == "promoted" and t["weights"].get(first) is False
                 or t.get("verdict") == "rejected" and t["in_service"] == first)
            and b["bob_files_after"] == [] and not r["audit_holds_text"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=120, help="training steps per job (BOT_TRAIN_STEPS)")
    p.add_argument("--workdir", help="keep the database and adapters here (default: a temporary directory)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="forget-check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    r = run(work, args.steps)
    if args.json:
        print(json.dumps(r, ensure_ascii=False))
        return 0 if r["ok"] else 1
    f, t, b = r["forget"], r.get("retrain", {}), r["forget_bob"]
    print(f"train: {r['first'].get('version')} {r['first'].get('verdict')} ({r['steps']} steps), "
          f"in service {r['in_service']}; files holding Alice's text: {len(r['alice_files_before'])} "
          f"({', '.join(r['alice_files_before'])})")
    print(f"forget slack:UALICE: {f['answers']} question(s), {f['corrections']} correction(s); {f['rows']} copies "
          f"in {f['files']} file(s) redacted; files still holding her text: {len(f['alice_files_after'])}; "
          f"marked {f['marked']}; retrain queued: {'job #' + str(f['retrain_job']) if f['retrain_job'] else 'no'}")
    print(f"retrain: job #{t.get('job')} {t.get('version')} {t.get('verdict')}; in service {t.get('in_service')}; "
          f"weights present: {t.get('weights')}")
    print(f"forget slack:UBOB: marked {b['marked']}; retrain {b.get('verdict')}; in service "
          f"{b.get('in_service') or 'the base model'}; weights present: {b.get('weights')}; "
          f"files still holding his text: {len(b['bob_files_after'])}")
    print("audit:\n  " + "\n  ".join(r["audit"]))
    print(f"audit holds their text: {r['audit_holds_text']}; {r['seconds']} s; {'OK' if r['ok'] else 'FAILED'}")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
