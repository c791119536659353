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
_KEY_CHAR = re.compile(r"[A-Za-z0-9+/=_-]")
# A long run of key characters with a letter and a digit, right before a line break.
_KEY_RUN_END = re.compile(r"(?=[A-Za-z0-9+/=_-]*[0-9])(?=[A-Za-z0-9+/=_-]*[A-Za-z])[A-Za-z0-9+/=_-]{16,}\r?$")
_WRAP = re.compile(r"[A-Za-z0-9+/=_-]{16}\r?\n[A-Za-z0-9+/=_-]")


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
    if text.isascii() and not _WRAP.search(text):
        return View(text, None, None)  # nothing to normalise: the common case costs one scan
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        while j < n and unicodedata.combining(text[j]):
            j += 1
        chunk = text[i:j]
        if chunk in INVISIBLE:
            i = j
            continue
        if chunk == "\n" and j < n and _KEY_CHAR.match(text, j) and _KEY_RUN_END.search("".join(out[-64:])):
            if out and out[-1] == "\r":
                del out[-1], starts[-1], ends[-1]
            i = j  # a key wrapped onto the next line: read it as one run
            continue
        chunk = "".join(c for c in chunk if c not in INVISIBLE)
        for c in _nfkc(chunk):
            out.append(c)
            starts.append(i)
            ends.append(j)
        i = j
    return View("".join(out), starts, ends)
