"""Nothing unauthenticated is parsed: the served Slack endpoint under hypothesis, over real HTTP on loopback.

The fuzzing itself is tests/reliability/fuzz_slack.py (the measuring
command); here it runs with n=1000 per class, and the adversary's own
requests are replayed one by one. Real: bolt serving on 127.0.0.1, the
command layer, SQLite. Fake: Slack's Web API (slack_recorder), the model.
"""
from __future__ import annotations

import time
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest

import fuzz_slack  # tests/reliability/, next to this file
from bot.chat.slack import app as slack_app, http as slack_http


def test_1000_unsigned_requests_all_get_401_and_1000_signed_malformed_ones_never_a_500(tmp_path):
    figures = fuzz_slack.run(n=1000, seed_value=10, db_path=tmp_path / "bot.db")
    assert figures["unsigned"] == {"401": 1000}, figures
    assert sum(figures["signed"].values()) == 1000
    assert figures["signed_5xx_or_no_answer"] == 0, figures
    assert set(figures["signed"]) <= {"200", "400", "404", "413"}, figures
    # The signed ones reached every outcome: the generator is not stuck on one kind of body.
    assert {"200", "400", "413"} <= set(figures["signed"]), figures
    assert figures["good_request_after"] == {"status": 200, "answered": True}


def _ts() -> str:
    return str(int(time.time()))


def _signed(body: bytes, ts: str | None = None, ctype: str = "application/json") -> dict:
    ts = ts or _ts()
    return {"Content-Type": ctype, "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": fuzz_slack.sign(body, ts)}


NESTED_400KB = ("[" * 200_000 + "]" * 200_000).encode()
PAYLOAD_100K = ("payload=" + quote("[" * 100_000 + "]" * 100_000)).encode()


def test_the_adversarys_requests_get_401_unsigned_and_400_or_413_signed(tmp_path):
    with fuzz_slack.served(tmp_path / "bot.db") as (port, recorder, db):
        now = _ts()
        unsigned = {
            "400 KB nested JSON, no headers": (NESTED_400KB, {"Content-Type": "application/json"}),
            "payload= nested 100k deep, no headers": (PAYLOAD_100K, {}),
            '{"event":5}, no headers': (b'{"event":5}', {"Content-Type": "application/json"}),
            # A correct HMAC over a timestamp that int() and str.isdigit() accept: not ASCII digits, refused.
            "timestamp ²": (b'{"event":5}', _signed(b'{"event":5}', "²")),
            "timestamp ①": (b'{"event":5}', _signed(b'{"event":5}', "①")),
            "timestamp in Arabic-Indic digits": (b"{}", _signed(b"{}", now.translate(fuzz_slack.UNICODE_DIGITS[0]))),
            "timestamp with a space": (b"{}", _signed(b"{}", " " + now)),
            "stale by 301 s": (b"{}", _signed(b"{}", str(int(now) - slack_http.MAX_AGE_S - 1))),
            "signature over a different body": (b'{"a":1}', _signed(b'{"a":2}')),
            "non-ASCII signature": (b"{}", {**_signed(b"{}"), "X-Slack-Signature": "v0=é"}),
            "gzip-encoded": (b"{}", {**_signed(b"{}"), "Content-Encoding": "gzip"}),
            "3 MiB with a forged signature": (b"x" * (3 << 20), _signed(b"y")),
        }
        for case, (body, headers) in unsigned.items():
            assert fuzz_slack.post(port, body, headers) == 401, case
        signed = {
            "400 KB nested JSON": (NESTED_400KB, "application/json", 400),
            "payload= nested 100k deep": (PAYLOAD_100K, "application/x-www-form-urlencoded", 400),
            f"JSON nested {slack_http.MAX_DEPTH + 1} deep": (
                ("[" * (slack_http.MAX_DEPTH + 1) + "]" * (slack_http.MAX_DEPTH + 1)).encode(), "application/json", 400),
            '{"event":5}': (b'{"event":5}', "application/json", 400),
            "command as a list": (b'{"command": ["/ask"]}', "application/json", 400),
            "block_actions with no actions": (b'{"type": "block_actions", "actions": []}', "application/json", 400),
            "an event without a type": (b'{"type": "event_callback", "event": {}}', "application/json", 400),
            "payload= not JSON": (b"payload=%7Bnope", "application/x-www-form-urlencoded", 400),
            "bad UTF-8": (b'{"type": "\xff"}', "application/json", 400),
            "a number past int's digit limit": (b'{"type": "x", "n": ' + b"9" * 5000 + b"}", "application/json", 400),
            "2 MiB": (b"{" + b" " * (2 << 20) + b"}", "application/json", 413),
        }
        for case, (body, ctype, status) in signed.items():
            assert fuzz_slack.post(port, body, _signed(body, ctype=ctype)) == status, case
        assert db.execute("select count(*) from answers").fetchone()[0] == 0
        assert db.execute("select count(*) from deliveries").fetchone()[0] == 0
        assert fuzz_slack.good_ask(port, recorder.response_url("after")) == 200
        assert fuzz_slack.wait_answered(db, 0)
        # The refusal says which header is wrong, in plain text, so an operator can fix a clock or secret.
        stale = urllib.request.Request(f"http://127.0.0.1:{port}{slack_app.EVENTS_PATH}", data=b"{}", method="POST",
                                       headers=_signed(b"{}", "1000"))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(stale, timeout=10)
        assert refused.value.code == 401
        assert refused.value.read().decode() == "invalid request: missing, malformed or stale X-Slack-Request-Timestamp"
