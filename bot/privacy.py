"""Personal data out of text before it can enter a training set: `scrub(text) -> text`.

Each kind of personal or secret data is replaced by a placeholder naming
the kind (`<EMAIL>`, `<PHONE>`, `<TOKEN>`, `<SECRET>`, `<USER>`, `<ROLE>`,
`<CHANNEL>`), so a trained adapter learns that something stood there but
never what. Stored feedback keeps its original text (a reviewer needs it to
judge a correction, and `feedback.forget` deletes it); only what a snapshot
writes, and so what the model sees in training, is scrubbed.

The patterns err towards scrubbing: a false positive costs a few characters
of a training example, a false negative leaks a credential into weights.
Ordinary numbers (years, prices, 8-digit counts) are left alone: a phone
number needs a leading +, separators in a phone layout, or the shape of a
Chinese mobile or landline number.
"""
from __future__ import annotations

import re

# Order matters: credentials first (they can contain @, digits and hex),
# then e-mail addresses (before @handles), mentions, phones, long hex.
_RULES: list[tuple[str, re.Pattern, str]] = [
    # Slack bot/user/app tokens: xoxb-, xoxp-, xoxa-, xoxr-, xoxs-, xapp-.
    ("slack token", re.compile(r"\bxox[abeoprs]-[A-Za-z0-9-]{8,}|\bxapp-\d-[A-Za-z0-9-]{8,}"), "<TOKEN>"),
    # OpenAI-style keys: sk-..., sk-proj-..., sk-ant-...
    ("api key", re.compile(r"\bsk-(?:[a-z]+-)?[A-Za-z0-9_-]{16,}"), "<TOKEN>"),
    # GitHub personal, OAuth, server and refresh tokens; fine-grained PATs.
    ("github token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}"), "<TOKEN>"),
    # AWS access key ids (long-term AKIA, temporary ASIA).
    ("aws key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "<TOKEN>"),
    # Google API keys.
    ("google key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), "<TOKEN>"),
    # JSON Web Tokens (three base64url parts).
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), "<TOKEN>"),
    # Authorization headers: keep the scheme word so the sentence still reads.
    ("bearer", re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{16,}"), r"\1 <TOKEN>"),
    # key=value secrets: password: hunter2, api_key = "...", secret=...
    ("assignment", re.compile(
        r"(?i)\b(password|passwd|pwd|secret|api[_-]?key|access[_-]?key|secret[_-]?key|token|密码|密钥)"
        r"(\s*[:=：]\s*)[\"']?[^\s\"'，。,;]{6,}[\"']?"), r"\1\2<SECRET>"),
    ("email", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "<EMAIL>"),
    # Chat mentions: Slack <@U123> / <@U123|name>, Discord <@123> / <@!123>, roles <@&123>, channels.
    ("role mention", re.compile(r"<@&\d+>|<!subteam\^[A-Z0-9]+(?:\|[^>]*)?>"), "<ROLE>"),
    ("user mention", re.compile(r"<@!?[A-Za-z0-9]+(?:\|[^>]*)?>"), "<USER>"),
    ("channel mention", re.compile(r"<#[A-Za-z0-9]+(?:\|[^>]*)?>"), "<CHANNEL>"),
    # @handles (e-mail addresses are already gone). ASCII only: \w would swallow the
    # Chinese sentence after "@张三".
    ("handle", re.compile(r"(?<![\w@<])@[A-Za-z0-9_][A-Za-z0-9_.-]*[A-Za-z0-9_]"), "<USER>"),
    # Phone numbers: international (+86 138 0013 8000), North American with separators,
    # Chinese mobile (13800138000) and landline (010-12345678).
    ("phone", re.compile(
        r"\+\d{1,3}[\s.-]?\(?\d{1,4}\)?(?:[\s.-]?\d{2,4}){2,4}(?!\d)"
        r"|(?<!\d)\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?!\d)"
        r"|(?<!\d)1[3-9]\d[\s-]?\d{4}[\s-]?\d{4}(?!\d)"
        r"|(?<!\d)0\d{2,3}-\d{7,8}(?!\d)"), "<PHONE>"),
    # Long hex strings: API secrets, webhook signing secrets, session ids. 32+ hex
    # digits is past any number a sentence would hold (a git sha-1 goes too: fine).
    ("hex secret", re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{32,}(?![0-9A-Za-z])"), "<SECRET>"),
]

KINDS = [name for name, _, _ in _RULES]


def scrub(text: str) -> str:
    """The text with every e-mail, phone number, token, key, secret and user mention replaced by a placeholder."""
    if not text:
        return text or ""
    for _, pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return text


def findings(text: str) -> list[tuple[str, str]]:
    """(kind, matched text) for everything `scrub` would replace, in rule order: for review screens and tests."""
    found = []
    for name, pattern, placeholder in _RULES:
        found += [(name, m.group(0)) for m in pattern.finditer(text or "")]
        text = pattern.sub(placeholder, text or "")
    return found
