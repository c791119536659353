"""Personal data out of text before it can enter a training set: `scrub(text) -> text`.

Each kind of personal or secret data is replaced by a placeholder naming
the kind (`<EMAIL>`, `<PHONE>`, `<TOKEN>`, `<SECRET>`, `<USER>`, `<ROLE>`,
`<CHANNEL>`), so a trained adapter learns that something stood there but
never what. Stored feedback keeps its original text (a reviewer needs it to
judge a correction, and `feedback.forget` deletes it); only what a snapshot
writes, and so what the model sees in training, is scrubbed.

Where a well-kept library knows a kind, it decides: phone numbers are
whatever libphonenumber (`phonenumbers.PhoneNumberMatcher`, leniency VALID)
finds with an explicit + in any region or in CN or US national format,
full-width digits included; keys are detect-secrets' own plugin patterns
(AWS, Slack, GitHub, GitLab, OpenAI, Stripe, JWT, private keys, ...) plus
its Shannon-entropy measure for unlabelled secrets. The rest are rules
here: e-mail with Unicode local parts and IDN domains, chat mentions,
`keyword = value` assignments in English and Chinese (`密钥是…`), identity
numbers (mainland, Hong Kong and Taiwan by their check characters, passports
after the word; `id_numbers`), passwords
in URLs, IP addresses (IPv4 and IPv6, each candidate validated by the
stdlib `ipaddress`).

Every rule reads a normalised view of the text (`textview`: NFKC, zero-width
characters dropped, a key wrapped onto two lines joined), so full-width
`１３８…`, `＠`, `．` and a U+200B inside an address are found; what is found is
mapped back and replaced in the original, which otherwise stays as written.

Text here mixes Chinese and ASCII with no space between them (`令牌xoxb-…`),
and Python's `\\b` sees no boundary between 牌 and x (both are word
characters), so token rules are compiled with re.ASCII and boundaries are
ASCII look-arounds.

The patterns err towards scrubbing: a false positive costs a few characters
of a training example, a false negative leaks a credential into weights.
Ordinary numbers (years, prices, dates, versions, counts) are left alone:
libphonenumber accepts only numbers valid in a numbering plan.
"""
from __future__ import annotations

import functools
import re
from typing import Callable, Iterator

from bot.learning import id_numbers, ip_addresses, textview

Span = tuple[int, int]

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
# Latin with accents, Greek, Cyrillic: what a local part or domain label is written in besides CJK.
_SCRIPTS = "\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff"
_LETTERS = "A-Za-z0-9" + _SCRIPTS
# An apostrophe between letters belongs to the name (`o'brien@…`); a quote opening the address does not.
_LOCAL_RUN = re.compile(f"(?:[{_LETTERS}._%+-]|(?<=[{_LETTERS}])'(?=[{_LETTERS}]))+$")
_CJK_RUN = re.compile(f"[{_CJK}]+$")
# A local part of CJK names joined by separators (`张三.李四@`): the segments after the first are all address.
_CJK_DOTTED = re.compile(f"[{_CJK}]+((?:[._%+-][{_LETTERS}{_CJK}]+)+)$")
# A CJK name before @ is cut after the last word that ends a sentence part ("请联系张三@…" keeps 请联系); a run
# with no such word is taken whole when it is longer than this (a long name goes whole, never its first characters).
CJK_LOCAL_MAX = 4
# Words that end a Chinese sentence part right before a name: 发给/联系/是/到 ... (给张三@… keeps 给).
_CJK_LEAD_WORDS = ("联系", "邮箱", "邮件", "地址", "发给", "写给", "是", "给", "为", "至", "到", "向", "找", "请", "发", "寄", "的")
# IDN top-level domains in CJK script; an open-ended CJK TLD would swallow the rest of the sentence.
_CJK_TLDS = ("中国", "中國", "公司", "网络", "網絡", "香港", "台湾", "台灣", "新加坡", "在线", "商城", "集团", "网址", "网店",
             "手机", "政务", "公益", "コム", "みんな", "한국")
_DOMAIN = re.compile(
    f"@((?:[{_LETTERS}{_CJK}](?:[{_LETTERS}{_CJK}-]*[{_LETTERS}{_CJK}])?\\.)+)"
    f"(xn--[a-z0-9-]{{2,59}}|{'|'.join(_CJK_TLDS)}|[A-Za-z{_SCRIPTS}]{{2,63}})(?![{_LETTERS}-])")

_ASCII_EDGE = r"(?<![A-Za-z0-9_])"  # a boundary that a CJK character next to it does not hide
# Secret words of detect-secrets' KeywordDetector, a few more, and their Chinese forms.
_EN_KEYWORDS = (r"[A-Za-z_]*(?:api[_ -]?key|auth[_ -]?key|access[_ -]?key|secret|passw(?:or)?d|passphrase|pwd|token|"
                r"private[_ -]?key|client[_ -]?key|db_?pass|credential)[A-Za-z_]*|contraseña|contrasena")
# Simplified and Traditional forms (Hong Kong and Taiwan write 密碼, 金鑰, 憑證).
_ZH_KEYWORDS = "访问密钥|私钥|秘钥|密钥|密码|口令|令牌|授权码|凭证|凭据|密碼|密鑰|金鑰|私鑰|憑證|憑據|授權碼|通行碼|權杖"
# What stands between the word and the value besides a colon: a copula or a verb of setting (`密码改成了…`).
_ZH_LINK = "是|为|為|改成了?|改为|改為|设为|设置为|設為|設定為|换成了?|換成了?|变成了?|變成了?|就是|都是|也是"
# Not a separator (the view turns `：` into `:`, which must not start a value: `密码：<SECRET>` stays as it is).
_VALUE = r"(?![:=])(?!<[A-Z]+>)[\"'`]?((?:(?![\"'`,;])[\x21-\x7e]){6,})"

_TOKEN_RULES: list[tuple[str, re.Pattern, str]] = [
    ("private key", re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END [A-Z0-9 ]*PRIVATE "
                               r"KEY(?: BLOCK)?-----|\Z)", re.S), "<SECRET>"),
    ("slack token", re.compile(_ASCII_EDGE + r"(?:xox[abeoprs]-[A-Za-z0-9-]{8,}|xapp-\d-[A-Za-z0-9-]{8,})", re.A),
     "<TOKEN>"),
    ("api key", re.compile(_ASCII_EDGE + r"sk-(?:[a-z]+-)?[A-Za-z0-9_-]{16,}", re.A), "<TOKEN>"),
    ("github token", re.compile(_ASCII_EDGE + r"(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})", re.A),
     "<TOKEN>"),
    ("aws key", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[0-9A-Z]{16}(?![A-Z0-9])"), "<TOKEN>"),
    ("google key", re.compile(_ASCII_EDGE + r"AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])", re.A), "<TOKEN>"),
    ("jwt", re.compile(_ASCII_EDGE + r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", re.A), "<TOKEN>"),
    ("bearer", re.compile(r"(?i)(?<![A-Za-z0-9_])(?:bearer|basic)\s+([A-Za-z0-9._~+/=-]{16,})", re.A), "<TOKEN>"),
    # Basic credentials are short (`dXNlcjpwYXNz` is user:pass): a shorter value counts when it reads as base64
    # (a digit, padding, or a capital after a small letter), not as a word (`Basic Authentication`).
    ("bearer", re.compile(r"(?<![A-Za-z0-9_])(?:Basic|basic|BASIC)\s+(?=\S*(?:[0-9=+/]|[a-z][A-Z]))([A-Za-z0-9+/=]{8,})",
                          re.A), "<TOKEN>"),
    # scheme://user:password@host, the user possibly empty (`redis://:pw@host`), the password in any script.
    ("url password", re.compile(r"(?i)(?<![A-Za-z0-9+.-])[a-z][a-z0-9+.-]*://[^\s/:@]*:([^\s/@]+)@"), "<SECRET>"),
    ("assignment", re.compile(rf"(?i)(?<![A-Za-z0-9])(?:{_EN_KEYWORDS})[\"']?(?:\s+is)?\s*(?:[:=：]|:=|=>|(?:是|为|為)\s*[:=：]?)\s*{_VALUE}"),
     "<SECRET>"),
    # `my password is hunter22`: with no colon, the value must look like one (a digit or a symbol), or
    # `the password is required` would go.
    ("assignment", re.compile(rf"(?i)(?<![A-Za-z0-9])(?:{_EN_KEYWORDS})\s+is\s+(?=\S*[0-9!@#$%^&*])(?![:=]){_VALUE}"),
     "<SECRET>"),
    # Chinese: 密码是…, 密钥：…, or the value right after the word (密码hunter22): the value must be ASCII,
    # so 密码错误 stays.
    # A copula and a colon may both stand there (`密码是：…`).
    ("assignment", re.compile(rf"(?:{_ZH_KEYWORDS})\s*(?:{_ZH_LINK})?\s*[:=：]?\s*{_VALUE}"), "<SECRET>"),
]
_MENTION_RULES: list[tuple[str, re.Pattern, str]] = [
    # Chat mentions: Slack <@U123> / <@U123|name>, Discord <@123> / <@!123>, roles <@&123>, channels.
    ("role mention", re.compile(r"<@&\d+>|<!subteam\^[A-Z0-9]+(?:\|[^>]*)?>"), "<ROLE>"),
    ("user mention", re.compile(r"<@!?[A-Za-z0-9]+(?:\|[^>]*)?>"), "<USER>"),
    ("channel mention", re.compile(r"<#[A-Za-z0-9]+(?:\|[^>]*)?>"), "<CHANNEL>"),
    # @handles (e-mail addresses are already gone) in Latin, Greek, Cyrillic, ... (`@José`, `@Мария`); not an
    # npm scope (`@types/node`), nor a time or a price (`@10:30`, `@5 each`): a handle starts with a letter. CJK handles (`@张三`) are `_cjk_handles`.
    ("handle", re.compile(rf"(?<![A-Za-z0-9_@<>.{_SCRIPTS}])@(?!(?:here|channel|everyone|all)(?![A-Za-z0-9_.-]))"
                          rf"[^\W\d{_CJK}](?:[^\W{_CJK}]|[.-](?=[^\W{_CJK}]))*(?![^\W{_CJK}]|/)"), "<USER>"),
]
# Broadcasts name nobody: `@所有人` (WeChat, DingTalk, Feishu), `@全体成员`; `@here`/`@channel`/`@everyone` above.
_CJK_BROADCASTS = ("所有人", "全体成员", "全体", "全员", "大家")
# A CJK handle has no end mark (`@李四处理一下`): it ends at a space or punctuation, or before a word that goes on
# with the sentence (at least two name characters first); with none, the run goes whole.
_CJK_HANDLE = re.compile(rf"(?<![A-Za-z0-9_@<>.{_SCRIPTS}])@([{_CJK}][{_CJK}·・]*)")
_CJK_FOLLOW_WORDS = ("请", "帮", "看", "处理", "负责", "来", "说", "你", "您", "的", "在", "和", "跟", "与", "同学", "老师",
                     "老板", "经理", "总", "一下", "吗", "呢", "吧", "了", "也", "都", "已", "去", "把", "给", "是", "对",
                     "确认", "回复", "审核", "跟进", "知道", "有空", "明天", "今天", "辛苦", "谢谢")


def _cjk_handles(text: str) -> Iterator[Span]:
    for m in _CJK_HANDLE.finditer(text):
        name = m.group(1)
        if name.startswith(_CJK_BROADCASTS):
            continue
        cuts = [i for i in range(2, len(name)) if name.startswith(_CJK_FOLLOW_WORDS, i)]
        yield m.start(), m.start(1) + (cuts[0] if cuts else len(name))
# 32+ hex digits is past any number a sentence would hold (a git sha-1 goes too: fine). Only hex digits
# bound it: a label glued to the front (`会话IDe9e0…`) must not hide it; the label's hex-looking end goes too.
# Mainland China resident identity numbers: 6-digit area, birth date, sequence, check digit (0-9 or X).
# The area, birth-date and sequence groups may be written apart (`440308 19900101 1234`).
_CN_ID_SHAPE = re.compile(r"[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx]")
# 18 characters, grouped any way (`440308 19900101 1234`, `330102 1985 0612 3456`), then the shape checked.
_CN_ID_RUN = re.compile(r"(?<![0-9])[1-9](?:[ -]?[0-9]){16}[ -]?[0-9Xx](?![0-9A-Za-z])")


def _cn_ids(text: str) -> Iterator[Span]:
    for m in _CN_ID_RUN.finditer(text):
        if _CN_ID_SHAPE.fullmatch(re.sub(r"[ -]", "", m.group(0))):
            yield m.span()
# A card number named as one is scrubbed even when it fails the Luhn check (mistyped, or made up to show the format).
_CARD_LABEL = re.compile(r"(?i)(?:卡号|银行卡|信用卡|借记卡|储蓄卡|工资卡|card(?:\s*(?:number|no\.?|#))?)\s*(?:号码?)?\s*[:=]?\s*$")
_CARD_RUN = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
_HEX = ("hex secret", re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{32,}(?![0-9a-fA-F])"), "<SECRET>")
_B64_RUN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/=_-]{20,}(?![A-Za-z0-9+/=_-])")
PHONE_REGIONS = ("CN", "US")  # national formats tried; any region's number with a leading + is found by both
# Hong Kong, Macau and Singapore numbers are 8 bare digits and Taiwan's start with the trunk 0: read in those
# regions' national formats only right after a word that says a phone number follows (a count or an order
# number stays).
PHONE_REGIONS_IN_CONTEXT = ("HK", "TW", "MO", "SG")
# The word may be a few characters before the number (`手機號碼：`, `电话号码是`), never past another digit.
_PHONE_WORDS = (r"(?i)(?:电话|手机|热线|致电|联系|座机|号码|手提|電話|手機|號碼|聯繫|聯絡|香港|台湾|台灣|澳门|澳門|新加坡|"
                r"微信|whatsapp|phone|tel|mobile|call|cell|fax|传真|傳真|hotline)")
_PHONE_CONTEXT = re.compile(_PHONE_WORDS + r"[^0-9]{0,6}$")
_PHONE_WORD = re.compile(_PHONE_WORDS)  # anywhere in the text: worth three more matchers


def _spans(pattern: re.Pattern) -> Callable[[str], Iterator[Span]]:
    def find(text: str) -> Iterator[Span]:
        for m in pattern.finditer(text):
            # A pattern with a value group (`password: x`, `Bearer x`) keeps its label: only the value goes.
            yield (m.start(1), m.end(1)) if m.lastindex and m.start(1) > m.start(0) else m.span()
    return find


@functools.lru_cache(maxsize=1)
def _detect_secrets_patterns() -> list[re.Pattern]:
    """The regexes of detect-secrets' plugins, minus the noisy ones (IP addresses, Artifactory's `AP…` words)."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    skip = {"Public IP (ipv4)", "Artifactory Credentials"}
    patterns = []
    for kind, cls in get_mapping_from_secret_type_to_class().items():
        if kind not in skip:
            patterns += list(getattr(cls(), "denylist", ()) or ())
    return patterns


_KEY_TAIL = re.compile(r"[A-Za-z0-9._+/=-]*")


def _detect_secrets(text: str) -> Iterator[Span]:
    for pattern in _detect_secrets_patterns():
        for start, end in _spans(pattern)(text):
            # Some of its patterns stop early (JWT's last part is lazy): a key runs to the end of its characters.
            yield start, _KEY_TAIL.match(text, end).end()


def _entropy(text: str) -> Iterator[Span]:
    """Unlabelled high-entropy strings (AWS secret keys, random passwords), by detect-secrets' own measure and
    limit; letters and digits both, so long plain words and numbers stay."""
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString

    plugin = Base64HighEntropyString()
    for m in _B64_RUN.finditer(text):
        s = m.group(0)
        if (re.search(r"[A-Za-z]", s) and re.search(r"\d", s)
                and plugin.calculate_shannon_entropy(s) >= plugin.entropy_limit):
            yield m.span()


# `name [at] example [dot] com`, `name(at)example.org`: an address written to dodge scrapers is still one.
# Only the bracketed forms: a bare "at"/"dot" is too common a word.
_AT_WORD = re.compile(r"(?i)(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+\s*[\[({<]\s*at\s*[\])}>]\s*[A-Za-z0-9-]+"
                      r"(?:\s*(?:[\[({<]\s*dot\s*[\])}>]|\.)\s*[A-Za-z0-9-]+)+")


def _emails(text: str) -> Iterator[Span]:
    """E-mail addresses with Latin, Greek, Cyrillic or CJK local parts and IDN domains.

    The left edge is found by walking back from @: a Latin-script run, or
    else the CJK run, cut after the last word that ends the sentence part
    before a name (`请联系张三@…` keeps `请联系`); CJK names
    joined by separators (`张三.李四@`, `张三_zs@`) are taken whole.""" 
    for m in _DOMAIN.finditer(text):
        at = m.start()
        head = text[:at]
        start = at
        if dotted := _CJK_DOTTED.search(head):  # before the Latin run, which would stop at the CJK name
            start = dotted.start(1) - len(_cjk_name(head[:dotted.start(1)]))
        elif latin := _LOCAL_RUN.search(head):
            start = latin.start()
        else:  # a CJK name, or nothing (no local part: not an address)
            start -= len(_cjk_name(head))
        if start < at:
            yield start, m.end()


def _cjk_name(head: str) -> str:
    """The name-like CJK local part at the end of `head`: the CJK run, cut after the last word that
    ends the sentence part before a name (`请联系张三` gives `张三`)."""
    cjk = _CJK_RUN.search(head)
    if not cjk:
        return ""
    # The whole run, then cut: a name longer than CJK_LOCAL_MAX (阿卜杜拉买买提) must not keep its first characters,
    # and when no lead word says where the sentence ends, a few words of it go too (errs towards scrubbing).
    name = cjk.group(0)
    for word in _CJK_LEAD_WORDS:
        cut = name.rfind(word)
        if cut >= 0 and cut + len(word) < len(name):
            name = name[cut + len(word):]
    return name


_CITATION = re.compile(r"\[\d{1,3}\]")
# Only after a whole local number (7 or 8 digits, or 4+4): `+86-138-0013-8000` has no extension.
_DASH_EXTENSION = re.compile(r"(?:(?<=[^0-9][0-9]{7})|(?<=[^0-9][0-9]{8})|(?<=[0-9]{4}[ -][0-9]{4}))-[0-9]{1,5}(?![0-9-])")
# libphonenumber reads `255.255.255.0` as a number; every address is gone before phones are looked for, so a
# dotted quad still here is a netmask, a version or a clause.
_DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")


def _phones(text: str) -> Iterator[Span]:
    import phonenumbers

    # libphonenumber reads a citation right after a number (`0199[1]`) as part of it and then rejects the
    # whole; blanking citations (same length, so offsets hold) lets it see the number.
    masked = _CITATION.sub(lambda m: " " * len(m.group(0)), text)
    # An extension written with a dash (`010-62345678-8001`, as Chinese switchboards are) makes the whole
    # invalid; blanked the same way, the number itself is found (the extension alone says little).
    masked = _DASH_EXTENSION.sub(lambda m: " " * len(m.group(0)), masked)
    for region in PHONE_REGIONS:
        for m in phonenumbers.PhoneNumberMatcher(masked, region, leniency=phonenumbers.Leniency.VALID):
            if not _DOTTED_QUAD.fullmatch(m.raw_string):
                yield m.start, m.end
    for region in PHONE_REGIONS_IN_CONTEXT if _PHONE_WORD.search(masked) else ():
        for m in phonenumbers.PhoneNumberMatcher(masked, region, leniency=phonenumbers.Leniency.VALID):
            if _PHONE_CONTEXT.search(masked, max(0, m.start - 12), m.start):
                yield m.start, m.end


def _cards(text: str) -> Iterator[Span]:
    """Payment card numbers: 13-19 digits (spaces or dashes between groups) that pass the Luhn check, as
    every issuer's do; an order number or a count rarely does (1 in 10 by chance, so only long runs)."""
    for m in _CARD_RUN.finditer(text):
        digits = [int(c) for c in m.group(0) if c.isdigit()]
        total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
        if total % 10 == 0 or _CARD_LABEL.search(text, max(0, m.start() - 16), m.start()):
            yield m.span()


def _rules() -> list[tuple[str, Callable[[str], Iterator[Span]], str]]:
    # Order matters: keys first (they can contain @, digits and hex), then e-mail (before
    # @handles), mentions, phones, long hex and high-entropy leftovers.
    return ([(name, _spans(p), ph) for name, p, ph in _TOKEN_RULES[:1]]
            + [("detect-secrets", _detect_secrets, "<TOKEN>")]
            + [(name, _spans(p), ph) for name, p, ph in _TOKEN_RULES[1:]]
            + [("email", _emails, "<EMAIL>"), ("email", _spans(_AT_WORD), "<EMAIL>")]
            + [(name, _spans(p), ph) for name, p, ph in _MENTION_RULES] + [("handle", _cjk_handles, "<USER>")]
            + [("ip address", ip_addresses.find, "<IP>")]
            + [("id number", _cn_ids, "<ID>"), ("id number", id_numbers.find, "<ID>"),
               ("card number", _cards, "<CARD>"),
               ("phone", _phones, "<PHONE>"), (_HEX[0], _spans(_HEX[1]), _HEX[2]),
               ("high entropy", _entropy, "<SECRET>")])


KINDS = list(dict.fromkeys(name for name, _, _ in _rules()))


def _apply(text: str, find: Callable[[str], Iterator[Span]], placeholder: str) -> tuple[str, list[str]]:
    """`text` with every span `find` reports in its normalised view replaced (mapped back to the original,
    overlaps merged), and the replaced strings."""
    seen = textview.view(text)
    spans: list[list[int]] = []
    for start, end in sorted({seen.original(s, e) for s, e in find(seen.text) if e > s}):
        if spans and start < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        elif end > start:
            spans.append([start, end])
    if not spans:
        return text, []
    out, pos = [], 0
    for start, end in spans:
        out += [text[pos:start], placeholder]
        pos = end
    return "".join(out) + text[pos:], [text[s:e] for s, e in spans]


def findings(text: str) -> list[tuple[str, str]]:
    """(kind, matched text) for everything `scrub` would replace, in rule order: for review screens and tests."""
    text = text or ""
    found = []
    for name, find, placeholder in _rules():
        text, hits = _apply(text, find, placeholder)
        found += [(name, h) for h in hits]
    return found


def scrub(text: str) -> str:
    """The text with every e-mail, phone number, token, key, secret and user mention replaced by a placeholder."""
    text = text or ""
    for _, find, placeholder in _rules():
        text, _ = _apply(text, find, placeholder)
    return text
