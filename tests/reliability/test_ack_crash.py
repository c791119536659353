"""kill -9 in the middle of a click burst against the real `serve`: nothing acknowledged is lost.

A small run of tests/reliability/ack_crash.py (the README's figures come from
its full runs): 60 signed 👍/👎/correction requests and 3 questions against
`python -m bot serve` with the tiny model, killed once about half the clicks
are acknowledged, restarted, every unacknowledged request (and a sample of
the acknowledged ones) resent with X-Slack-Retry-Num.
"""
from __future__ import annotations

import asyncio

import pytest

import ack_crash  # tests/reliability/, next to this file


@pytest.mark.slow
def test_acknowledged_clicks_survive_kill_9_resends_count_once_and_no_placeholder_is_left(tiny_model_dir):
    out = asyncio.run(ack_crash.one_run(1, clicks=60, questions=3, model="tiny", seed=6))
    print(out)  # the figures, with -s
    assert out["serve_exit"] == -9 and out["killed_after_acks"] is not None
    assert 0 < out["acknowledged"] < 60 and out["not_acknowledged"] > 0  # the kill came midway
    assert out["acknowledged_lost"] == 0
    assert out["duplicate_rows"] == 0 and out["duplicate_replies"] == 0
    # Every click not stored before the restart was stored by its resend; none is missing in the end.
    assert out["resends_processed"] > 0 and out["missing_after_resend"] == 0
    # The questions' placeholders all ended as an answer: none left "Thinking…".
    assert out["placeholders"] == 3 and out["placeholders_unanswered"] == 0


def test_the_placeholder_count_notices_one_left_thinking():
    """The check is not vacuous: a placeholder with no update, or only a streaming frame, is counted."""
    from slack_recorder import Call, Recorder

    rec = Recorder()
    for ts in ("1.1", "1.2", "1.3"):
        rec.calls.append(Call("chat.postMessage", {"text": ack_crash.THINKING}, reply={"ts": ts}))
    rec.calls.append(Call("chat.update", {"ts": "1.1", "text": "done", "blocks": [{}]}))
    rec.calls.append(Call("chat.update", {"ts": "1.2", "text": "half an answer ▍"}))
    assert ack_crash._unanswered_placeholders(rec) == (3, 2)
    rec.calls.append(Call("chat.update", {"ts": "1.2", "text": "Sorry, I was restarted while answering this"}))
    rec.calls.append(Call("chat.update", {"ts": "1.3", "text": "fallback", "blocks": [{}]}))
    assert ack_crash._unanswered_placeholders(rec) == (3, 0)
