"""Lexical tokens for Chinese and English text, shared by indexing and search.

Chinese runs go through jieba's search mode, which emits both a compound and
its parts (语音识别 -> 语音, 识别, 语音识别), and through character bigrams,
which catch words jieba segments differently in a question and in a passage.
English words are lower-cased and Snowball-stemmed, so "recognise",
"recognition" and "recognized" meet; hyphenated words also count as their
parts. Measured choices: see README, Retrieval.
"""
from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache

CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
WORD_RE = re.compile(r"[a-z0-9][a-z0-9+#.\-]*[a-z0-9+#]|[a-z0-9]")
TOKEN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[A-Za-z0-9][A-Za-z0-9+#.\-]*")

# Function words that carry no topic. Short on purpose: BM25's IDF already
# discounts frequent words; these are the ones frequent in questions but not
# in passages, where IDF cannot see them.
ZH_STOP = set(
    "的 了 是 在 和 与 及 或 等 中 对 为 把 被 也 都 就 而 并 其 之 这 那 有 个 上 下 "
    "什么 哪些 哪个 哪 如何 怎么 怎样 为什么 是否 吗 呢 吧 啊 么 "
    "文章 文中 一文 提到 提出 认为 介绍 根据 里 时 可以 哪两 哪三 几".split()
)
EN_STOP = set(
    """a an the and or of to in on for with by as at from is are was were be been being it its this that these
    those which what who whom whose how why when where does do did can could should would may might must will
    shall not no according article document documents text described describe suggest suggests recommend
    recommends say says said give given listed list mention mentioned example examples name named one two three
    any all some than then there their they them about into over under after before during also such other
    use used using""".split()
)


@lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


_local = threading.local()


def _stemmer():
    """One stemmer per thread: a snowballstemmer object keeps the word it is stemming in its own fields, so
    threads sharing one (the answer pool under concurrent questions) corrupt each other's (IndexError)."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        import snowballstemmer

        stemmer = _local.stemmer = snowballstemmer.stemmer("english")
    return stemmer


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    # Cached: Snowball is pure Python (~0.2 ms a word), and the abstention judge stems every
    # passage once, the same few thousand words over and over (5 s on a first question uncached).
    return _stemmer().stemWord(word)


def english_words(text: str, compounds: bool = False) -> list[str]:
    """Content words of English text, stemmed, in order (stopwords dropped).

    A hyphenated word also gives its parts ("privacy-protecting" -> privaci,
    protect), because the dictionary and most passages write them apart; with
    `compounds` the whole word comes first too, so "GPT-3" still matches
    "GPT-3" more closely than "GPT-4".
    """
    out: list[str] = []
    for w in WORD_RE.findall(text.lower()):
        if "-" in w:
            if compounds and w not in EN_STOP:
                out.append(stem(w))
            out.extend(stem(p) for p in w.split("-") if p and p not in EN_STOP and not p.isdigit())
        elif w not in EN_STOP and not w.isdigit():
            out.append(stem(w))
    return out


def chinese_words(run: str) -> list[str]:
    return [w for w in _jieba().cut_for_search(run) if w.strip() and w not in ZH_STOP]


def bigrams(run: str) -> list[str]:
    return [run[i : i + 2] for i in range(len(run) - 1)] if len(run) > 1 else [run]


def tokens(text: str) -> list[str]:
    """Lexical tokens of text in any mix of Chinese and English."""
    out: list[str] = []
    for m in TOKEN_RE.finditer(text):
        piece = m.group()
        if CJK_RE.fullmatch(piece):
            out.extend(chinese_words(piece))
            out.extend("~" + b for b in bigrams(piece))
        else:
            out.extend(english_words(piece, compounds=True))
    return out


def is_mostly_english(text: str) -> bool:
    cjk = sum(len(m) for m in CJK_RE.findall(text))
    latin = len(re.findall(r"[A-Za-z]", text))
    return latin > 2 * cjk
