"""The lead of a retrieval-only answer: the one to three sentences of the passages that best answer.

Without a model, the answer is the passages themselves; five of them cut at
300 characters hid the sentence that answers past the cut. Instead each
passage is split into sentences, each sentence is scored by the share of the
question's IDF-weighted terms it contains (the same terms and weights as
abstention.py), and the best one, plus up to two more that add terms the
first lacks, are quoted with their passage number, within EXTRACT_CHARS.
A sentence longer than the budget is cut to its best clauses.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from bot.answering.abstention import Judge, Text, Term, covered

EXTRACT_CHARS = 200  # the whole lead, quotes and [n] excluded: about two lines in a chat client
MAX_SENTENCES = 3
# A sentence from a better-ranked passage wins a tie: retrieval saw the whole passage, we see one sentence.
RANK_BONUS = 0.03
FOLLOW_WEIGHT = 0.5
HEADING_LEVELS = 2  # a compact source shows the last two levels of its heading path
HEADING_LEVEL_CHARS = 24

# A sentence ends at Chinese or English end punctuation (with any closing quote or bracket after it)
# or at a line break; an English full stop counts only before a space, so 3.8 stays whole
# (not after a lone capital: "J.P. Morgan" is a name).
_SENTENCE_RE = re.compile(r"[^。！？!?；;\n]*?(?:[。！？!?；;]+[”’」』）)\]]*|(?<!\b[A-Z])\.(?=\s)|\n|$)")
_CLAUSE_RE = re.compile(r"[^，、：,:]*[，、：,:]?")
# Markdown that frames a line rather than says anything: bullets, numbering, heading marks, a quote.
_LINE_MARK_RE = re.compile(r"^\s*(?:[-*+>]\s+|\d{1,3}[.)、]\s*|#{1,6}\s+)+")
_HEADING_SPLIT_RE = re.compile(r"\s*(?:>|›)\s*")


@dataclass(frozen=True)
class Sentence:
    n: int  # the passage's number as shown, from 1
    text: str
    score: float
    at: int = 0  # the sentence's place in its passage


def sentences(text: str) -> list[str]:
    """The sentences of a passage, whitespace collapsed, line marks dropped, empty ones left out."""
    out: list[str] = []
    label = ""
    for m in _SENTENCE_RE.finditer(text or ""):
        # Bold marks are dropped: the extract is quoted in every client, and `**` is not bold in all.
        s = " ".join(_LINE_MARK_RE.sub("", m.group()).replace("**", "").split())
        if not (s and any(c.isalnum() for c in s)):
            continue
        s, label = label + s, ""
        if s.endswith(("：", ":")):
            # "**多模态融合**：" on its own line labels what follows: one sentence with it.
            label = s
            continue
        out.append(s)
    if label:
        out.append(label)
    return out


def _clip(sentence: str, weighted: list[tuple[Term, float]], limit: int) -> str:
    """A sentence longer than `limit`: the run of clauses, at most `limit` long, that covers most."""
    if len(sentence) <= limit:
        return sentence
    clauses = [c for c in _CLAUSE_RE.findall(sentence) if c]
    if len(clauses) < 2:
        return sentence[: limit - 1] + "…"
    best, best_score = "", -1.0
    for i in range(len(clauses)):
        run = ""
        for c in clauses[i:]:
            if len(run) + len(c) > limit - 1:
                break
            run += c
        if not run:
            run = clauses[i][: limit - 1]
        t = Text(run)
        score = sum(w for term, w in weighted if covered(term, t))
        if score > best_score:
            best, best_score = run, score
    return best.rstrip("，、：,: ") + "…"


def select(question: str, passages: list, judge: Judge, limit: int = EXTRACT_CHARS) -> list[Sentence]:
    """Up to MAX_SENTENCES sentences from `passages` (each with `.text`), best first, within `limit`.

    The first is the best-scoring sentence; each further one must add a question term the chosen
    ones lack, so the lead does not say the same thing twice."""
    weighted = judge.weighted_terms(question)
    total = sum(w for _, w in weighted) or 1.0
    scored: list[tuple[float, int, int, str, set]] = []
    for n, p in enumerate(passages, 1):
        before = 0.0
        for at, s in enumerate(sentences(p.text)):
            s = _clip(s, weighted, limit)
            t = Text(s)
            have = {i for i, (term, _) in enumerate(weighted) if covered(term, t)}
            own = sum(weighted[i][1] for i in have) / total
            # The sentence after one that names the question's topic is often the answer
            # ("数据编码：…以适应输入要求。可以使用独热编码…"): it earns part of its predecessor's score.
            scored.append((own + FOLLOW_WEIGHT * before + RANK_BONUS / n, n, at, s, have))
            before = own
    if not scored:
        return []
    scored.sort(key=lambda x: -x[0])
    chosen: list[Sentence] = []
    have: set = set()
    used = 0
    for score, n, at, s, terms in scored:
        if len(chosen) == MAX_SENTENCES:
            break
        if used + len(s) > limit:
            continue
        # A neighbour of a chosen sentence reads as its context: the one after it always (the answer
        # often follows the sentence that names the topic), the one before it if it is on the question.
        beside = any(c.n == n and (c.at + 1 == at or (c.at - 1 == at and terms)) for c in chosen)
        if chosen and not (terms - have or beside):
            continue  # says nothing the chosen ones do not, and is not beside one of them
        chosen.append(Sentence(n, s, score, at))
        have |= terms
        used += len(s)
    # Read in the passages' order, the best passage first: a continuation after what it continues.
    first = {}
    for i, c in enumerate(chosen):
        first.setdefault(c.n, i)
    return sorted(chosen, key=lambda c: (first[c.n], c.at))


def lead(chosen: list[Sentence]) -> str:
    """The extract as shown: each sentence quoted, with its passage number."""
    return "\n".join(f"「{s.text}」[{s.n}]" for s in chosen)


def short_heading(heading: str, levels: int = HEADING_LEVELS, chars: int = HEADING_LEVEL_CHARS) -> str:
    """The last `levels` levels of a heading path, each cut to `chars` characters."""
    parts = [p.strip() for p in _HEADING_SPLIT_RE.split(heading or "") if p.strip()]
    return " › ".join(p if len(p) <= chars else p[: chars - 1] + "…" for p in parts[-levels:])
