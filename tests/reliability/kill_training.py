"""Fault injection: the training worker killed with SIGKILL at chosen points of a real training run.

    python tests/reliability/kill_training.py [--kills 10] [--seed 6] [--steps 3]

prints one JSON line per kill (where it landed, what recovery found) and a
summary; `tests/reliability/test_fault_injection.py` runs the same.

Each run is a child process (`child` mode) that queues a job and runs it as
`train --wait` does (`jobs.run_inline`: under the huey GPU lock) on the tiny
model, with hooks that announce each point on stdout and, at the chosen
one, stop there until the parent kills the process:

- `step N`: after training step N;
- `saved`: adapter weights written into `.tmp-vNNNN`, no card yet;
- `eval N`: at the start of the N-th evaluation pass (one adapter on one set);
- `before-replace` / `after-replace`: around the `os.replace` that turns
  `.tmp-vNNNN` into the version folder;
- `before-pointer` / `after-pointer`: around the `os.replace` of the
  in-service pointer (`registry.promote`), before the promotion is recorded;
- `after-trained`: the feedback marked as learned, the job row not final yet;
- `time`: killed a random moment (0-1 s) after training starts, wherever that lands (held at
  `after-trained` at the latest, so that a fast machine cannot finish the job first).

The gate is opened wide (BOT_GATE_MIN_GAIN=-100) so every run that gets
that far promotes, and each run gets one new accepted correction so there is
always something to learn. After each kill the parent runs `jobs.recover` as
a restarted worker does and records the job row, the pointer, the folders,
the GPU lock, and what a serving model does when it follows the pointer.
The choice of points and of N is drawn from a seeded RNG.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
POINTS = ["step", "time", "saved", "eval", "eval", "before-replace", "after-replace", "before-pointer",
          "after-pointer", "after-trained"]
GOLDEN = [{"question": "什么是天使投资？", "answer": "天使投资是指个人投资者对初创企业的早期投资。"}]
QUESTIONS = ["什么是天使投资？", "DeepMind最著名的成就是什么？", "EfficientNet有什么特点？", "什么是边缘计算？",
             "生成对抗网络由哪两部分组成？", "什么是融资？"]


# -- the child: one job, with hooks ---------------------------------------------------


def child(point: str, at: int) -> int:
    sys.path.insert(0, str(ROOT))
    from bot import config, store
    from bot.learning import evaluation, jobs
    from bot.llm import training

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def mark(name: str, detail="") -> None:
        say(f"AT {name} {detail}".rstrip())
        if name == point and (not at or detail == at):
            say("PAUSED")
            time.sleep(600)  # the parent's SIGKILL ends it here
        elif point == "time" and name == "after-trained":
            time.sleep(600)  # a fast machine must not finish the job before the timed kill arrives

    real_train, real_save, real_eval = training.train, training.save_adapter, evaluation.evaluate
    real_replace, real_trained = os.replace, store.mark_trained
    passes = [0]

    def train(*args, log=None, **kwargs):
        def logged(step, loss):
            if log:
                log(step, loss)
            mark("step", step)
        return real_train(*args, log=logged, **kwargs)

    def save_adapter(*args, **kwargs):
        real_save(*args, **kwargs)
        mark("saved")

    def evaluate(gen, searcher, items, **kwargs):
        if items:
            passes[0] += 1
            mark("eval", passes[0])
        return real_eval(gen, searcher, items, **kwargs)

    def replace(src, dst, *args, **kwargs):
        name = Path(dst).name
        kind = "replace" if re.fullmatch(r"v\d{4,}", name) else "pointer" if name == "current" else None
        if kind:
            mark(f"before-{kind}")
        real_replace(src, dst, *args, **kwargs)
        if kind:
            mark(f"after-{kind}")

    def mark_trained(*args, **kwargs):
        real_trained(*args, **kwargs)
        mark("after-trained")

    training.train, training.save_adapter, evaluation.evaluate = train, save_adapter, evaluate
    os.replace, store.mark_trained = replace, mark_trained

    db = store.connect(config.Settings.load().db)
    # Asked from a chat channel, as /train does: what the job says goes to the outbox.
    job_id = jobs.submit(db, "slack:UADMIN", "slack", "C0FAULT", "", enqueue=False)
    say(f"JOB {job_id}")
    row = jobs.run_inline(db, job_id, config.Settings.load())
    say(f"DONE {row['state']} {row.get('version')}")
    return 0


# -- the parent ---------------------------------------------------------------------

RECOVER = ("import json; from bot import config, store; from bot.learning import jobs; s = config.Settings.load(); "
           "print(json.dumps([r['id'] for r in jobs.recover(store.connect(s.db), s.adapters_dir)]))")


def _env(work: Path, cache_dir: Path, steps: int) -> dict:
    golden = work / "golden.jsonl"
    golden.write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in GOLDEN), encoding="utf-8")
    return {"BOT_DB": str(work / "bot.db"), "BOT_MODEL": "tiny", "BOT_CACHE_DIR": str(cache_dir),
            "BOT_ADAPTERS_DIR": str(work / "adapters"), "BOT_GOLDEN_SET": str(golden), "BOT_EMBEDDER": "none",
            "BOT_TRAIN_STEPS": str(steps), "BOT_HUEY_DB": str(work / "huey.db"), "BOT_GATE_MIN_GAIN": "-100",
            "BOT_GATE_F1_TOLERANCE": "100", "BOT_GATE_NLL_TOLERANCE": "100",
            "BOT_LEASE_TTL": "1"}  # liveness is the job's lease: a killed run's expires 1 s after its last renewal


def _plan(kills: int, seed: int, steps: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    points = (POINTS * (kills // len(POINTS) + 1))[:kills]
    rng.shuffle(points)
    # Evaluation passes: current and candidate on the sets that have items (learned, golden, and
    # replayed once an adapter has been promoted): at least 4.
    return [(p, rng.randint(1, steps) if p == "step" else rng.randint(1, 4) if p == "eval"
             else rng.randint(0, 1000) if p == "time" else 0) for p in points]


def _add_feedback(db, n: int) -> str:
    """One more question, answered (retrieval-only, no model needed) and corrected by the operator."""
    from bot.answering import pipeline
    from bot.learning import feedback
    from bot.knowledge import retrieval

    question = QUESTIONS[n % len(QUESTIONS)]
    answer = pipeline.Answerer(db, retrieval.Searcher(db), None).ask(question, pipeline.Context("slack", "U1", "C1"))
    feedback.correct(db, answer.id, f"{question}的答案是第{n}条更正[1]。", "cli", "operator")
    return answer.id


def _state(work: Path) -> dict:
    adapters = work / "adapters"
    names = sorted(p.name for p in adapters.iterdir()) if adapters.is_dir() else []
    from bot.llm import hotswap

    return {"pointer": hotswap.read_pointer(adapters), "tmp": [n for n in names if n.startswith(".tmp-")],
            "litter": [n for n in names if n.startswith(".") and not n.startswith(".tmp-")],
            "versions": [n for n in names if not n.startswith(".") and n != "current"]}


def _check_version(adapters: Path, version: str | None) -> dict:
    """What a reader of the pointer finds there."""
    from bot.llm import hotswap
    from bot.learning import registry

    if version is None:
        return {"complete": None, "verdict": None, "metrics": None}
    try:
        hotswap.check_folder(adapters / version)
        complete = True
    except hotswap.AdapterError as e:
        complete = str(e)
    card = registry.card(adapters, version)
    return {"complete": complete, "verdict": card.get("verdict"), "metrics": sorted(card.get("metrics") or {})}


def run_kills(work: Path, cache_dir: Path, kills: int = 10, seed: int = 6, steps: int = 3, served=None,
              log=print) -> list[dict]:
    """Kill a training run `kills` times at seeded points; one record per kill. `work/bot.db` must hold
    an indexed knowledge base. `served`: a LocalGenerator following `work/adapters`, checked after each."""
    sys.path.insert(0, str(ROOT))
    from bot.learning import jobs
    from bot.learning.queue import _SqliteHuey
    from bot import store

    env = {**os.environ, **_env(work, cache_dir, steps), "PYTHONPATH": str(ROOT)}
    db = store.connect(work / "bot.db")
    queue = _SqliteHuey("bot", filename=str(work / "huey.db"))
    rng = random.Random(seed + 1)
    records = []
    for k, (point, at) in enumerate(_plan(kills, seed, steps), 1):
        _add_feedback(db, k)
        before = _state(work)
        errors = work / f"kill-{k}.stderr"
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "child", point, str(at)],
                                cwd=work, env=env, stdout=subprocess.PIPE, stderr=errors.open("w"), text=True)
        seen, job_id, killed_at = [], None, None
        for line in proc.stdout:
            line = line.strip()
            if line.startswith("JOB "):
                job_id = int(line.split()[1])
            elif line.startswith("AT "):
                seen.append(line[3:])
            if line == "PAUSED" or (point == "time" and line == "AT step 1"):
                if point == "time":
                    time.sleep(at / 1000)  # 0-1 s after training starts: wherever that lands
                killed_at = seen[-1]
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(60)
        if point == "time":  # where the run was when the signal arrived, as far as it told us
            seen += [ln.strip()[3:] for ln in proc.stdout if ln.startswith("AT ")]
            killed_at = f"time +{at} ms (last point reached: {seen[-1] if seen else 'none'})"
        at_kill = _state(work)
        row_at_kill = store.job(db, job_id) if job_id else None
        # The killed run's lease runs out first (a worker restarted sooner leaves the job to its periodic pass).
        deadline = time.monotonic() + 10
        while job_id and (lease := store.lease(db, f"job:{job_id}")) and lease["live"] and time.monotonic() < deadline:
            time.sleep(0.1)
        # What a restarted worker does first (`jobs._on_start`), in a new process with the worker's settings.
        done = subprocess.run([sys.executable, "-c", RECOVER], cwd=work, env=env, capture_output=True, text=True,
                              timeout=60)
        recovered = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else done.stderr[-600:]
        after = _state(work)
        row = store.job(db, job_id) if job_id else None
        record = {
            "kill": k, "point": point, "n": at, "killed_at": killed_at, "exit": proc.returncode,
            "job": job_id, "state_at_kill": row_at_kill and row_at_kill["state"],
            "version": row and row["version"],
            "tmp_at_kill": at_kill["tmp"], "pointer_before": before["pointer"], "pointer_at_kill": at_kill["pointer"],
            "recovered_jobs": recovered,
            "state_after": row and row["state"], "error_after": row and row["error"],
            "finished_at_set": bool(row and row["finished_at"]),
            "outbox_last": (store.outbox(db, job_id) or [{}])[-1].get("text") if job_id else None,
            "pointer_after": after["pointer"], "tmp_after": after["tmp"], "litter_after": after["litter"],
            "promotion_recorded": after["pointer"] is None or any(
                p["version"] == after["pointer"] and p["action"] == "promote" for p in store.promotions(db)),
            "versions_after": {v: _check_version(work / "adapters", v) for v in after["versions"]},
            "gpu_lock_held_after": queue.is_locked(jobs.LOCK),
            "seconds": round(time.monotonic() - t0, 2), "stderr_tail": errors.read_text()[-600:] if proc.returncode != -9 else "",
        }
        record["in_service_at_kill"] = _check_version(work / "adapters", at_kill["pointer"])
        record["in_service"] = _check_version(work / "adapters", after["pointer"])
        if served is not None:
            active = served.follow_pointer()
            record["served"] = {"active": active, "pointer_error": served.pointer_error}
        records.append(record)
        log(json.dumps({k2: v for k2, v in record.items() if k2 not in ("versions_after", "stderr_tail")},
                       ensure_ascii=False))
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", nargs="?", choices=["kills", "child"], default="kills")
    p.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--kills", type=int, default=10, help="runs to kill (default 10)")
    p.add_argument("--seed", type=int, default=6, help="seeds the kill points (default 6)")
    p.add_argument("--steps", type=int, default=3, help="training steps per run (default 3)")
    args = p.parse_args(argv)
    if args.mode == "child":
        return child(args.args[0], int(args.args[1]))
    sys.path.insert(0, str(ROOT))
    from bot import config, store, wiring
    from bot.llm import generation
    from bot.knowledge import ingest

    cache = config.Settings.load().cache_dir
    wiring.build_tiny_model(cache, ROOT / "knowledge" / "docs", log=lambda *a: None)
    with tempfile.TemporaryDirectory(prefix="kill-training-") as tmp:
        work = Path(tmp)
        docs = work / "kb"
        shutil.copytree(ROOT / "knowledge" / "docs", docs)
        ingest.index_paths(store.connect(work / "bot.db"), [docs], docs, progress=False)
        served = generation.load("tiny", cache_dir=cache, adapters_dir=work / "adapters", trainable=False)
        t0 = time.monotonic()
        records = run_kills(work, cache, args.kills, args.seed, args.steps, served)
    bad = [r["kill"] for r in records if problems(r)]
    print(json.dumps({"kills": len(records), "seconds": round(time.monotonic() - t0, 1),
                      "points": [r["killed_at"] for r in records], "with_problems": bad,
                      "problems": {r["kill"]: problems(r) for r in records if problems(r)}}, ensure_ascii=False))
    return 1 if bad else 0


def problems(r: dict) -> list[str]:
    """What is wrong after one kill and its recovery (empty: all as it should be)."""
    out = []
    if r["exit"] != -signal.SIGKILL:
        out.append(f"the run was not killed (exit {r['exit']})")
    if r["state_after"] != "failed" or not r["finished_at_set"]:
        out.append(f"job #{r['job']} is {r['state_after']} after recovery, not failed")
    if r["tmp_after"]:
        out.append(f"temporary folders left: {r['tmp_after']}")
    if r["gpu_lock_held_after"]:
        out.append("the GPU lock is still held")
    for when, pointer, svc in (("at the kill", r["pointer_at_kill"], r["in_service_at_kill"]),
                               ("after recovery", r["pointer_after"], r["in_service"])):
        if pointer is not None and (svc["complete"] is not True or svc["verdict"] != "promoted" or not svc["metrics"]):
            out.append(f"{when} the pointer names {pointer}, which is not a complete evaluated adapter: {svc}")
    for v, info in r["versions_after"].items():
        if info["complete"] is not True or not info["verdict"] or not info["metrics"]:
            out.append(f"version folder {v} is not complete: {info}")
    moved = r["point"] in ("after-pointer", "after-trained")
    if not moved and r["point"] != "time" and r["pointer_after"] != r["pointer_before"]:
        out.append(f"the pointer moved from {r['pointer_before']} to {r['pointer_after']} though the kill came "
                   "before the promotion")
    if moved and r["pointer_after"] != r["version"]:
        out.append(f"the kill came after the promotion, but the pointer names {r['pointer_after']}, "
                   f"not {r['version']}")
    if not r["promotion_recorded"]:
        out.append(f"{r['pointer_after']} is in service with no promotion on record: rollback cannot leave it")
    said = r["outbox_last"] or ""
    if "failed" not in said or ("unchanged" in said) == (r["pointer_after"] != r["pointer_before"]):
        out.append(f"the channel was told {said!r}")
    if "served" in r and (r["served"]["pointer_error"] or r["served"]["active"] != r["pointer_after"]):
        out.append(f"the serving model does not serve the pointer's version: {r['served']}")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
