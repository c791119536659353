"""What PII detection reads: a normalised copy of a text whose every character maps back to the original.

People (and adversaries) write the same address in many code points:
full-width `ｗａｎｇ＠ｅｘａｍｐｌｅ．ｃｏｍ`, a zero-width space inside
`li\u200bsi@example.com` or `AKIA\u200c…`, a key wrapped onto two lines. The
rules in `privacy` are written for the plain form, so they run on a view:

- every character but full-width sentence punctuation NFKC-normalised on its own (with the combining marks that
  follow it, so `e` + U+0301 becomes `é`): full-width letters, digits and
  punctuation (＠ ． ： ＝) become ASCII, compatibility forms their plain ones;
- invisible format characters (zero-width space/joiners, word joiner, BOM,
  soft hyphen, direction marks) dropped;
- an ideographic full stop between ASCII letters or digits read as `.`, and
  seven or more Chinese digits in a row (`一三八零零…`) as ASCII digits;
- a line break dropped where it splits a long key-like run (16+ key
  characters, letters and digits, before it; a key character after it).

The view is for finding only. Scrubbing the normalised text itself would be
simpler, but NFKC also rewrites what is not personal at all (every Chinese
full-width comma and colon `，：` becomes ASCII), so every Chinese training
example would change; instead each span found in the view is mapped back and
replaced in the original, and the rest of the text is kept byte for byte.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

# Format characters that render as nothing: zero-width space, non-joiner, joiner, word joiner, BOM,
# soft hyphen, Mongolian vowel separator, direction marks and embeddings, invisible operators, CGJ.
INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                      "\u2061\u2062\u2063\u2064\u034f")
# Full-width sentence punctuation stays as it is: in Chinese prose it ends a value (`密码：abc123（旧的）`,
# `…！`), and as ASCII it would read as part of a key. Full-width ＠ ． ： ＝ and the rest are normalised.
KEEP = frozenset("（）［］｛｝！？，；")
# A line break after a long run of key characters (16+, a letter and a digit among them) and before another.
_WRAP_BREAK = re.compile(r"(?<=[A-Za-z0-9+/=_-]{16})\r?\n(?=[A-Za-z0-9+/=_-])")
_KEY_RUN_END = re.compile(r"(?=[A-Za-z0-9+/=_-]*[0-9])(?=[A-Za-z0-9+/=_-]*[A-Za-z])[A-Za-z0-9+/=_-]{16,}$")
# Seven or more Chinese digits in a row are a number spelt out digit by digit (`一三八零零一三八零零零`): a phone
# or an id, never prose (which counts with 十 百 千 万).
_HAN_DIGITS = re.compile("[〇零一二三四五六七八九]{7,}")
_HAN_DIGIT = {c: str(d) for d, c in enumerate("零一二三四五六七八九")} | {"〇": "0"}
# An ideographic full stop between letters or digits is a dot written in a Chinese input mode (`example。com`,
# `192。168。1。23`); at the end of a sentence it is left alone.
_CJK_DOT = re.compile(r"(?<=[^\W_])[。｡](?=[^\W_])")
# Combining marks (accents written apart, `e` + U+0301): normalised with the character they follow.
_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")


@dataclass(frozen=True)
class View:
    text: str  # the normalised copy the rules read
    starts: list[int] | None  # per view character, where its source starts in the original (None: identity)
    ends: list[int] | None

    def original(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that view[start:end] came from."""
        if self.starts is None or end <= start:
            return start, end
        return self.starts[start], self.ends[end - 1]


@functools.lru_cache(maxsize=8192)
def _nfkc(chunk: str) -> str:
    return chunk if chunk.isascii() or chunk in KEEP else unicodedata.normalize("NFKC", chunk)


# Scrubbing runs every rule on the view of the same text, and most rules change nothing: one view serves them all.
@functools.lru_cache(maxsize=32)
def view(text: str) -> View:
    dropped = {i for m in _WRAP_BREAK.finditer(text) if _KEY_RUN_END.search(text, max(0, m.start() - 64), m.start())
               for i in range(*m.span())}
    if text.isascii() and not dropped:
        return View(text, None, None)  # nothing to normalise: the common case costs two scans
    # Both swaps are of non-ASCII characters (。｡, Chinese digits): looked for only past the check above.
    swapped = {m.start(): "." for m in _CJK_DOT.finditer(text)
               if unicodedata.normalize("NFKC", text[m.start() - 1] + text[m.end()]).isascii()}
    swapped |= {i: _HAN_DIGIT[text[i]] for m in _HAN_DIGITS.finditer(text) for i in range(*m.span())}
    if _COMBINING.search(text):
        cuts = [i for i, c in enumerate(text) if not unicodedata.combining(c)] + [len(text)]
        pieces = [(i, j, "" if i in dropped else swapped.get(i) or _nfkc("".join(c for c in text[i:j] if c not in INVISIBLE)))
                  for i, j in zip(cuts, cuts[1:])]
    else:
        pieces = [(i, i + 1, "" if c in INVISIBLE or i in dropped else swapped.get(i) or _nfkc(c))
                  for i, c in enumerate(text)]
    normalised = "".join(p for _, _, p in pieces)
    if len(pieces) == len(text) and all(len(p) == 1 for _, _, p in pieces):
        return View(normalised, None, None)  # one character for one: offsets hold as they are
    starts = [i for i, _, p in pieces for _ in p]
    ends = [j for _, j, p in pieces for _ in p]
    return View(normalised, starts, ends)
