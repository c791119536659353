"""Sizing a job's items to the model's context: trim what does not fit, skip what cannot, and say which.

One long item must never fail a whole job: an accepted 343-character
correction on the `tiny` preset (2,048 tokens of context) used to fail every
training job, because evaluation asked generation for room to say the whole
reference and generation refused. So each item is sized before use:

- a training example longer than the context loses passages first (the
  lowest-ranked go, the top one is cut: the same rule as serving), keeping
  the question and the target whole; one whose question and target alone do
  not fit is skipped, since a cut target would teach the model to stop
  mid-sentence, and a cut question teaches an answer to a question nobody asked;
- an evaluation question keeps the serving prompt (what a user would see),
  and the new tokens are capped to what the context has left. A reference
  longer than that is scored on its first tokens, as many as the model had
  room to say, for both adapters alike (F1 and NLL), so neither is charged
  for words it could not emit. Only a question whose prompt leaves no room
  for even the preset's usual answer loses passages, and one that still
  leaves none is skipped.

Every trim, cut and skip is counted with its reason (`Fit`), for the job's
card and its verdict message.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from bot.answering import prompts

MAX_NOTES = 20  # reasons kept per job: enough to find the items, bounded for a card and a chat message


@dataclass
class Fit:
    """What sizing did to one job's items: counts and a reason for each."""

    trimmed: int = 0
    cut: int = 0
    skipped: int = 0
    notes: list[str] = field(default_factory=list)

    def note(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)

    def merge(self, other: "Fit") -> "Fit":
        for kind in ("trimmed", "cut", "skipped"):
            setattr(self, kind, getattr(self, kind) + getattr(other, kind))
        self.notes += other.notes[:max(0, MAX_NOTES - len(self.notes))]
        return self

    def as_dict(self) -> dict:
        return {"trimmed": self.trimmed, "cut": self.cut, "skipped": self.skipped, "notes": self.notes}

    def __bool__(self) -> bool:
        return bool(self.trimmed or self.cut or self.skipped)


def summary(fits: dict) -> str:
    """`training: 1 skipped, 2 trimmed; evaluation: 1 reference cut` from a card's `fit` section ('' if nothing)."""
    words = {"trimmed": "trimmed", "cut": "reference(s) scored on the part that fits", "skipped": "skipped"}
    parts = []
    for where, f in fits.items():
        said = [f"{f[k]} {w}" for k, w in words.items() if f.get(k)]
        if said:
            parts.append(f"{where}: {', '.join(said)}")
    return "; ".join(parts)


def _short(text: str, n: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "…"


def fit_training(examples: Sequence[dict], passages_of: Callable[[dict], list[prompts.Passage]],
                 length: Callable[[list[dict]], int], count: Callable[[str], int],
                 context_length: int, context_budget: int) -> tuple[list[dict], Fit]:
    """The examples that fit `context_length` tokens (trimmed copies where needed) and what was done.

    `length(messages)` is the example's token count as the trainer encodes it;
    `passages_of(example)` the passages its prompt was built from."""
    fit, kept = Fit(), []
    for ex in examples:
        need = length(ex["messages"])
        if need <= context_length:
            kept.append(ex)
            continue
        shown = passages_of(ex)
        budget = min(context_budget, sum(count(p.text) + 16 for p in shown))
        messages = ex["messages"]
        while need > context_length and budget > 0:
            # Shrink by the overflow (at least 1/8, so the loop ends quickly); fit_passages keeps
            # the best passages and cuts the top one, and below 33 tokens shows none.
            budget = min(budget - (need - context_length), int(budget * 7 / 8))
            messages = prompts.training_messages(ex["question"], shown, ex["target"], count=count,
                                                 context_budget=max(budget, 0))
            need = length(messages)
        what = f"{ex['kind']} to {_short(ex['question'])!r}"
        if need > context_length:
            fit.note("skipped", f"{what}: question and answer alone are {need} tokens, "
                                f"over the model's context of {context_length}")
            continue
        fit.note("trimmed", f"{what}: passages cut to fit the context of {context_length} tokens")
        kept.append({**ex, "messages": messages, "trimmed": True})
    return kept, fit


@dataclass
class Plan:
    """How one evaluation question is asked and scored."""

    messages: list[dict]
    shown: list[prompts.Passage]
    limit: int           # new tokens asked of generation
    reference: str       # what the answer is scored against (the reference, or its first `limit` tokens)
    cut: bool = False


def plan_question(question: str, reference: str, shown: list[prompts.Passage], *, build, prompt_tokens,
                  count, encode, decode, context_length: int, budget: int, want: int, usual: int,
                  fit: Fit) -> Plan | None:
    """A `Plan` for one evaluation question that never exceeds the context, or None (skipped, noted in `fit`).

    `want` is the new tokens wished for (the reference's length and a margin), `usual` the
    preset's answer length: passages are trimmed only to leave that much room."""
    messages = build(question, shown, budget)
    room = context_length - prompt_tokens(messages)
    if room < usual:
        while room < usual and budget > 0:
            budget = min(budget - (usual - room), int(budget * 7 / 8))
            shown = prompts.fit_passages(shown, max(budget, 0), count)
            messages = build(question, shown, max(budget, 0))
            room = context_length - prompt_tokens(messages)
        if room < 1:
            fit.note("skipped", f"question {_short(question)!r}: its prompt alone is "
                                f"{context_length - room} tokens, over the model's context of {context_length}")
            return None
        fit.note("trimmed", f"question {_short(question)!r}: passages cut to leave room for an answer")
    if want <= room:
        return Plan(messages, shown, want, reference)
    ids = encode(reference)[:room]
    fit.note("cut", f"question {_short(question)!r}: reference of {len(encode(reference))} tokens scored on "
                    f"its first {room}, all the context leaves for an answer")
    return Plan(messages, shown, room, decode(ids), cut=True)
