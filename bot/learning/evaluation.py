"""The promotion gate: candidate against the adapter in service, through the serving pipeline.

Each question is answered as a user's would be: retrieved (the real index),
fitted to the context budget, prompted by `prompts.build_messages`, generated
greedily, post-processed by `answering.postprocess`. Answers are not
recorded: evaluation must not become feedback. Two metrics per set:

- character F1 between the answer and the reference, citation markers and
  whitespace removed (character level suits Chinese, which has no spaces);
- the mean per-token negative log-likelihood of the reference given the same
  prompt (teacher-forced). F1 moves only when a greedy token flips; NLL moves
  with every change of the distribution, so it catches a regression that
  has not reached the greedy answer yet, even on a tiny model.

The gate (`gate`): on the new corrections the candidate learned from it must
gain at least `min_gain` F1 or lose `min_gain` nats, and on the guards it may
lose at most `f1_tol` F1 and gain at most `nll_tol` nats. The guards are the
examples the adapter in service already learned (replayed into this run: a
candidate that unlearns them, as junk trained over good answers does, is
worse), the held-out feedback, and the golden set. The tolerances are plain numbers, not noise-adjusted: a
rejected candidate stays on disk with its card, and an admin who judges the
drop to be noise promotes it by hand; the reverse mistake reaches users.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from bot.answering import pipeline as answering, prompts
from bot.learning import fitting
from bot.llm import training

_MARKS = re.compile(r"\[\d{1,2}\]|\s+")


@dataclass(frozen=True)
class Item:
    question: str
    reference: str


def normalize(text: str) -> str:
    return _MARKS.sub("", text or "")


def char_f1(prediction: str, reference: str) -> float:
    """F1 over the multiset of characters, after dropping [n] markers and whitespace."""
    p, r = Counter(normalize(prediction)), Counter(normalize(reference))
    if not p or not r:
        return float(p == r)
    same = sum((p & r).values())
    if not same:
        return 0.0
    precision, recall = same / sum(p.values()), same / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def load_items(path: Path) -> list[Item]:
    """Questions with a reference `answer` from a JSON-lines file; [] when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("question") and row.get("answer"):
                items.append(Item(row["question"], row["answer"]))
    return items


def items_of(examples: list[dict]) -> list[Item]:
    """Snapshot examples as evaluation items (their scrubbed question and target)."""
    return [Item(e["question"], e["target"]) for e in examples]


def _nll(gen, messages: list[dict], reference: str) -> float:
    import torch

    ids, labels = training.encode_example(gen.tokenizer, messages + [{"role": "assistant", "content": reference}],
                                          gen.context_length)
    device = gen.device
    with gen.lock:
        # The base model is the PeftModel with adapters switched off, as when it serves.
        off = gen.model.disable_adapter() if gen.model is not gen.base and gen.active_adapter is None else nullcontext()
        with torch.inference_mode(), off:
            out = gen.model(input_ids=torch.tensor([ids], device=device),
                            labels=torch.tensor([labels], device=device))
    return float(out.loss)


def _plans(gen, searcher, items: list[Item], k: int, context_budget: int, max_new_tokens: int | None,
           fit: fitting.Fit) -> list[tuple[Item, fitting.Plan]]:
    """Each question's prompt, token limit and scored reference, sized to the context (bot/learning/fitting.py)."""
    usual = max_new_tokens or gen.preset.generation.max_new_tokens

    def build(question, shown, budget):
        return prompts.build_messages(question, shown, count=gen.count_tokens, context_budget=budget)

    def encode(text):
        return gen.tokenizer(text, add_special_tokens=False)["input_ids"]

    out = []
    for item in items:
        shown = prompts.fit_passages(searcher.search(item.question, k), context_budget, gen.count_tokens)
        # Long enough to say the whole reference: a cut-off answer would score the limit, not the model.
        want = max(usual, gen.count_tokens(item.reference) + 8)
        plan = fitting.plan_question(
            item.question, item.reference, shown, build=build, count=gen.count_tokens,
            prompt_tokens=lambda m: gen.count_tokens(gen.render(m)), encode=encode,
            decode=lambda ids: gen.tokenizer.decode(ids, skip_special_tokens=True),
            context_length=gen.context_length, budget=context_budget, want=want, usual=min(usual, want), fit=fit)
        if plan is not None:
            out.append((item, plan))
    return out


def evaluate(gen, searcher, items: list[Item], *, k: int = 5, context_budget: int = 1536,
             max_new_tokens: int | None = None, batch: int = 8) -> dict:
    """`{"n", "f1", "nll", "rows": [{"question", "reference", "answer", "f1", "nll"}], "fit": {...}}`
    for the adapter active in `gen`; `fit` counts the questions trimmed, cut or skipped to fit the context."""
    fit = fitting.Fit()
    prepared = _plans(gen, searcher, items, k, context_budget, max_new_tokens, fit)
    if not prepared:
        return {"n": 0, "f1": None, "nll": None, "rows": [], "fit": fit.as_dict()}
    rows = []
    for start in range(0, len(prepared), batch):
        chunk = prepared[start:start + batch]
        outs = gen.generate_batch([(p.messages, p.limit, None) for _, p in chunk])
        for (item, plan), out in zip(chunk, outs):
            text, _, _ = answering.postprocess(out.text, plan.shown)
            row = {"question": item.question, "reference": item.reference, "answer": text,
                   "f1": round(char_f1(text, plan.reference), 4),
                   "nll": round(_nll(gen, plan.messages, plan.reference), 4)}
            if plan.cut:
                row["scored_reference"] = plan.reference
            rows.append(row)
    n = len(rows)
    return {"n": n, "f1": round(sum(r["f1"] for r in rows) / n, 4),
            "nll": round(sum(r["nll"] for r in rows) / n, 4), "rows": rows, "fit": fit.as_dict()}


def metric_parts(metrics: dict) -> list[str]:
    """`learned F1 0.06→0.84, NLL 4.10→0.90` for each set a card's (or a run's) metrics checked."""
    parts = []
    for name, pair in metrics.items():
        if not isinstance(pair, dict):  # a card written by hand, or by an older version
            continue
        cand, cur = pair.get("candidate", {}), pair.get("current", {})
        if cand.get("n"):
            parts.append(f"{name} F1 {cur.get('f1', 0):.2f}→{cand['f1']:.2f}, "
                         f"NLL {cur.get('nll', 0):.2f}→{cand['nll']:.2f}")
    return parts


def compare(gen, searcher, sets: dict[str, list[Item]], candidate: str, current: str | None, **kwargs) -> dict:
    """Both adapters (already loaded into `gen`; current None = the base model) on every set:
    `{set: {"candidate": {...}, "current": {...}}}`. Leaves the candidate active."""
    out: dict[str, dict] = {}
    for who, name in (("current", current), ("candidate", candidate)):
        gen.use_adapter(name)
        for set_name, items in sets.items():
            out.setdefault(set_name, {})[who] = evaluate(gen, searcher, items, **kwargs)
    return out


def decide(metrics: dict, *, min_gain: float, f1_tol: float, nll_tol: float, learned: str = "learned",
           guards: tuple[str, ...] = ("replayed", "heldout", "golden")) -> dict[str, dict]:
    """What the gate decided on each set, and on which metric: `{set: {"role", "outcome", "passed",
    "decided_by", "bar"}}`, written to the card for the adapter chart.

    outcome: "improves" | "no improvement" (the learned set), "holds" | "regresses" (a guard),
    "not checked" (no questions). decided_by: the metrics that settled it: the ones that met
    the bar when the learned set improves (either is enough), the ones past their tolerance
    when a guard regresses, and both for "no improvement" and "holds" (each had to fail, or
    hold). bar: the value each metric had to reach, F1 at least and NLL at most."""
    out: dict[str, dict] = {}
    for name in (learned, *guards):
        m = metrics.get(name) or {}
        cand, cur = m.get("candidate", {}), m.get("current", {})
        role = "learned" if name == learned else "guard"
        if not cand.get("n"):
            out[name] = {"role": role, "outcome": "not checked", "passed": None, "decided_by": [], "bar": {}}
            continue
        # Decided on the changes, as the reasons state them; `bar` is for reading (a value compared
        # with `bar` can round the other way at the boundary).
        if role == "learned":
            bar = {"f1": cur["f1"] + min_gain, "nll": cur["nll"] - min_gain}
            met = [k for k, gain in (("f1", cand["f1"] - cur["f1"]), ("nll", cur["nll"] - cand["nll"]))
                   if gain >= min_gain]
            passed, outcome, decided_by = bool(met), ("improves" if met else "no improvement"), met or ["f1", "nll"]
        else:
            bar = {"f1": cur["f1"] - f1_tol, "nll": cur["nll"] + nll_tol}
            past = [k for k, over in (("f1", cur["f1"] - cand["f1"] > f1_tol), ("nll", cand["nll"] - cur["nll"] > nll_tol))
                    if over]
            passed, outcome, decided_by = not past, ("regresses" if past else "holds"), past or ["f1", "nll"]
        out[name] = {"role": role, "outcome": outcome, "passed": passed, "decided_by": decided_by,
                     "bar": {k: round(v, 4) for k, v in bar.items()}}
    return out


def gate(metrics: dict, *, min_gain: float, f1_tol: float, nll_tol: float,
         learned: str = "learned", guards: tuple[str, ...] = ("replayed", "heldout", "golden")) -> tuple[str, list[str]]:
    """("promoted" | "rejected", reasons): the decision and every reason for it, in words for an admin
    (the per-set arithmetic is `decide`'s)."""
    sets = decide(metrics, min_gain=min_gain, f1_tol=f1_tol, nll_tol=nll_tol, learned=learned, guards=guards)
    if sets[learned]["outcome"] == "not checked":
        return "rejected", [f"nothing to check improvement on: the {learned} set is empty"]
    reasons: list[str] = []
    for name, d in sets.items():
        if d["outcome"] == "not checked":
            reasons.append(f"{name}: no questions, not checked")
            continue
        cand, cur = metrics[name]["candidate"], metrics[name]["current"]
        detail = f"F1 {cur['f1']:.3f} -> {cand['f1']:.3f}, NLL {cur['nll']:.3f} -> {cand['nll']:.3f}"
        if d["role"] == "learned":
            reasons.append(f"{name}: {d['outcome']} ({detail}; needed +{min_gain} F1 or -{min_gain} NLL)")
        elif d["passed"]:
            reasons.append(f"{name}: holds ({detail})")
        else:
            reasons.append(f"{name}: regresses ({detail}; allowed F1 -{f1_tol}, NLL +{nll_tol})")
    return ("promoted" if all(d["passed"] is not False for d in sets.values()) else "rejected"), reasons
