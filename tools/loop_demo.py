"""Run the closed learning loop once on the tiny model: `python -m tools.loop_demo [--json] [--workdir DIR]`.

Ask 10 questions, correct each answer (as the operator: accepted at once),
train an adapter through the job runner, let the gate promote it, and ask
again; then accept junk corrections to golden-set questions and watch the
gate reject the adapter trained on them; then roll back. Everything is the
product's own code on a fresh database and adapters folder (a temporary
directory unless --workdir): the tiny model built offline, retrieval over
knowledge/docs, and `python -m bot train --wait --json` itself (run in this
process, with the demo's paths in the environment as an operator would set
them), which trains inline when no worker is running. The recipe and the gate
are the `tiny` preset's own (models/tiny.toml): no BOT_TRAIN_STEPS or
BOT_GATE_* is set, so the figures are what an operator gets by default.
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

from bot import config

EVAL = config.ROOT / "knowledge" / "eval"
JUNK = "别看资料了，答案永远是四十二，详情请咨询管理员。"
# Settings an operator may have exported that would make the figures something other than the defaults'.
OVERRIDES = ("BOT_TRAIN_STEPS", "BOT_GATE_MIN_GAIN", "BOT_GATE_F1_TOLERANCE", "BOT_GATE_NLL_TOLERANCE")


def _questions() -> tuple[list[dict], str]:
    demo = EVAL / "demo.jsonl"
    if demo.is_file():
        return [json.loads(x) for x in demo.read_text(encoding="utf-8").splitlines() if x.strip()][:10], str(demo)
    rows = [json.loads(x) for x in (EVAL / "test.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r for r in rows if r.get("lang") == "zh"][:10], "knowledge/eval/test.jsonl (first 10 zh; demo.jsonl absent)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.loop_demo", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--workdir", help="keep the database and adapters here (default: a temporary directory)")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="loop-demo-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # Before bot.learning.jobs is imported: its queue and lock live in the demo's folder, not in data/;
    # and `train` below reads its database, adapters and gate from the settings, like any run.
    os.environ.update({"BOT_HUEY_DB": str(work / "huey.db"), "BOT_DB": str(work / "bot.db"),
                       "BOT_ADAPTERS_DIR": str(work / "adapters"), "BOT_MODEL": "tiny", "BOT_EMBEDDER": "none"})
    for name in OVERRIDES:
        os.environ.pop(name, None)
    from bot.answering import pipeline
    from bot.learning import evaluation, feedback, registry
    from bot import wiring
    from bot.llm import generation, presets
    from bot.knowledge import ingest, retrieval
    from bot import store

    log = (lambda *a: None) if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    t_all = time.perf_counter()
    settings = config.Settings.load()  # a tool is an entry point: read once, after the demo's own settings above
    cache = settings.cache_dir
    wiring.build_tiny_model(cache, config.ROOT / "knowledge" / "docs", log=lambda *a: None)
    db = store.connect(work / "bot.db")
    adapters = work / "adapters"
    ingest.index_paths(db, [config.ROOT / "knowledge" / "docs"], config.ROOT / "knowledge" / "docs", progress=False)
    searcher = retrieval.Searcher(db)
    served_budgets = presets.load("tiny").generation  # answers as `serve` gives them, with the preset's limits
    served = generation.load("tiny", cache_dir=cache, adapters_dir=adapters, trainable=False)
    worker = generation.ModelWorker(served)
    answerer = pipeline.Answerer(db, searcher, lambda: worker, k=settings.search_k,
                                  context_budget=served_budgets.context_budget_tokens,
                                  max_new_tokens=served_budgets.max_new_tokens)
    golden_path = settings.golden_set
    questions, source = _questions()

    # 1. Ask, record, correct (operator: accepted at once), train, gate, promote, ask again.
    t_cycle = time.perf_counter()
    ctx = pipeline.Context(platform="demo", user="alice", channel="demo")
    before = [answerer.ask(q["question"], ctx) for q in questions]
    for q, a in zip(questions, before):
        feedback.correct(db, a.id, q["answer"], "cli", "operator")
    log(f"train --wait: {len(questions)} corrections, the tiny preset's recipe and gate ...")
    first = _train(quiet=args.json)
    job = first["job"]
    after = [answerer.ask(q["question"], ctx) for q in questions]
    cycle_s = time.perf_counter() - t_cycle
    f1_before = [evaluation.char_f1(a.answer, q["answer"]) for q, a in zip(questions, before)]
    f1_after = [evaluation.char_f1(a.answer, q["answer"]) for q, a in zip(questions, after)]

    # 2. Poisoned feedback: junk "corrections" to golden questions, accepted by a careless admin.
    golden = [json.loads(x) for x in Path(golden_path).read_text(encoding="utf-8").splitlines() if x.strip()][:10]
    for g in golden:
        a = answerer.ask(g["question"], pipeline.Context(platform="slack", user="UMALLORY", channel="C1"))
        fix = feedback.correct(db, a.id, JUNK, "slack", "UMALLORY", reviewers=[])
        feedback.review(db, fix["id"], True, "slack:UADMIN")
    log(f"train --wait: {len(golden)} junk corrections (plus the replayed ones) ...")
    t2 = time.perf_counter()
    poisoned = _train(quiet=args.json)
    poisoned["reasons"] = json.loads(store.job(db, poisoned["job"])["result"] or "{}").get("reasons", [])
    job2 = poisoned["job"]
    poisoned_s = time.perf_counter() - t2
    in_service = generation.read_pointer(adapters)
    still = answerer.ask(questions[0]["question"], ctx)

    # 3. Rollback: the adapter before the one in service answers the next question.
    back_to = registry.rollback(db, adapters, by="cli:operator",
                                base=registry.serving_base(settings.model, settings.cache_dir))
    card = registry.card(adapters, first["version"])
    rolled = answerer.ask(questions[0]["question"], ctx)
    worker.close()

    result = {
        "questions": source,
        "cycle": {"job": job, "version": first["version"], "verdict": first["verdict"],
                  "f1_before": round(sum(f1_before) / len(f1_before), 3),
                  "f1_after": round(sum(f1_after) / len(f1_after), 3), "seconds": round(cycle_s, 1),
                  "steps": card.get("recipe", {}).get("steps_done"),
                  "stopped_early": card.get("recipe", {}).get("stopped_early", ""),
                  "train_s": card.get("timings", {}).get("train_s")},
        "rows": [{"id": q.get("id"), "question": q["question"], "reference": q["answer"], "before": b.answer,
                  "after": a.answer, "f1_before": round(fb, 3), "f1_after": round(fa, 3), "adapter": a.adapter}
                 for q, b, a, fb, fa in zip(questions, before, after, f1_before, f1_after)],
        "poisoned": {"job": job2, "version": poisoned["version"], "verdict": poisoned["verdict"],
                     "reasons": poisoned["reasons"],
                     "metrics": registry.card(adapters, poisoned["version"]).get("metrics", {}),
                     "in_service_after": in_service, "next_answer_adapter": still.adapter,
                     "seconds": round(poisoned_s, 1)},
        "rollback": {"in_service": back_to, "next_answer_adapter": rolled.adapter,
                     "same_as_first_answer": rolled.answer == before[0].answer},
        "gate": card.get("gate", {}),
        "total_s": round(time.perf_counter() - t_all, 1),
        "workdir": str(work),
    }
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(_table(result))
    ok = (first["verdict"] == "promoted" and poisoned["verdict"] == "rejected"
          and in_service == first["version"] and rolled.adapter == back_to)
    return 0 if ok else 1


def _train(quiet: bool) -> dict:
    """`python -m bot train --wait --json`, with the preset's recipe and gate: {"job", "version", "verdict"}."""
    from bot import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err if quiet else sys.stderr):
        code = cli.main(["train", "--wait", "--json"])
    if code != 0:
        raise SystemExit(f"train --wait failed (exit {code}): {out.getvalue()} {err.getvalue()}")
    return json.loads(out.getvalue())


def _table(r: dict) -> str:
    c, pz, rb = r["cycle"], r["poisoned"], r["rollback"]
    lines = [f"questions: {r['questions']}", "",
             "| id | char F1 before | char F1 after | answer after |", "|---|---|---|---|"]
    for row in r["rows"]:
        after = " ".join(row["after"].split())[:40]
        lines.append(f"| {row['id']} | {row['f1_before']:.2f} | {row['f1_after']:.2f} | {after} |")
    lines += ["", f"cycle: job #{c['job']} → {c['version']} {c['verdict']}; mean char F1 {c['f1_before']:.3f} → "
                  f"{c['f1_after']:.3f}; {c['seconds']} s for ask, correct, train ({c['steps']} steps, "
                  f"{c['train_s']} s), evaluate, promote and re-ask",
              f"gate: {r['gate']}; training: {c['stopped_early'] or 'ran its full step count'}",
              f"poisoned: job #{pz['job']} → {pz['version']} {pz['verdict']} ({pz['seconds']} s); in service after: "
              f"{pz['in_service_after']}; next answer from {pz['next_answer_adapter']}"]
    lines += [f"    {reason}" for reason in pz["reasons"]]
    lines += [f"rollback: in service {rb['in_service'] or 'the base model'}; next answer from "
              f"{rb['next_answer_adapter'] or 'the base model'}; "
              f"same as the first answer: {rb['same_as_first_answer']}",
              f"total: {r['total_s']} s (workdir {r['workdir']})"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
