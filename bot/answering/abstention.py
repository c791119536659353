"""Whether the best passages support an answer at all: "the knowledge base doesn't cover this".

The decision uses signals computed here from texts, not the retriever's
score, so it holds whatever the ranking's scale (BM25 sums, fused ranks, a
re-ranker's probabilities):

- `coverage`: the share of the question's content terms, weighted by their
  IDF over the knowledge base, that the best single passage contains. A term
  the knowledge base never uses (年假, GPT-4, quantum) weighs the most and is
  covered by nothing, so a question about something the documents never
  mention falls short even when its other words ("多少", "训练") match.
- English questions over Chinese text: an English word counts as covered when
  the passage has the word itself or one of its Chinese renderings from the
  corpus lexicon (crosslingual.py).
- A Chinese word the corpus never uses brings the corpus words that share one
  of its English senses in CC-CEDICT (损坏 -> damage -> 损失): a paraphrase is
  then found, while a topic the corpus lacks (年假, 量子) has no such neighbour.

`Judge.verdict` is the one entry point; the pipeline calls it with the hits
it retrieved. `terms` and `covered` are shared with extract.py, which scores
sentences the same way.
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

from bot.knowledge import crosslingual, textproc

# Calibrated on dev + demo + golden (67 answerable questions; dev's 3 unanswerable ones join the other
# side) against knowledge/eval/unanswerable.jsonl (38 about things the documents never mention, most
# of them near-misses that share their words), never on test.jsonl. Sweep (answerable declined /
# unanswerable declined): 0.35: 3/67, 24/41; 0.40: 4/67, 31/41; 0.45: 5/67, 35/41; 0.50: 7/67, 37/41.
# 0.45 is near the best separation (Youden's J 0.78 against 0.80 at 0.50) and declines fewer
# answerable questions, the costlier mistake. Recalibrate with `python -m bot eval-answers --sweep`
# if the term weighting or the corpus changes; the retriever's score scale does not enter it.
MIN_COVERAGE = 0.45
# Coverage alone declined 12% of the answerable tuning questions (dev, demo, golden and
# paraphrase.jsonl: 97), nearly all paraphrases whose key word the documents never use. The
# re-ranker (knowledge/ranker.py) reads more than shared words (proximity, shared runs, the heading
# path): when it is fairly sure of its best passage (MAX_SUPPORT), a low coverage is taken for a
# paraphrase, not a missing topic -- unless at least UNKNOWN_SHARE of the question's weight is words
# no passage has (年假, Wi-Fi): that question is about something else, whatever the ranking says.
# Chosen on the same tuning sets, never on test.jsonl (answerable declined / unanswerable declined,
# of 97 / 41): coverage alone 12 / 35; with MAX_SUPPORT 0.2 alone 8 / 29; with both 10 / 30
# (MAX_SUPPORT 0.3: 12 / 34). A missed abstention still shows the passages with their sources; a
# wrong one hides the answer's lead behind "not covered".
MAX_SUPPORT = 0.2
UNKNOWN_SHARE = 0.5
# An English word has up to this many Chinese renderings in the lexicon that count for it.
TRANSLATIONS_PER_WORD = 6
SYNONYMS_PER_WORD = 6  # corpus words standing in for a question's word the corpus never uses
# Zero-width characters and BOMs: invisible, but they would split a word in two for matching.
_INVISIBLE = re.compile("[\u200b-\u200f\u2060-\u2064\ufeff\u00ad]")
# Words that shape a question rather than name its topic ("多少", "应该", "how many"): a passage that
# answers rarely repeats them, and the rarer ones would otherwise weigh like a topic the corpus lacks.
QUESTION_WORDS_ZH = frozenset(
    "多少 几个 几种 几天 怎样 怎么样 怎么 如何 应该 一般 具体 通常 主要 需要 能够 可以 给出 举出 列出 建议 例子 "
    "举例 哪些方面 情况 方法 办法 途径 手段 作用 什么样 分别 各自 哪家 那家 哪种 哪个 哪些 "
    # What is asked about the topic, not the topic: "FairScale 有什么好处" is answered by its 优势.
    "好处 坏处 优点 缺点 区别 意思 含义 定义".split())
QUESTION_WORDS_EN = frozenset(textproc.stem(w) for w in
                              "many much per kind way get main usual often typical exactly "
                              "benefit drawback mean meaning defin definition".split())
_LATIN_RE = re.compile(r"[a-z0-9+#]+")


def normalise(text: str) -> str:
    """Text as matched: full-width forms folded (ＧＰＴ -> GPT), invisible characters dropped, lower case."""
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text or "")).lower()


@dataclass(frozen=True)
class Term:
    """A question's content term and the forms that count as finding it in a text."""

    key: str
    cjk: tuple[str, ...]  # substrings of a text (a Chinese word, or an English word's renderings)
    stem: str = ""  # an English stem, matched against a text's stemmed words


@dataclass
class Verdict:
    abstain: bool
    coverage: float  # of the best passage, 0..1
    best: int  # index into the hits of the best-covering passage, -1 when there are none
    missing: list[str]  # the question's terms that the best passage lacks, heaviest first
    unknown: float = 0.0  # the IDF share of the question's terms that no passage has
    support: float | None = None  # the re-ranker's probability for the best hit; None without a re-ranker

    def as_json(self) -> dict:
        return {"abstain": self.abstain, "coverage": round(self.coverage, 3), "best": self.best,
                "missing": self.missing, "unknown": round(self.unknown, 3),
                "support": None if self.support is None else round(self.support, 3)}


def abstains(coverage: float, support: float | None, unknown: float = 0.0, min_coverage: float = MIN_COVERAGE,
             max_support: float = MAX_SUPPORT) -> bool:
    """The rule: too little of the question is covered, unless the re-ranker is fairly sure anyway
    and the question is mostly in the corpus's words."""
    return coverage < min_coverage and (support is None or support < max_support or unknown >= UNKNOWN_SHARE)


def english_stems(text: str) -> list[str]:
    """Stemmed English content words, split at hyphens and dots too ("platform-advantage.md" is
    three words, since a question and a passage hyphenate differently), except a name with a digit
    in it (GPT-4, A100), which is one thing and must be found whole."""
    out = []
    for word in textproc.WORD_RE.findall(text.lower()):
        parts = [word] if any(c.isdigit() for c in word) else _LATIN_RE.findall(word)
        out.extend(textproc.stem(w) for w in parts
                   if w not in textproc.EN_STOP and not w.isdigit() and textproc.stem(w) not in QUESTION_WORDS_EN)
    return out


def _single_character_runs(run: str) -> list[str]:
    """Runs of one-character words that jieba does not know as one word (年假 -> 年 + 假), joined:
    dropped one by one, a question's topic would vanish from its terms."""
    out, cur = [], ""
    for w in textproc._jieba().cut(run):
        if len(w) == 1 and w not in textproc.ZH_STOP:
            cur += w
            continue
        if len(cur) >= 2:
            out.append(cur)
        cur = ""
    if len(cur) >= 2:
        out.append(cur)
    return out


def terms(question: str, lexicon: dict[str, list[tuple[str, float]]] | None = None) -> list[Term]:
    """The question's content terms: Chinese words of two characters or more, English stems (with
    their Chinese renderings from `lexicon`), in order, without repeats."""
    lexicon = lexicon or {}
    out: dict[str, Term] = {}
    for m in textproc.TOKEN_RE.finditer(normalise(question)):
        piece = m.group()
        if textproc.CJK_RE.fullmatch(piece):
            # One character (年, 假) matches almost any passage; the words around it carry the topic.
            for w in textproc.chinese_words(piece) + _single_character_runs(piece):
                if len(w) >= 2 and w not in QUESTION_WORDS_ZH:
                    out.setdefault(w, Term(w, (w,)))
        else:
            for stem in english_stems(piece):
                zh = tuple(z for z, _ in lexicon.get(stem, [])[:TRANSLATIONS_PER_WORD])
                out.setdefault(stem, Term(stem, zh, stem))
    return list(out.values())


class Text:
    """A passage or sentence prepared once for matching."""

    __slots__ = ("plain", "stems")

    def __init__(self, text: str):
        self.plain = normalise(text)
        self.stems = set(english_stems(self.plain))


def covered(term: Term, text: Text) -> bool:
    return (bool(term.stem) and term.stem in text.stems) or any(z in text.plain for z in term.cjk)


class Judge:
    """IDF statistics over the knowledge base's passages, and the abstention decision from them.

    Built from the rows the searcher serves (doc, heading, text) so that a re-index is seen by
    building a new one (`for_rows`); document frequencies are computed per term on first use."""

    def __init__(self, rows: list[dict], lexicon: dict[str, list[tuple[str, float]]] | None = None,
                 min_coverage: float = MIN_COVERAGE):
        self.lexicon = lexicon or {}
        self.min_coverage = min_coverage
        self._texts: dict[int, Text] = {}
        self._rows = rows
        self._df: dict[Term, int] = {}
        self._aliases: dict | None = None

    def _without_doc_names(self, question: str) -> str:
        """The question with the documents it names ("管理优势一文") blanked: the name picks the document
        (retrieval does that), it is not something a passage's text must contain."""
        if self._aliases is None:
            docs = sorted({r.get("doc", "") for r in self._rows} - {""})
            self._aliases = {d: crosslingual.doc_aliases(d, self.lexicon) for d in docs}
        return crosslingual.doc_mentions(question, self._aliases)[1]

    def _text(self, i: int) -> Text:
        t = self._texts.get(i)
        if t is None:
            r = self._rows[i]
            t = self._texts[i] = Text(f"{r.get('doc', '')}\n{r.get('heading', '')}\n{r.get('text', '')}")
        return t

    def idf(self, term: Term) -> float:
        """BM25's IDF over passages: a term no passage has gets the largest weight."""
        df = self._df.get(term)
        if df is None:
            df = self._df[term] = sum(covered(term, self._text(i)) for i in range(len(self._rows)))
        n = len(self._rows)
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def weighted_terms(self, question: str) -> list[tuple[Term, float]]:
        out = []
        for t in terms(self._without_doc_names(normalise(question)), self.lexicon):
            if not t.stem and self.idf(t) and self._df[t] == 0:
                t = self._with_synonyms(t)
            out.append((t, self.idf(t)))
        return out

    def _with_synonyms(self, term: Term) -> Term:
        """A Chinese word no passage uses, with the corpus's words that share one of its one-word
        English senses in CC-CEDICT (损坏 -> damage -> 破坏): a question often paraphrases, and
        without them the paraphrase weighs like a topic the corpus lacks. A word with no such
        neighbour (年假, 量子) stays as it is."""
        extra = []
        for sense in crosslingual._senses(term.key):
            if len(sense) == 1:
                extra += [zh for zh, w in self.lexicon.get(sense[0], []) if w >= 1.0 and zh not in extra]
        return Term(term.key, term.cjk + tuple(extra[:SYNONYMS_PER_WORD])) if extra else term

    def verdict(self, question: str, hits: list, scored: bool = False) -> Verdict:
        """Abstain when no hit covers MIN_COVERAGE of the question's IDF-weighted terms and (when
        `scored`: the hits' `score` is the re-ranker's probability, best first) the best hit's
        probability is below MAX_SUPPORT or UNKNOWN_SHARE of the question is words no passage has.

        `hits` need `doc`, `heading` and `text` (retrieval.Hit, prompts.Passage)."""
        weighted = self.weighted_terms(question)
        total = sum(w for _, w in weighted)
        if not hits or total <= 0:
            # Nothing retrieved, or a question with no content word at all ("？？", "the of"): nothing
            # in the knowledge base can be said to answer it.
            return Verdict(True, 0.0, -1, [t.key for t, _ in weighted])
        best, best_cov, best_missing = -1, -1.0, []
        for i, h in enumerate(hits):
            text = Text(f"{h.doc}\n{h.heading}\n{h.text}")
            have = [covered(t, text) for t, _ in weighted]
            cov = sum(w for (_, w), ok in zip(weighted, have) if ok) / total
            if cov > best_cov:
                best, best_cov = i, cov
                best_missing = [t.key for (t, w), ok in sorted(zip(weighted, have), key=lambda x: -x[0][1]) if not ok]
        unknown = sum(w for t, w in weighted if self._df.get(t) == 0) / total
        support = float(hits[0].score) if scored else None
        return Verdict(abstains(best_cov, support, unknown, self.min_coverage), best_cov, best, best_missing, unknown, support)
