"""Discord's side of an answer as text: the answer, its sources, split at Discord's 2000 characters.

Pure functions, no SDK and no I/O (slack_render is Slack's counterpart). A
long answer must never cut a citation `[n]` in two, nor strand it at the top
of the next message, away from the sentence it supports.
"""
from __future__ import annotations

import re


CITATION = re.compile(r"\[\d{1,3}\]")
# Boundaries in order of preference; a sentence or clause end takes the
# citations that close it ("…成本。[2]") along with it.
_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_LINE = re.compile(r"\n\s*")
_SENTENCE_END = re.compile(r"(?:[。！？；!?;]|\.(?=\s))(?:\[\d{1,3}\])*")
_CLAUSE_END = re.compile(r"[，、：,:](?:\[\d{1,3}\])*")
_SPACE = re.compile(r"\s+")


_BROADCAST = re.compile(r"@(everyone|here)\b")


def defuse(text: str) -> str:
    """`@everyone`/`@here` from the model or a document, with a zero-width space after the `@`: the
    client sends with no mentions allowed, and this keeps it so where a message is sent some other way."""
    return _BROADCAST.sub("@\u200b\\1", text)


def answer_text(answer) -> str:
    """The answer, then its sources as `[n] doc › heading`, then the notice (if any) in small print."""
    parts = [answer.answer.strip()]
    sources = answer.sources or answer.citations  # every passage the model was given, cited ones first
    if sources:
        label = "Sources" if answer.in_english else "来源"
        parts.append(f"**{label}**\n" + "\n".join(f"[{c.n}] {c.doc} › {c.heading}" for c in sources))
    if answer.notice:
        parts.append(f"-# {answer.notice}")
    return defuse("\n\n".join(p for p in parts if p))


def split_message(text: str, limit: int = 2000) -> list[str]:
    """Split `text` into messages of at most `limit` characters each.

    Each cut falls in the second half of the window, at the last paragraph
    break, else line break, else sentence end, else clause end, else space.
    A text with none of these (a run of Chinese without punctuation, a long
    URL) is cut at the limit, moved back so no citation `[n]` is broken.
    Whitespace at a cut is dropped; nothing else is.
    """
    if limit < 8:
        raise ValueError("limit must leave room for a citation")
    chunks: list[str] = []
    text = text.strip()
    while len(text) > limit:
        end, start = _cut(text, limit)
        chunks.append(text[:end].rstrip())
        text = text[start:].lstrip()
    if text:
        chunks.append(text)
    return chunks


def _cut(text: str, limit: int) -> tuple[int, int]:
    """(end of this chunk, start of the rest) for a text longer than `limit`."""
    floor = limit // 2  # a boundary earlier than this would waste half a message
    levels = ((_PARAGRAPH, False), (_LINE, False), (_SENTENCE_END, True), (_CLAUSE_END, True), (_SPACE, False))
    for pattern, keep in levels:
        best = None
        # A separator may start exactly at `limit` (dropped); kept punctuation must end by it.
        for m in pattern.finditer(text, floor, limit if keep else limit + 1):
            end = m.end() if keep else m.start()
            # A line may start with a citation (the sources list); a sentence's tail may not.
            if pattern not in (_PARAGRAPH, _LINE) and CITATION.match(text, m.end()):
                continue
            if end > 0:
                best = (end, m.end())
        if best:
            return best
    end = limit
    for m in CITATION.finditer(text, max(0, limit - 6), limit + 6):
        if m.start() < limit < m.end():
            end = m.start()
    return end, end
