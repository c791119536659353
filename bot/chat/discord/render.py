"""Discord's side of an answer as text: the answer, its sources, split at Discord's 2000 characters.

Pure functions, no SDK and no I/O (slack_render is Slack's counterpart). A
long answer must never cut a citation `[n]` in two, nor strand it at the top
of the next message, away from the sentence it supports.

Discord renders the model's Markdown as it is (bold, italics, lists, headings,
code, links, quotes): nothing is converted. What a split can break is a code
fence, closed at a cut and reopened in the next message. An answer longer than
MAX_MESSAGES messages is never cut silently either: the messages stop with a
visible note, and the whole answer rides on the last one as a file.
"""
from __future__ import annotations

import re

from bot import messages


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
    return defuse("\n\n".join(p for p in [answer.answer.strip(), _after(answer)] if p))


def _after(answer) -> str:
    """What follows the answer's text: its sources, then the notice."""
    parts = []
    sources = answer.sources or answer.citations  # every passage the model was given, cited ones first
    if sources:
        label = "Sources" if answer.in_english else "来源"
        parts.append(f"**{label}**\n" + "\n".join(f"[{c.n}] {c.doc} › {c.heading}" for c in sources))
    if answer.notice:
        parts.append(f"-# {answer.notice}")
    return "\n\n".join(parts)


# Past this many messages an answer is a file: a 40,000-character answer as 20 messages floods the
# channel and runs into Discord's rate limit of 5 messages per 5 s in a channel.
MAX_MESSAGES = 5
FENCE = "```"


def close_fences(chunks: list[str]) -> list[str]:
    """Messages that each render on their own: a code fence open at the end of one is closed there and
    reopened at the top of the next (each message is rendered separately)."""
    out, open_ = [], ""
    for chunk in chunks:
        chunk = open_ + chunk
        inside = sum(1 for line in chunk.split("\n") if line.lstrip().startswith(FENCE)) % 2 == 1
        # A fence opened as ```python reopens as plain ```: the language hint is cosmetic.
        out.append(chunk + "\n" + FENCE if inside else chunk)
        open_ = FENCE + "\n" if inside else ""
    return out


def answer_messages(answer, limit: int = 2000) -> tuple[list[str], str | None]:
    """(the messages to post, the whole answer for a file or None). Up to MAX_MESSAGES messages the
    answer is posted whole; past that the first messages are posted, then one with a note (in the
    answer's language) that the rest is in the attached file, and the sources."""
    fence = len(FENCE) * 2 + 2  # room to close and reopen a fence at a cut
    chunks = close_fences(split_message(answer_text(answer), limit - fence))
    if len(chunks) <= MAX_MESSAGES:
        return chunks, None
    body = close_fences(split_message(defuse(answer.answer), limit - fence))[:MAX_MESSAGES - 1]
    note = messages.CONTINUED_ATTACHED_EN if answer.in_english else messages.CONTINUED_ATTACHED_ZH
    last = split_message(defuse(f"*{note}*\n\n{_after(answer)}".strip()), limit)
    return body + last[:1], answer_text(answer)


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
