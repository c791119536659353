"""IP addresses in text, for `privacy.scrub`: `find(text)` yields the spans of IPv4 and IPv6 addresses.

Candidates are found by shape and each is validated by the stdlib `ipaddress`, so a dotted number that cannot
be an address (`999.1.2.3`, `15.03.2024`), a time (`10:30:45`) or a MAC address is never one. Left alone,
because they say nothing about which host anyone uses: versions and clause numbers (by the word before or
after), loopback and unspecified addresses, netmasks, and network ranges written with their prefix.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Iterator

Span = tuple[int, int]

_IPV4 = re.compile(r"(?<![0-9.])[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9]|\.[0-9])(/[0-9]{1,2}(?![0-9]))?")
# Hex groups and colons, at least two colons, optionally ending in a dotted IPv4 (`::ffff:192.0.2.1`).
_IPV6 = re.compile(r"(?<![0-9A-Za-z_:.])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{2,39}"
                   r"(?:(?<=:)[0-9]{1,3}(?:\.[0-9]{1,3}){3})?(?![0-9A-Za-z_])(/[0-9]{1,3}(?![0-9]))?")
# `v1.2.3.4`, `版本 1.2.3.4`, `version: 10.0.19041.1`: a version, not an address; `第 2.3.4.1 条`, `§ 1.2.3.4`,
# `2.3.4.1 节`: a clause of a document (numbered sections are everywhere in a knowledge base).
_VERSION_BEFORE = re.compile(r"(?i)(?:(?<![A-Za-z])v|ver\.?|version|release|build|firmware|版本号?|固件|升级到|更新到|内核|"
                             r"第|§|section|clause|chapter|参见|见)\s*[:=]?\s*$")
_SECTION_AFTER = re.compile(r"\s*(?:节|条|章|款|项|小节|部分)")


def find(text: str) -> Iterator[Span]:
    """Spans of the addresses in `text` (a zone `%eth0`, a port or brackets around one stay outside);
    `127.0.0.1`, `0.0.0.0`, `::1`, `255.255.255.0`, `10.0.0.0/8`, `v1.2.3.4`, `版本 1.2.3.4` are not among them."""
    for pattern, kind in ((_IPV4, ipaddress.IPv4Address), (_IPV6, ipaddress.IPv6Address)):
        for m in pattern.finditer(text):
            cand = m.group(0)[:m.start(1) - m.start()] if m.group(1) else m.group(0)
            if kind is ipaddress.IPv6Address:
                cand = cand.rstrip(":") if cand.endswith(":") and not cand.endswith("::") else cand
                if not re.search(r"[0-9]", cand) and cand.count(":") < 3:
                    continue  # `a::b` reads as code (`ns::fn`), not an address
            if kind is ipaddress.IPv4Address:  # zero-padded octets (`192.168.001.010`, as some logs print them)
                cand_plain = ".".join(str(int(part)) for part in cand.split("."))
            else:
                cand_plain = cand
            try:
                addr = kind(cand_plain)
            except ValueError:
                continue
            if addr.is_loopback or addr.is_unspecified or cand_plain.startswith("255."):
                continue
            if m.group(1):
                try:
                    ipaddress.ip_network(m.group(0))  # strict: host bits zero, so a range, not a host
                    continue
                except ValueError:
                    pass
            if (_VERSION_BEFORE.search(text, max(0, m.start() - 12), m.start())
                    or _SECTION_AFTER.match(text, m.start() + len(cand))):
                continue
            yield m.start(), m.start() + len(cand)
