"""Rate limits shared through a real redis-server: two replicas allow the limit once, not twice."""
from __future__ import annotations

from bot import config
from bot.guard import Admission, Rate, SharedWindows


def test_two_replicas_on_one_redis_share_the_users_and_the_channels_limit(redis_clean):
    a = Admission(Rate(3, 60), Rate(5, 60), queue_max=None, shared=SharedWindows(redis_clean))
    b = Admission(Rate(3, 60), Rate(5, 60), queue_max=None, shared=SharedWindows(redis_clean))
    # Alternating replicas, as a load balancer would: three questions in all, not three each.
    assert [r.admit("slack", "U1", "C1") for r in (a, b, a)] == [None, None, None]
    for replica in (b, a):
        busy = replica.admit("slack", "U1", "C1")
        assert busy is not None and busy.reason == "user" and 55 <= busy.seconds <= 60
        assert "busy, try again in" in busy.text
    # The channel's window is shared too: two other people use up its remaining two places.
    assert a.admit("slack", "U2", "C1") is None and b.admit("slack", "U3", "C1") is None
    busy = b.admit("slack", "U4", "C1")
    assert busy is not None and busy.reason == "channel"
    assert a.admit("slack", "U4", "C2") is None  # another channel, another window
    assert a.admit("discord", "U1", "C1") is None  # another platform's U1 is another person


def test_without_redis_each_replica_limits_on_its_own(redis_clean):
    """The contrast (the in-memory path, as before): two replicas allow twice the limit."""
    a, b = Admission(Rate(3, 60), None, queue_max=None), Admission(Rate(3, 60), None, queue_max=None)
    admitted = sum(r.admit("slack", "U1") is None for r in (a, b) * 4)
    assert admitted == 6


def test_from_settings_shares_through_bot_redis_url_and_fails_open_when_redis_is_gone(redis_clean):
    settings = config.Settings.load({"BOT_REDIS_URL": redis_clean, "BOT_RATE_USER": "2/60"})
    a, b = Admission.from_settings(settings), Admission.from_settings(settings)
    assert a.shared is not None and a.admit("slack", "U9") is None and b.admit("slack", "U9") is None
    assert b.admit("slack", "U9").reason == "user"
    # A Redis that cannot be reached: the replica keeps answering, limited by its own windows.
    gone = Admission.from_settings(config.Settings.load({"BOT_REDIS_URL": "redis://127.0.0.1:1/0",
                                                        "BOT_RATE_USER": "2/60"}))
    assert [gone.admit("slack", "U9") is None for _ in range(3)] == [True, True, False]
    assert gone.shared is not None  # it tries Redis again on the next question
