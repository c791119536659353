"""Feedback on answers, and who may make it training data: votes, corrections, review, opt-out, forget.

A vote or correction is stored against the answer id with the person and
the time. A correction from someone trusted (`BOT_TRUSTED_REVIEWERS`, or the
operator at the CLI) is accepted at once; anyone else's waits for an admin to
accept or reject it. Stored text stays as written (the reviewer must see what
was said); `privacy.scrub` runs when a snapshot turns it into training data.
People can opt out of training (their questions are still answered) and can
have everything they asked, rated and corrected deleted.

Every write takes an optional `delivery` key (a Slack trigger id, a Discord
interaction id): it is stored in the same transaction as the write, so a
platform's resend of a delivery that was stored raises `Duplicate` and
changes nothing, while a resend of one that died before its commit is
processed as new.
"""
from __future__ import annotations

from collections.abc import Sequence

from bot import store
from bot.guard import MAX_CORRECTION_CHARS, check_correction  # noqa: F401  (re-exported)


Duplicate = store.Duplicate  # a resend of a delivery already stored: nothing was written again


class FeedbackError(Exception):
    """A vote, correction or review that cannot be recorded; the message says why, for the user."""


def person(platform: str, user: str) -> str:
    """The `platform:user` id used in BOT_TRUSTED_REVIEWERS and in `reviewed_by`."""
    return f"{platform}:{user}"


def trusted(platform: str, user: str, reviewers: Sequence[str] = ()) -> bool:
    """The operator at the CLI, or a `platform:user` in `reviewers` (the caller's BOT_TRUSTED_REVIEWERS)."""
    if platform == "cli":
        return True
    return person(platform, user) in reviewers


def _answer(db, answer_id: str) -> dict:
    row = store.answer(db, answer_id) if answer_id else None
    if row is None:
        raise FeedbackError(f"answer {answer_id!r} no longer exists (it may have been deleted); nothing was recorded")
    return row


def vote(db, answer_id: str, platform: str, user: str, value: int, delivery: str | None = None) -> dict:
    """Record 👍 (1) or 👎 (-1); a person's last vote on an answer wins."""
    if value not in (1, -1):
        raise FeedbackError("a vote is 1 (👍) or -1 (👎)")
    _answer(db, answer_id)
    store.record_vote(db, answer_id, user, platform, value, delivery=delivery)
    return {"answer_id": answer_id, "value": value}


def correct(db, answer_id: str, text: str, platform: str, user: str,
            reviewers: Sequence[str] = (), delivery: str | None = None, model: str | None = None) -> dict:
    """Store a correction: `{"id", "status"}`, status "accepted" when the author is trusted, else "pending".
    `model`: the serving preset, whose control tokens are refused (None: every preset's)."""
    _answer(db, answer_id)
    why = check_correction(text, model)  # the same checks as every transport: size, emptiness, stray characters
    if why:
        raise FeedbackError(why)
    text = text.strip()
    # A trusted author's correction is stored pending and reviewed by them in one
    # commit: one code path for `reviewed_by`, and never half-done.
    by = person(platform, user) if trusted(platform, user, reviewers) else None
    cid = store.record_correction(db, answer_id, user, platform, text, "pending", delivery=delivery, accepted_by=by)
    return {"id": cid, "status": "accepted" if by else "pending"}


def pending(db, limit: int = 50) -> list[dict]:
    """Corrections waiting for an admin: id, answer_id, user, platform, text, created_at, question, answer."""
    return store.pending_corrections(db, limit)


def review(db, correction_id: int, accept: bool, by: str, delivery: str | None = None) -> dict:
    """Accept or reject a pending correction; `by` is who decided (`platform:user`)."""
    row = store.correction(db, correction_id)
    if row is None:
        raise FeedbackError(f"no correction #{correction_id}")
    if row["status"] != "pending":
        raise FeedbackError(f"correction #{correction_id} was already {row['status']} by {row['reviewed_by'] or '?'}")
    status = "accepted" if accept else "rejected"
    if not store.review_correction(db, correction_id, status, by, delivery=delivery):
        raise FeedbackError(f"correction #{correction_id} was reviewed by someone else just now")
    return {"id": correction_id, "status": status, "by": by}


def opt_out(db, platform: str, user: str, delivery: str | None = None) -> None:
    """Keep this person's questions and feedback out of every future training set; they are still answered."""
    store.set_opt_out(db, platform, user, True, delivery=delivery)


def opt_in(db, platform: str, user: str, delivery: str | None = None) -> None:
    store.set_opt_out(db, platform, user, False, delivery=delivery)


def is_opted_out(db, platform: str, user: str) -> bool:
    return (platform, user) in store.opted_out(db)


def forget(db, platform: str, user: str, *, adapters_dir=None, by: tuple[str, str] | None = None,
           enqueue: bool = True, delivery: str | None = None) -> dict:
    """Delete what this person asked (answers rows, with everyone's feedback on them), their votes and
    corrections, opt them out, and take the same rows out of every adapter version folder (bot.learning.forgetting):
    `{"answers": n, "votes": n, "corrections": n, "adapters": {"files", "rows", "marked", "weights_deleted",
    "retrain_job"}}`. `adapters_dir` None: no adapter folder to clean (the database only).
    `by`: who asked, for the audit rows (default: the person). `delivery`: the chat delivery's key, stored
    with the deletion in one commit (a resend raises `Duplicate`)."""
    from bot.learning import forgetting, jobs

    return forgetting.forget_person(db, adapters_dir, platform, user, by=by or (platform, user),
                                     retrain=jobs.retrainer(db, enqueue=enqueue), delivery=delivery)


def forget_detail(counts: dict) -> str:
    """The audit detail of a forget: counts only (what reached the adapter folders has audit rows of its own)."""
    return " ".join(f"{k}={counts[k]}" for k in ("answers", "votes", "corrections"))
