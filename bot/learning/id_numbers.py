"""Hong Kong and Taiwan identity numbers and passport numbers, for `privacy.scrub` (the mainland's 18-digit
resident number is a rule in `privacy`).

A Hong Kong identity card number (`A123456(3)`) and a Taiwan national id or resident certificate number
(`A123456789`) both end in a check character; a candidate is taken when its check holds (for Hong Kong,
written in brackets as the card prints it), or, when it does not (mistyped, or made up to show the format),
when a word right before it says an id number follows. A passport
number has no check anyone can compute, so only the word before it (`护照号`, `passport no.`) tells.
"""
from __future__ import annotations

import re
from typing import Iterator

Span = tuple[int, int]

_HK = re.compile(r"(?<![A-Za-z0-9])([A-Z]{1,2})([0-9]{6})(?:\(([0-9A])\)|([0-9A]))(?![A-Za-z0-9])")
_TW = re.compile(r"(?<![A-Za-z0-9])([A-Z])([1289][0-9]{8})(?![A-Za-z0-9])")
_PASSPORT = re.compile(r"(?i)(?:护照|護照|passport)\s*(?:号码|號碼|号|號|no\.?|number|#)?\s*[:=]?\s*"
                       r"([A-Z]{1,2}[0-9]{6,9})(?![A-Za-z0-9])")
_ID_WORD = re.compile(r"(?i)(?:身份证|身份證|身分證|证件|證件|id|identity card|hkid)\s*(?:号码|號碼|号|號|no\.?|number)?"
                      r"\s*[:=]?\s*$")
# Taiwan's letters stand for two-digit numbers (A=10 … with I, O, W, Z out of order).
_TW_LETTERS = {c: n for n, c in enumerate("ABCDEFGHJKLMNPQRSTUVXYWZIO", start=10)}


def _hk_ok(letters: str, digits: str, check: str) -> bool:
    values = ([36] if len(letters) == 1 else []) + [ord(c) - 55 for c in letters] + [int(d) for d in digits]
    total = sum(v * w for v, w in zip(values, range(9, 1, -1)))
    expected = (11 - total % 11) % 11
    return check == ("A" if expected == 10 else str(expected))


def _tw_ok(letter: str, digits: str) -> bool:
    n = _TW_LETTERS[letter]
    total = n // 10 + (n % 10) * 9 + sum(int(d) * w for d, w in zip(digits[:8], range(8, 0, -1))) + int(digits[8])
    return total % 10 == 0


def find(text: str) -> Iterator[Span]:
    for m in _HK.finditer(text):
        # Bare `A1234563` could be any product code passing the check by chance (1 in 11): with the check in
        # brackets, as the card prints it, or after an id word.
        if (m.group(3) and _hk_ok(m.group(1), m.group(2), m.group(3))) or _labelled(text, m.start()):
            yield m.span()
    for m in _TW.finditer(text):
        if _tw_ok(m.group(1), m.group(2)) or _labelled(text, m.start()):
            yield m.span()
    for m in _PASSPORT.finditer(text):
        yield m.span(1)


def _labelled(text: str, start: int) -> bool:
    return bool(_ID_WORD.search(text, max(0, start - 16), start))
