"""A small learned re-ranker over BM25's candidates, trained on the knowledge base itself.

BM25 sees a bag of words. Whether the question's words all occur in the
passage (coverage), close together (proximity, the longest shared run of
characters), in its heading rather than only its body (fields), and whether
the passage is a list of bullets, are what separate the right passage from a
near miss; a logistic regression weighs these features.

It is trained at `index` time, never on the evaluation sets, on questions
generated from the indexed passages' own sentences and headings: a few content
words of one sentence (what a person who read it would ask about), the same in
English through the corpus lexicon, and a heading's title; half of them are
also asked over the candidates without their answer, where every candidate is
wrong, which is what makes the score mean "this answers" rather than "this is
the best of five". So it fits a team's own documents as well as the bundled
ones. It is stored in the database as JSON (coefficients, not a pickle) and
loaded with the index; without one, the Searcher ranks by BM25 alone.

The score it gives, `probability`, is the model's estimate that a passage is
the one that answers: on a scale that is the same for every question, so a
threshold on it means the same thing whatever was asked.
"""
from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Sequence

import numpy as np

from bot.knowledge import crosslingual, textproc

RANKER_VERSION = 3  # bump when features() changes: a stored model of another version is ignored
SEED = 12
# The ranker re-orders BM25's top passages (at least this many): measured on dev, demo, golden and
# paraphrase.jsonl, re-ordering the top 10 or 30 lost more recall@5 than it gained at rank 1.
DEPTH = 5
QUESTIONS_PER_PASSAGE = 2
MAX_PASSAGES = 500  # questions come from at most this many passages (about 1,000 questions, seconds to train)
REGULARISATION = 1.0  # logistic regression C
# Share of generated questions also asked over the candidates without their answer. On the tuning
# sets 0.5 kept recall@1 and separated answered from unanswerable questions best short of losing
# recall (AUC of the top score 0.92 at 0, 0.96 at 0.5, 0.98 at 0.7 with recall@1 lost).
UNANSWERED = 0.5
FEATURES = (
    "bm25_rel", "bm25_log", "rank_rr", "own_share", "in_named_doc", "doc_named",
    "word_cover", "bigram_cover", "heading_cover", "longest_run", "proximity",
    "length_log", "bullet_share", "english",
    "word_cover_gap", "bigram_cover_gap", "longest_run_gap", "proximity_gap",
    "english_x_word_cover", "english_x_bm25_rel", "bm25_rel_log",
)
_SENTENCE_RE = re.compile(r"[^。！？；!?\n]+")
_NUMBERING_RE = re.compile(r"^(第[一二三四五六七八九十百零\d]+[章部分节]|[\dA-Z]+(\.\d+)*[.、:：]?)\s*[：:]?\s*")
_BULLET_RE = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_ZH_ENDINGS = ("是什么？", "有哪些？", "如何做？", "有什么作用？", "为什么重要？", "包括什么？")


def _run_length(question: str, text: str) -> int:
    """The longest run of question characters that occurs verbatim in the passage."""
    best, start, n = 0, 0, len(question)
    while start + best < n:
        length = best + 1
        if question[start:start + length] in text:
            while start + length < n and question[start:start + length + 1] in text:
                length += 1
            best = length
        start += 1
    return best


def _proximity(words: list[tuple[str, ...]], text: str, window: int) -> float:
    """The largest share of the question's words found within one window of the passage.

    Each word is a tuple of the forms that count for it (an English word and its translations)."""
    if not words:
        return 0.0
    events = []
    for i, forms in enumerate(words):
        for w in forms:
            j = text.find(w)
            while j >= 0:
                events.append((j, i))
                j = text.find(w, j + 1)
    events.sort()
    best, counts, lo = 0, {}, 0
    for pos, i in events:
        counts[i] = counts.get(i, 0) + 1
        while pos - events[lo][0] > window:
            j = events[lo][1]
            counts[j] -= 1
            if not counts[j]:
                del counts[j]
            lo += 1
        best = max(best, len(counts))
    return best / len(words)


def features(lex, question: str, detail: dict, candidates: list[int], rows: list[dict],
             heading_tokens: Sequence[set[str]]) -> np.ndarray:
    """One row of FEATURES per candidate passage (indexes into `rows`).

    Coverage counts each query term by its weight times its IDF, so a passage
    that has the rare words of the question beats one that has its common
    ones; the `_gap` features compare a passage with the best candidate, which
    is what tells the answer from its near misses whatever the question."""
    final, own, weights, named = detail["final"], detail["own"], detail["weights"], detail["named"]
    top = float(final[candidates[0]]) if candidates else 0.0
    english = float(textproc.is_mostly_english(question))
    n = max(lex.n, 1)
    idf = {t: w * math.log(1 + n / (1 + lex.df.get(t, 0))) for t, w in weights.items()}
    word_w = {t: w for t, w in idf.items() if not t.startswith("~")}
    bigram_w = {t: w for t, w in idf.items() if t.startswith("~")}
    total_word, total_bigram = sum(word_w.values()) or 1.0, sum(bigram_w.values()) or 1.0
    # Proximity and shared runs are measured on the text. An English question's
    # words count in English or through their translations (a team's English
    # passages and the bundled Chinese ones alike), so its coverage is of
    # those words, each met in either language.
    concepts: list[tuple[str, ...]] = []
    if english:
        probe = ""
        for stem in dict.fromkeys(textproc.english_words(detail["rest"])):
            forms = [stem, *(z for z, _ in sorted(crosslingual.translate(stem, lex.lexicon).items(),
                                                     key=lambda kv: -kv[1])[:4])]
            concepts.append(tuple(forms))
        words = concepts
    else:
        words = [(t,) for t in word_w if len(t) > 1 or not textproc.CJK_RE.fullmatch(t)]
        probe = "".join(textproc.CJK_RE.findall(detail["rest"]))
    concept_w = [max(idf.get(f, 0.0) for f in forms) or 1.0 for forms in concepts]
    out = np.zeros((len(candidates), len(FEATURES)), dtype=np.float32)
    for r, i in enumerate(candidates):
        toks, text = lex.token_sets[i], rows[i]["text"].lower()  # English stems are lower-case
        lines = [ln for ln in text.split("\n") if ln.strip()]
        s = float(final[i])
        if concepts:  # an English question: bigrams are only its translations' parts, so one figure for both
            word_cover = bigram_cover = sum(
                w for forms, w in zip(concepts, concept_w) if any(f in toks for f in forms)) / sum(concept_w)
        else:
            word_cover = sum(w for t, w in word_w.items() if t in toks) / total_word
            bigram_cover = sum(w for t, w in bigram_w.items() if t in toks) / total_bigram
        out[r, :14] = (
            s / top if top > 0 else 0.0, math.log1p(max(s, 0.0)), 1.0 / (1 + r),
            float(own[i]) / s if s > 0 else 0.0,
            float(lex.docs[i] in named) if lex.docs else 0.0, float(bool(named)),
            word_cover, bigram_cover,
            sum(w for t, w in word_w.items() if t in heading_tokens[i]) / total_word,
            _run_length(probe, text) / max(len(probe), 1) if probe else 0.0,
            _proximity(words, text, max(40, 2 * len(probe) or 60)),
            math.log1p(len(text)) / 7.0, sum(bool(_BULLET_RE.match(ln)) for ln in lines) / max(len(lines), 1),
            english,
        )
    if len(candidates):
        for j, col in enumerate((6, 7, 9, 10)):  # word, bigram cover, run, proximity against the best candidate
            out[:, 14 + j] = out[:, col] - out[:, col].max()
        out[:, 18] = english * out[:, 6]
        out[:, 19] = english * out[:, 0]
        out[:, 20] = np.log(np.maximum(out[:, 0], 1e-3))
    return out


@dataclass
class Ranker:
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    trained_on: int = 0

    def probability(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def to_json(self) -> str:
        return json.dumps({"version": RANKER_VERSION, "features": list(FEATURES), "mean": self.mean.tolist(),
                           "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                           "intercept": self.intercept, "trained_on": self.trained_on})

    @classmethod
    def from_json(cls, text: str | None) -> "Ranker | None":
        """The stored ranker, or None when there is none or it was built for other features."""
        if not text:
            return None
        d = json.loads(text)
        if d.get("version") != RANKER_VERSION or d.get("features") != list(FEATURES):
            return None
        return cls(np.array(d["mean"], np.float32), np.array(d["scale"], np.float32),
                   np.array(d["coef"], np.float32), float(d["intercept"]), int(d.get("trained_on", 0)))


def _content_words(sentence: str) -> list[str]:
    out = []
    for m in textproc.TOKEN_RE.finditer(sentence):
        piece = m.group()
        if textproc.CJK_RE.fullmatch(piece):
            out.extend(w for w in textproc._jieba().cut(piece) if len(w) > 1 and w not in textproc.ZH_STOP)
        elif len(piece) > 2 and piece.lower() not in textproc.EN_STOP:
            out.append(piece)
    return out


def generate_questions(rows: list[dict], lexicon: dict[str, list[tuple[str, float]]],
                       seed: int = SEED, aliases: dict | None = None) -> list[tuple[str, str]]:
    """(question, evidence) pairs from the passages themselves: a passage answers when it contains the evidence.

    A sentence question is a few of the sentence's content words in order, the
    way a reader who half remembers it asks; one in three also goes into
    English through the corpus lexicon (so English questions train the
    English-side features). A heading question asks for the heading's title.
    """
    rng = random.Random(seed)
    if len(rows) > MAX_PASSAGES:  # a large knowledge base: a sample keeps index time in seconds
        rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), MAX_PASSAGES))]
    # Chinese names of each document (crosslingual.doc_aliases: 管理优势 for management-advantage.md).
    names = {doc: sorted(zh) for doc, (zh, _) in (aliases or {}).items()}
    english_of: dict[str, str] = {}
    for term, pairs in sorted(lexicon.items()):
        if " " in term or not term.isalpha():
            continue
        for zh, w in pairs:
            if w >= 1.0 and zh not in english_of:
                english_of[zh] = term
    out: list[tuple[str, str]] = []
    seen_headings: set[tuple[str, str]] = set()
    for row in rows:
        sentences = [s.strip() for s in _SENTENCE_RE.findall(row["text"])
                     if len("".join(textproc.CJK_RE.findall(s))) >= 12]
        # Where the reader found it: "盈利模式中，…", "技术安全风险部分…".
        hints = [w for part in row["heading"].split(" > ")[1:] for w in _content_words(_NUMBERING_RE.sub("", part))]
        for sentence in rng.sample(sentences, min(QUESTIONS_PER_PASSAGE, len(sentences))):
            # A question names the topic and asks for the rest: its words come from the
            # sentence's first clause ("数据泄露风险：…", "在推荐系统中，…") when that has enough.
            clause = re.split(r"[，：:,]", sentence.replace("**", ""), maxsplit=1)[0]
            words = _content_words(clause if len(_content_words(clause)) >= 3 else sentence)
            if len(words) < 3:
                continue
            k = rng.randint(2, min(4, len(words) - 1))
            picked = [words[i] for i in sorted(rng.sample(range(len(words)), k))]
            # A reader remembers part of a compound (硬件备份系统 -> 备份).
            picked = [_part(w, rng) if rng.random() < 0.3 else w for w in picked]
            if rng.random() < 1 / 3:
                english = [english_of[w] for w in picked if w in english_of]
                if len(english) >= 2:
                    name = PurePath(row["doc"]).stem.replace("-", " ").replace("_", " ")
                    where = f" in the {name} article" if rng.random() < 0.25 else ""
                    out.append(("What about " + " ".join(english) + where + "?", sentence))
                    continue
            prefix = rng.choice(hints) + rng.choice(("中，", "部分", "方面，")) if hints and rng.random() < 0.4 else ""
            if names.get(row["doc"]) and rng.random() < 0.25:  # "管理优势一文…": the reader names the document
                prefix = rng.choice(names[row["doc"]]) + rng.choice(("一文", "文章中")) + prefix
            out.append((prefix + "".join(picked) + rng.choice(_ZH_ENDINGS), sentence))
        last = row["heading"].split(" > ")[-1]
        title = _NUMBERING_RE.sub("", last).strip("：: ")
        if len(title) >= 4 and (row["doc"], last) not in seen_headings and rng.random() < 0.5:
            seen_headings.add((row["doc"], last))
            out.append((title + rng.choice(_ZH_ENDINGS), row["text"][:40]))
    return out


def _part(word: str, rng: random.Random) -> str:
    parts = [p for p in textproc._jieba().cut_for_search(word) if len(p) > 1 and p != word]
    return rng.choice(parts) if parts else word


def train(lex, rows: list[dict], heading_tokens: Sequence[set[str]], lexicon, seed: int = SEED) -> Ranker | None:
    """Fit the ranker on generated questions over `lex`'s candidates; None when there is too little to learn from."""
    from sklearn.linear_model import LogisticRegression

    xs, ys = [], []
    rng = random.Random(seed)
    for question, evidence in generate_questions(rows, lexicon, seed, lex.aliases):
        detail = lex.analyse(question)
        candidates = lex.top(detail["final"], DEPTH)
        labels = np.array([evidence in rows[i]["text"] for i in candidates])
        if labels.all():
            continue  # nothing to tell apart
        if labels.any() and rng.random() < UNANSWERED:
            # The same question over a knowledge base without its answer: every candidate is
            # wrong. Without these the score would say which passage answers best, not
            # whether one answers at all, and an abstention threshold needs the latter.
            candidates = [i for i in lex.top(detail["final"], 4 * DEPTH) if evidence not in rows[i]["text"]][:DEPTH]
            labels = np.zeros(len(candidates), bool)
        if not len(candidates):
            continue
        xs.append(features(lex, question, detail, candidates, rows, heading_tokens))
        ys.append(labels)
    if len(xs) < 20:
        return None
    x, y = np.concatenate(xs), np.concatenate(ys).astype(int)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=REGULARISATION, max_iter=2000, random_state=seed).fit((x - mean) / scale, y)
    return Ranker(mean.astype(np.float32), scale.astype(np.float32), model.coef_[0].astype(np.float32),
                  float(model.intercept_[0]), len(xs))
