"""One retraining run: snapshot -> QLoRA adapter -> evaluation gate -> promotion, into an immutable version folder.

Everything is written into `adapters/.tmp-<version>` and moved to
`adapters/<version>` with one `os.replace` once complete, card included, so
a crash (or a SIGKILL) never leaves a half-written folder that looks like a
version; `jobs.recover` removes the leftovers. Training continues from the
adapter in service (its weights, its LoRA shape) when there is one, so the
new version is the old knowledge plus the new feedback; the snapshot replays
what the parent learned so it is not forgotten. The pointer moves (through
`registry.promote`) only on a "promoted" verdict, and only then is the
feedback marked as learned.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from bot.learning import evaluation, fitting, forgetting, registry, snapshot
from bot.llm import hotswap
from bot.answering import prompts
from bot import store

VERSION_RE = re.compile(r"^(?:\.tmp-)?v(\d{4,})$")
NEGATIVES_NOTE = ("downvoted answers without a correction, kept for a preference objective (KTO/DPO); "
                  "not trained on: the trainer is supervised only")


class Cancelled(Exception):
    """The job was asked to stop; nothing was promoted."""


def reserve_version(adapters_dir: Path) -> tuple[str, Path]:
    """The next free `vNNNN` and its temporary folder, created here so that two runs never pick the same."""
    adapters_dir.mkdir(parents=True, exist_ok=True)
    while True:
        taken = [int(m.group(1)) for p in adapters_dir.iterdir() if (m := VERSION_RE.match(p.name))]
        version = f"v{max(taken, default=0) + 1:04d}"
        tmp = adapters_dir / f".tmp-{version}"
        try:
            tmp.mkdir()
            return version, tmp
        except FileExistsError:
            continue


def _parent(adapters_dir: Path, gen) -> tuple[str | None, str]:
    """The version in service to start from, or None (the base) with the reason."""
    current = hotswap.read_pointer(adapters_dir)
    if current is None:
        return None, "base model (no adapter in service)"
    if forgetting.restarting(adapters_dir):
        # Its weights hold forgotten data: start again from before it learned any.
        marked, current = current, forgetting.clean_ancestor(adapters_dir, current)
        if current is None:
            return None, f"base model ({marked} was trained on forgotten data, with no clean ancestor)"
        return current, f"{current} (the newest clean ancestor of {marked}, which was trained on forgotten data)"
    try:
        hotswap.check_name(current)
        hotswap.check_folder(adapters_dir / current)
    except hotswap.AdapterError as e:
        return None, f"base model (the adapter in service cannot be read: {e})"
    card = registry.card(adapters_dir, current)
    base = card.get("base_model", {})
    if base and (base.get("id"), base.get("revision")) != (gen.model_id, gen.revision):
        return None, f"base model ({current} was trained on {base.get('id')}@{base.get('revision')})"
    return current, f"{current} (the adapter in service)"


def _summary(metrics: dict) -> dict:
    return {name: {who: {k: v for k, v in m.items() if k not in ("rows", "fit")} for who, m in pair.items()}
            for name, pair in metrics.items()}


def _fit_training(db, snap, gen, budget: int) -> fitting.Fit:
    """Size the snapshot's training examples to the model's context in place (bot/learning/fitting.py).

    A skipped example leaves the snapshot altogether: it is not trained on, not
    written to train.jsonl and not marked learned, so the card never claims it."""
    def passages_of(example: dict) -> list[prompts.Passage]:
        # Cleaned like the snapshot's own (scrubbed, defused): a trimmed prompt holds nothing the untrimmed could not.
        return snapshot.shown_passages(store.answer(db, example["answer_id"]) or {"passages": []})

    def length(messages: list[dict]) -> int:
        from bot.llm import training

        return len(training.encode_example(gen.tokenizer, messages, 10**9)[0])

    kept, fit = fitting.fit_training(snap.train, passages_of, length, gen.count_tokens, gen.context_length, budget)
    snap.new -= sum(e["new"] for e in snap.train) - sum(e["new"] for e in kept)
    snap.train = kept
    return fit


def run(db, job_id: int | None, *, preset: str, adapters_dir: Path, cache_dir: Path, searcher=None,
        golden: Path | None = None, quantize: bool | None = None, steps: int | None = None,
        learning_rate: float | None = None, batch_size: int | None = None, k: int = 5,
        min_gain: float | None = None, f1_tol: float | None = None, nll_tol: float | None = None,
        progress: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """Train, evaluate and maybe promote; `{"job", "version", "verdict", "reasons", "metrics", "counts", ...}`.

    verdict: "promoted" | "rejected" | "skipped" (nothing to learn). `steps` and the gate's
    numbers left None come from the preset (`[training]`, `[gate]`); given `steps` are run
    exactly, the preset's recipe scales with the data and stops early. `progress` gets
    `{"state": ...}` at each stage and `{"step", "steps", "loss"}` per step; `should_stop`
    is polled at every training step and after evaluation, and raises Cancelled (nothing
    written, pointer untouched) when it says so."""
    from bot.llm import generation, presets, training
    from bot.knowledge import retrieval

    say = progress or (lambda event: None)
    stop = should_stop or (lambda: False)
    adapters_dir = Path(adapters_dir)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    recipe = presets.load(preset)
    budget = recipe.generation.context_budget_tokens
    gen = generation.load(preset, cache_dir=Path(cache_dir), adapters_dir=adapters_dir, quantize=quantize,
                          trainable=True)
    gen.adapters_dir = None  # evaluation picks adapters itself; the serving pointer must not switch them
    timings["load_s"] = time.perf_counter() - t0

    # With the tokenizer, the snapshot checks at token-id level that no control token sits inside any text.
    snap = snapshot.build(db, count=gen.count_tokens, context_budget=budget, tokenizer=gen.tokenizer)
    if forgetting.restarting(adapters_dir):
        # The adapter in service is being replaced from a clean ancestor: everything is to learn again.
        for e in snap.train + snap.heldout:
            e["new"] = True
        snap.new = len(snap.train) + len(snap.heldout)
    fits = {"training": _fit_training(db, snap, gen, budget)}
    if not snap.train or not any(e["new"] for e in snap.train + snap.heldout):
        why = ("no accepted feedback to learn from" if not snap.train else
               "no new accepted feedback since the last promoted adapter learned it all")
        if fits["training"].skipped:
            why += f" ({fits['training'].skipped} example(s) too long for the model's context: see the job's fit notes)"
        return {"job": job_id, "version": None, "verdict": "skipped", "counts": snap.counts,
                "data_hash": snap.data_hash, "reasons": [why], "fit": {k: f.as_dict() for k, f in fits.items()}}
    gate = {"min_gain": recipe.gate.min_gain if min_gain is None else min_gain,
            "f1_tol": recipe.gate.f1_tolerance if f1_tol is None else f1_tol,
            "nll_tol": recipe.gate.nll_tolerance if nll_tol is None else nll_tol}
    parent, init = _parent(adapters_dir, gen)
    version, tmp = reserve_version(adapters_dir)
    try:
        exact = bool(steps)
        steps = steps or recipe.training.steps_for(len(snap.train))
        lr = learning_rate or recipe.training.learning_rate
        batch = batch_size or recipe.training.batch_size
        say({"state": "training", "version": version, "steps": steps, "parent": parent,
             "data_hash": snap.data_hash, "counts": snap.counts})
        t1 = time.perf_counter()
        if parent:
            from peft import PeftModel

            model = PeftModel.from_pretrained(gen.base, str(adapters_dir / parent), adapter_name="default",
                                              is_trainable=True)
        else:
            model = training.add_lora(gen.base, recipe.lora)
        lora = model.peft_config["default"]
        stopped = []

        def poll() -> bool:
            if not stopped and stop():
                stopped.append(True)
            return bool(stopped)

        result = training.train(model, gen.tokenizer, snap.examples("train"), steps=steps, learning_rate=lr,
                                batch_size=batch, seed=recipe.training.seed,
                                max_tokens=gen.context_length, should_stop=poll,
                                target_loss=0.0 if exact else recipe.training.target_loss,
                                log=lambda step, loss: say({"step": step, "steps": steps, "loss": loss}))
        if stopped:
            raise Cancelled(f"stopped at step {result.steps} of {steps}")
        training.save_adapter(model, tmp)
        files = snap.write(tmp)
        gen.base = gen.model = model.unload()  # LoRA layers out: the base serves both adapters below
        timings["train_s"] = time.perf_counter() - t1

        say({"state": "evaluating", "version": version})
        t2 = time.perf_counter()
        gen.load_adapter(version, tmp)
        if parent:
            gen.load_adapter(parent, adapters_dir / parent)
        if searcher is None:
            searcher = retrieval.Searcher(db)
        # (a) what this run is for: the new examples; the replayed ones (what the adapter in
        # service already learned) are a guard, like the held-out feedback and the golden set.
        sets = {"learned": evaluation.items_of([e for e in snap.train if e["new"]]),
                "replayed": evaluation.items_of([e for e in snap.train if not e["new"]]),
                "heldout": evaluation.items_of(snap.heldout),
                "golden": evaluation.load_items(golden) if golden else []}
        metrics = evaluation.compare(gen, searcher, sets, version, parent, k=k, context_budget=budget,
                                     max_new_tokens=recipe.generation.max_new_tokens)
        verdict, reasons = evaluation.gate(metrics, **gate)
        fits["evaluation"] = fitting.Fit()
        for pair in metrics.values():  # both adapters see the same prompts: count the candidate's once
            fits["evaluation"].merge(fitting.Fit(**pair["candidate"].get("fit", {})))
        if golden is not None and not sets["golden"]:
            # A gate that cannot check regressions does not promote on its own.
            verdict = "rejected"
            reasons.append(f"no golden questions at {golden}: regressions cannot be checked, "
                           "so nothing is promoted automatically (promote by hand after review)")
        timings["eval_s"] = time.perf_counter() - t2
        if poll():
            raise Cancelled("stopped during evaluation")

        (tmp / "evaluation.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=1), encoding="utf-8")
        timings["total_s"] = time.perf_counter() - t0
        card = {
            "version": version, "job": job_id, "created_at": time.time(), "parent": parent, "init": init,
            "preset": recipe.name, "base_model": {"id": gen.model_id, "revision": gen.revision,
                                                  "quantized_4bit": gen.quantized},
            "data": {"hash": snap.data_hash, **snap.counts, "files": files, "negatives_note": NEGATIVES_NOTE,
                     "control_tokens": snap.token_check},
            "recipe": {"lora": {"r": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout,
                                "target_modules": sorted(lora.target_modules)},
                       **asdict(recipe.training), "steps": steps, "learning_rate": lr, "batch_size": batch,
                       "steps_done": result.steps, "tokens": result.tokens,
                       "stopped_early": result.stopped_early},
            "loss_curve": [round(x, 4) for x in result.losses],
            "metrics": _summary(metrics),
            "gate": {"min_gain": gate["min_gain"], "f1_tolerance": gate["f1_tol"], "nll_tolerance": gate["nll_tol"]},
            "decision": evaluation.decide(metrics, **gate),  # per set: which metric decided, the bar (the chart)
            "fit": {where: f.as_dict() for where, f in fits.items()},
            "verdict": verdict, "reasons": reasons,
            "timings": {key: round(v, 2) for key, v in timings.items()},
        }
        (tmp / "card.json").write_text(json.dumps(card, ensure_ascii=False, indent=1), encoding="utf-8")
        _fsync_dir(tmp)
        os.replace(tmp, adapters_dir / version)  # the version exists from here on, complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verdict == "promoted":
        registry.promote(db, adapters_dir, version, by=f"job:{job_id}" if job_id is not None else "retrain",
                         base=registry.serving_base(preset, cache_dir))
        store.mark_trained(db, version, *snap.learned_ids())
    return {"job": job_id, "version": version, "verdict": verdict, "reasons": reasons, "parent": parent,
            "metrics": card["metrics"], "counts": snap.counts, "data_hash": snap.data_hash, "fit": card["fit"],
            "loss": card["loss_curve"][-1] if card["loss_curve"] else None, "seconds": round(timings["total_s"], 2)}


def _fsync_dir(folder: Path) -> None:
    """Flush the folder's files to disk before the rename makes them a version."""
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
