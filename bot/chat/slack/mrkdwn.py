"""Markdown (what models and documents write) to Slack's mrkdwn, and mrkdwn cut without breaking it.

Slack does not read Markdown: `**bold**` shows as literal asterisks, `[t](u)` as
brackets. The conversion is slackify-markdown's renderer over markdown-it-py, a
CommonMark parser, rather than regex rules (markdown-to-mrkdwn, the other
maintained option, is regexes: it turned `## a **b**` into `*a *b**`, cut
`[x](javascript:alert(1))` at the first `)`, and left URLs holding `>` or `|`
to break the `<url|label>` syntax). Its renderer is subclassed where it is not
safe for our text:

- every text run and code run is escaped here (`&`, `<`, `>`; `@channel` defused):
  the library lets `<!here>` and `<@U…>` through as mentions and leaves code
  unescaped;
- only http(s) and mailto links become links; a citation-like label (`[1](…)`)
  or any other target (`[x](!channel)` would be `<!channel|x>`, a broadcast)
  stays literal text;
- entity decoding and link reference definitions are off: `a&amp;b` is shown as
  written, and a model's `[1]: doc.md` source line is text, not a definition that
  the parser would swallow.

A half-written stream (`**bo`, an unclosed fence) is valid Markdown too: it
renders as text until it closes. Conversion never raises to the caller: a
renderer bug falls back to plain escaped text, because an exception would lose
the answer (the streaming pump and the final update both call it).

`cut` and `pieces` split the converted text for Slack's limits without cutting an
entity (`&amp;`) or a `<url|label>` in two, and close a code fence at a cut and
reopen it in the next piece.
"""
from __future__ import annotations

import logging
import re
from urllib.parse import unquote, urlparse

from markdown_it import MarkdownIt
from slackify_markdown.slackify import SlackifyMarkdown

log = logging.getLogger(__name__)

_BROADCAST = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
_LINK_SCHEMES = {"http", "https", "mailto"}
_CITATION_LABEL = re.compile(r"\d{1,3}")
# What a cut must not fall inside: an entity we wrote, or a `<url|label>` we wrote (labels are escaped).
_ATOM = re.compile(r"&(?:amp|lt|gt);|<[^<>\n]*>")
FENCE = "```"


def escape(text: str) -> str:
    """Slack's three entities, and `@channel`/`@here`/`@everyone` with a zero-width space (never a ping)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _BROADCAST.sub("@\u200b\\1", text)


def _escape_code(text: str) -> str:
    # In code Slack still decodes entities, so they are needed; a zero-width space would be copied with it.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Renderer(SlackifyMarkdown):
    """slackify-markdown's renderer, with our escaping and a link allow-list (see the module docstring)."""

    def __init__(self, markdown_text: str):
        super().__init__(markdown_text)
        self._literal_links: list[str] = []  # per open link: the text to close it with, or "" for a real link

    def slackify(self) -> str:
        md = MarkdownIt("gfm-like", renderer_cls=type(self),
                        options_update={"html": False, "linkify": False, "breaks": False})
        # Tables: Slack has none (their rows read as text). reference/entity: see the module docstring.
        md.disable(["table", "reference", "entity"])
        return md.render(self.markdown_text.replace(self.NEW_LINE, ""))

    def text(self, tokens, idx, options, env) -> str:
        return escape(tokens[idx].content)

    def code_inline(self, tokens, idx, options, env) -> str:
        return f"`{_escape_code(tokens[idx].content)}`"

    def fence(self, tokens, idx, options, env) -> str:
        return f"{FENCE}\n{_escape_code(tokens[idx].content)}{FENCE}\n"

    code_block = fence

    @staticmethod
    def _label(tokens, idx) -> str:
        """The plain text of a link's label: the inline tokens up to its link_close."""
        out, depth = [], 0
        for t in tokens[idx + 1:]:
            if t.type == "link_close" and depth == 0:
                break
            depth += t.nesting
            out.append(t.content)
        return "".join(out)

    def link_open(self, tokens, idx, options, env) -> str:
        href = tokens[idx].attrs.get("href", "") or ""
        scheme = urlparse(href).scheme.lower()
        if scheme in _LINK_SCHEMES and not _CITATION_LABEL.fullmatch(self._label(tokens, idx)):
            self._literal_links.append("")
            only_link = tokens[idx + 1].nesting == -1
            return f"<{_escape_code(href)}" + ("" if only_link else "|")
        # Shown as written: a citation stays `[1]`, and no target can become a mention or broadcast.
        self._literal_links.append(escape(f"]({unquote(href)})"))
        return "["

    def link_close(self, tokens, idx, options, env) -> str:
        literal = self._literal_links.pop() if self._literal_links else ""
        return literal or ">"

    def image(self, tokens, idx, options, env) -> str:
        src = tokens[idx].attrs.get("src", "") or ""
        label = escape(tokens[idx].content or tokens[idx].attrs.get("title", "") or "")
        if urlparse(src).scheme.lower() in ("http", "https"):
            return f"<{_escape_code(src)}|{label}>" if label else f"<{_escape_code(src)}>"
        return label


def to_mrkdwn(markdown: str) -> str:
    """Markdown as Slack mrkdwn, escaped: safe to post as a mrkdwn text object."""
    if not markdown:
        return ""
    try:
        return _Renderer(markdown).slackify().strip("\n")
    except Exception:  # noqa: BLE001 (a renderer bug must not lose the answer: plain text instead)
        log.exception("Markdown conversion failed: sent as plain text")
        return escape(markdown)


def _safe(text: str, n: int) -> int:
    """`n`, or the start of the entity or link that position `n` would cut."""
    for m in _ATOM.finditer(text, max(0, n - 4000), min(len(text), n + 4000)):
        if m.start() < n < m.end():
            return m.start() if m.start() > 0 else n  # an atom longer than the whole piece: cut it anyway
        if m.start() >= n:
            break
    return n


def cut(text: str, size: int, ellipsis: str = "…") -> str:
    """`text` if it fits in `size` characters, else its longest unbroken prefix with `ellipsis`."""
    if len(text) <= size:
        return text
    return text[:_safe(text, size - len(ellipsis))] + ellipsis


def _cut_at(text: str, size: int) -> tuple[int, int]:
    """(end of this piece, start of the next) for `text` longer than `size`: at a line end in the second
    half of the window (the line end is dropped), else after a space or CJK punctuation, else anywhere
    that breaks no entity or link. Nothing but the line end at a cut is dropped."""
    line = text.rfind("\n", size // 2, size + 1)
    if line > 0 and _safe(text, line) == line:
        return line, line + 1
    for m in reversed(list(re.finditer(r"[ \t。！？；，、]", text[size // 2:size]))):
        end = size // 2 + m.end()
        if _safe(text, end) == end:
            return end, end
    end = _safe(text, size)
    return end, end


def pieces(text: str, size: int) -> list[str]:
    """Converted mrkdwn in pieces of at most `size` characters, each valid on its own: no entity or link
    cut, and a code fence open at a cut closed there and reopened in the next piece."""
    out: list[str] = []
    reopen = ""
    closing = "\n" + FENCE
    while text:
        budget = size - len(reopen)
        if len(text) <= budget:
            out.append(reopen + text)
            break
        end, start = _cut_at(text, budget - len(closing))
        piece = reopen + text[:end]
        inside = sum(1 for ln in piece.split("\n") if ln.startswith(FENCE)) % 2 == 1
        out.append(piece + closing if inside else piece)
        reopen = FENCE + "\n" if inside else ""
        text = text[start:] if inside else text[start:].lstrip("\n")  # a blank line is no use at a top
    return out
