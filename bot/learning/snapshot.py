"""Accepted feedback frozen into a training set: examples, held-out split, negatives and a data hash.

What becomes an example (people who opted out contribute nothing, and
every text field, question, target, passages and rejected answer, is
scrubbed by `privacy.scrub` and has its control tokens defused by
`prompts.quoted` before it is written anywhere):

- an accepted correction: the question, the passages the asker saw (stored
  with the answer, since the index changes) and the correction as the
  assistant turn, built by `prompts.training_messages`, the function that
  builds the serving prompt;
- an upvoted answer with no accepted correction and no downvote: the answer
  as given (model answers only, not retrieval-only fallbacks);
- a downvoted answer with no accepted correction: a negative, written to
  negatives.jsonl for a preference objective (KTO/DPO) but not trained on,
  since the trainer is supervised only.

Examples already learned by a promoted adapter are replayed (always in the
train part), so continuing from that adapter does not forget them. The
held-out part is every 5th new upvoted answer in hash order (when there are
at least 5): never something the adapter in service has seen, and exactly
the behaviour a candidate must keep. Corrections are not held out: they are
the scarce, reviewed signal the job exists to learn, and holding one out
would keep an admin-approved fix from the model for a cycle
(`heldout_kinds` widens this). One prompt with several targets keeps the
latest correction (corrections beat upvotes). The data hash is sha256 over
canonical JSON of the examples' content and split, independent of ids and
of the order in which feedback arrived.

Given the serving tokenizer (`build(..., tokenizer=gen.tokenizer)`, as
`retrain` does), the builder checks every example at token-id level
(`control_tokens.assert_clean`): no special or added token id inside any
message's text, only the chat template's own. A snapshot that fails it
raises ControlTokenError and nothing is trained.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bot.answering import control_tokens, prompts
from bot import store
from bot.learning.privacy import scrub

HELDOUT_EVERY = 5  # every 5th new example of a held-out kind, in hash order, is held out ...
HELDOUT_MIN = 5    # ... when there are at least this many of them
HELDOUT_KINDS = ("positive",)


def _canonical(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _sha(obj) -> str:
    return hashlib.sha256(_canonical(obj).encode("utf-8")).hexdigest()


@dataclass
class Snapshot:
    train: list[dict] = field(default_factory=list)
    heldout: list[dict] = field(default_factory=list)
    negatives: list[dict] = field(default_factory=list)
    data_hash: str = ""
    new: int = 0  # examples not yet learned by a promoted adapter (train + held-out)
    token_check: dict = field(default_factory=dict)  # control_tokens.scan's report, when a tokenizer was given

    @property
    def counts(self) -> dict:
        return {"train": len(self.train), "heldout": len(self.heldout), "negatives": len(self.negatives),
                "new": self.new, "replayed": sum(not e["new"] for e in self.train)}

    def examples(self, part: str = "train") -> list[list[dict]]:
        """The chat messages of one part, ready for `training.train`."""
        return [e["messages"] for e in getattr(self, part)]

    def learned_ids(self) -> tuple[list[int], list[str]]:
        """Correction ids and upvoted answer ids that a promotion of this training run learns."""
        new = [e for e in self.train if e["new"]]
        return ([e["correction_id"] for e in new if e["kind"] == "correction"],
                [e["answer_id"] for e in new if e["kind"] == "positive"])

    def write(self, folder: Path) -> dict:
        """train.jsonl, heldout.jsonl, negatives.jsonl into `folder`; returns their names and line counts."""
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for part in ("train", "heldout", "negatives"):
            rows = getattr(self, part)
            with open(folder / f"{part}.jsonl", "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            files[f"{part}.jsonl"] = len(rows)
        return files


def clean(text: str) -> str:
    """Text as a snapshot may write it: personal data scrubbed, control tokens defused."""
    return prompts.quoted(scrub(text))


def shown_passages(row: dict) -> list[prompts.Passage]:
    """The passages an answer row's asker saw, cleaned as every snapshot text is (what a prompt may hold)."""
    return [prompts.Passage(clean(p.get("doc", "")), clean(p.get("heading", "")), clean(p.get("text", "")))
            for p in row["passages"]]


def _example(kind: str, row: dict, target: str, budgets: dict, **ids) -> dict:
    question, target = clean(row["question"]), clean(target)
    shown = shown_passages(row)
    content = {"kind": kind, "question": question, "target": target,
               "passages": [[p.doc, p.heading, p.text] for p in shown]}
    messages = prompts.training_messages(question, shown, target, **budgets)
    return {"hash": _sha(content), "prompt_hash": _sha(content["passages"] + [question]), "kind": kind,
            "question": question, "target": target, "messages": messages, **ids}


def build(db, *, count: Callable[[str], int] = len, context_budget: int = 10**9,
          heldout_every: int = HELDOUT_EVERY, heldout_min: int = HELDOUT_MIN,
          heldout_kinds: tuple[str, ...] = HELDOUT_KINDS, tokenizer=None) -> Snapshot:
    """The current training set from the database.

    `count` and `context_budget` must be the serving ones (the tokenizer's
    count and the preset's budget) for the messages to match serving; the
    passages stored with an answer already fit that budget, so the defaults
    keep them all and give the same messages. The data hash does not depend
    on them. `tokenizer`: check every example against it (see above)."""
    budgets = {"count": count, "context_budget": context_budget}
    excluded = store.opted_out(db)
    chosen: dict[str, dict] = {}  # prompt hash -> example; later corrections replace earlier ones
    negatives: dict[str, dict] = {}
    when: dict[str, float] = {}  # example hash -> time of its correction
    for row in store.feedback_answers(db):
        if (row["platform"], row["user"]) in excluded:
            continue
        fixes = [c for c in row["corrections"] if (c["platform"], c["user"]) not in excluded]
        votes = [v["value"] for v in row["votes"] if (v["platform"], v["user"]) not in excluded]
        if fixes:
            c = fixes[-1]
            ex = _example("correction", row, c["text"], budgets, correction_id=c["id"], answer_id=row["id"],
                          new=c["used_in"] is None)
            if -1 in votes:  # the answer it replaces, for a preference objective later
                ex["rejected"] = clean(row["answer"])
            held = chosen.get(ex["prompt_hash"])
            if held is None or held["kind"] != "correction" or when[held["hash"]] <= c["created_at"]:
                chosen[ex["prompt_hash"]], when[ex["hash"]] = ex, c["created_at"]
        elif votes and -1 not in votes and row["mode"] == "llm":
            ex = _example("positive", row, row["answer"], budgets, answer_id=row["id"],
                          new=row.get("trained_in") is None)
            held = chosen.get(ex["prompt_hash"])
            if held is None or held["kind"] == "positive":
                chosen[ex["prompt_hash"]] = ex
        elif -1 in votes:
            ex = _example("negative", row, row["answer"], budgets, answer_id=row["id"], new=True)
            negatives[ex["prompt_hash"]] = ex
    for key in chosen:  # a prompt that got a fix or an upvote is not a negative any more
        negatives.pop(key, None)

    examples = sorted(chosen.values(), key=lambda e: e["hash"])
    fresh = [e for e in examples if e["new"]]
    candidates = [e for e in fresh if e["kind"] in heldout_kinds]
    held_hashes = set()
    if len(candidates) >= heldout_min:
        held_hashes = {e["hash"] for i, e in enumerate(candidates) if i % heldout_every == heldout_every - 1}
    snap = Snapshot(train=[e for e in examples if e["hash"] not in held_hashes],
                    heldout=[e for e in examples if e["hash"] in held_hashes],
                    negatives=sorted(negatives.values(), key=lambda e: e["hash"]), new=len(fresh))
    snap.data_hash = _sha({"train": [e["hash"] for e in snap.train], "heldout": [e["hash"] for e in snap.heldout]})
    if tokenizer is not None:
        parts = snap.train + snap.heldout + snap.negatives
        rejected = [[{"role": "assistant", "content": e["rejected"]}] for e in parts if "rejected" in e]
        report = control_tokens.assert_clean([e["messages"] for e in parts] + rejected, tokenizer)
        snap.token_check = {k: v for k, v in report.items() if k != "details"}
    return snap
