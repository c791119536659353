"""The chat commands, once, for every platform: /ask, /kb, /feedback, /forget, /train, /jobs, /adapter, /help.

Transports (slack_app, discord_app, the CLI) parse their platform's payload
into a `Caller` and the command's arguments, call a method here, and render
the `Reply` their own way. Nothing here imports a chat SDK, and permissions
are decided here, not in a transport, so every platform refuses alike.
Methods are blocking (retrieval, generation, SQL): event-loop transports
call them through `asyncio.to_thread`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import answering, feedback, store
from .feedback import MAX_CORRECTION_CHARS  # noqa: F401  (the modal's limit)

HELP = [
    ("/ask <question>", "answer from the knowledge base, with numbered sources and 👍/👎 buttons"),
    ("/kb search <query>", "show the passages that match a query"),
    ("/kb reindex", "re-read the knowledge base folder (admin)"),
    ("/feedback", "your recent answers, to rate or correct"),
    ("/feedback optout|optin", "keep your questions and feedback out of training (or back in)"),
    ("/feedback review [accept|reject <id>]", "corrections waiting for review; accept or reject one (admin)"),
    ("/forget me", "delete your questions, votes and corrections, and opt out of training"),
    ("/train", "queue a fine-tuning job on accepted feedback (admin)"),
    ("/jobs [cancel <id>]", "training jobs and their state; cancel one (admin or whoever queued it)"),
    ("/adapter list|promote <version>|rollback", "adapter versions; promote and rollback are admin"),
    ("/help", "this list"),
]
MAX_QUESTION_CHARS = 4000


@dataclass
class Caller:
    """Who is asking, and where; `roles` are Discord role ids (admins may be named by role)."""

    platform: str
    user: str
    channel: str = ""
    thread: str = ""
    roles: tuple[str, ...] = ()

    def context(self) -> answering.Context:
        return answering.Context(self.platform, self.user, self.channel, self.thread)


@dataclass
class Reply:
    text: str
    ok: bool = True
    private: bool = False  # shown only to the caller (Slack ephemeral, Discord ephemeral)
    data: dict = field(default_factory=dict)


class Commands:
    def __init__(self, db, answerer: answering.Answerer, *, admins: dict[str, list[str]] | None = None,
                 reindex: Callable[[], str] | None = None, adapters_dir=None, enqueue: bool = True):
        self.db, self.answerer = db, answerer
        self.admins = {k: set(v) for k, v in (admins or {}).items()}
        self._reindex, self.adapters_dir = reindex, adapters_dir
        self.enqueue = enqueue  # False: /train records the job but leaves running it to the caller (tests)

    # -- permissions ---------------------------------------------------------

    def is_admin(self, caller: Caller) -> bool:
        allowed = self.admins.get(caller.platform, set())
        return caller.user in allowed or any(r in allowed for r in caller.roles) or caller.platform == "cli"

    def _refuse(self, what: str) -> Reply:
        return Reply(f"Sorry, {what} is for admins only. Ask an admin of this workspace to run it.",
                     ok=False, private=True)

    # -- questions -----------------------------------------------------------

    def check_question(self, question: str) -> Reply | None:
        """A clear refusal for a question that cannot be asked, else None."""
        q = (question or "").strip()
        if not q:
            return Reply("Please add a question, e.g. `/ask 什么是边缘计算？`", ok=False, private=True)
        if len(q) > MAX_QUESTION_CHARS:
            return Reply(f"That question is {len(q)} characters; the limit is {MAX_QUESTION_CHARS}.",
                         ok=False, private=True)
        return None

    def ask(self, caller: Caller, question: str, on_token=None) -> answering.Answer:
        return self.answerer.ask(question.strip(), caller.context(), on_token=on_token)

    def kb_search(self, caller: Caller, query: str, k: int = 5) -> Reply:
        if not query.strip():
            return Reply("Please add a query, e.g. `/kb search 融资策略`", ok=False, private=True)
        hits = self.answerer.searcher.search(query, k)
        if not hits:
            return Reply("No passage matches that query.", private=True)
        lines = [f"[{n}] {h.doc} › {h.heading}\n{' '.join(h.text.split())[:300]}" for n, h in enumerate(hits, 1)]
        return Reply("\n\n".join(lines), private=True, data={"hits": [h.as_json() for h in hits]})

    def kb_reindex(self, caller: Caller) -> Reply:
        if not self.is_admin(caller):
            return self._refuse("/kb reindex")
        if self._reindex is None:
            return Reply("Re-indexing is not available in this process.", ok=False, private=True)
        return Reply(self._reindex())

    # -- feedback ------------------------------------------------------------

    def _answer_or_error(self, answer_id: str) -> Reply | None:
        if not answer_id or store.answer(self.db, answer_id) is None:
            return Reply("That answer no longer exists (it may have been deleted); nothing was recorded.",
                         ok=False, private=True)
        return None

    def vote(self, caller: Caller, answer_id: str, value: int) -> Reply:
        try:
            feedback.vote(self.db, answer_id, caller.platform, caller.user, value)
        except feedback.FeedbackError as e:
            return Reply(_sentence(e), ok=False, private=True)
        return Reply("Thanks for the 👍!" if value > 0 else "Thanks: noted 👎. A correction helps most.",
                     private=True)

    def correct(self, caller: Caller, answer_id: str, text: str) -> Reply:
        try:
            done = feedback.correct(self.db, answer_id, text, caller.platform, caller.user)
        except feedback.FeedbackError as e:
            return Reply(_sentence(e), ok=False, private=True)
        if done["status"] == "accepted":
            text = "Thanks! Your correction is saved and accepted: the next training job learns from it."
        else:
            text = "Thanks! Your correction is saved and waits for an admin's review before it is used for training."
        return Reply(text, private=True, data={"correction_id": done["id"], "status": done["status"]})

    def feedback_list(self, caller: Caller, limit: int = 5) -> Reply:
        rows = store.recent_answers(self.db, caller.platform, caller.user, limit)
        if not rows:
            return Reply("You have no answers to rate yet. Ask something with /ask.", private=True)
        marks = {1: "👍", -1: "👎", None: "not rated"}
        text = "\n".join(f"• {r['question'][:80]} ({marks[r['vote']]})" for r in rows)
        return Reply("Your recent answers:\n" + text, private=True, data={"answers": rows})

    def feedback_command(self, caller: Caller, text: str = "") -> Reply:
        """`/feedback [optout|optin|review [accept|reject <id>]]`: one chat command, several verbs."""
        words = (text or "").split()
        if not words:
            return self.feedback_list(caller)
        verb = words[0].lower()
        if verb == "optout":
            feedback.opt_out(self.db, caller.platform, caller.user)
            return Reply("Done: your questions and feedback stay out of training from now on. "
                         "You are still answered. `/feedback optin` undoes it; `/forget me` also deletes them.",
                         private=True)
        if verb == "optin":
            feedback.opt_in(self.db, caller.platform, caller.user)
            return Reply("Done: your feedback can help train the assistant again.", private=True)
        if verb == "review":
            action = words[1].lower() if len(words) > 1 else None
            ident = words[2] if len(words) > 2 else None
            return self.review(caller, action, ident)
        return Reply("Use `/feedback`, `/feedback optout`, `/feedback optin` or "
                     "`/feedback review [accept|reject <id>]`.", ok=False, private=True)

    def review(self, caller: Caller, action: str | None = None, correction_id=None) -> Reply:
        if not self.is_admin(caller):
            return self._refuse("/feedback review")
        if action is None:
            rows = feedback.pending(self.db)
            if not rows:
                return Reply("No corrections are waiting for review.", private=True, data={"pending": []})
            lines = [f"#{r['id']} by {r['platform']}:{r['user']} on “{_short(r['question'], 80)}”\n"
                     f"    answer: {_short(r['answer'], 120)}\n    correction: {_short(r['text'], 300)}" for r in rows]
            return Reply("Corrections waiting for review (`/feedback review accept|reject <id>`):\n"
                         + "\n".join(lines), private=True, data={"pending": rows})
        if action not in ("accept", "reject"):
            return Reply("Use `/feedback review`, `/feedback review accept <id>` or `/feedback review reject <id>`.",
                         ok=False, private=True)
        try:
            cid = int(str(correction_id).lstrip("#"))
        except (TypeError, ValueError):
            return Reply(f"Which correction? `/feedback review {action} <id>` (the number after #).",
                         ok=False, private=True)
        try:
            done = feedback.review(self.db, cid, action == "accept", by=feedback.person(caller.platform, caller.user))
        except feedback.FeedbackError as e:
            return Reply(_sentence(e), ok=False, private=True)
        return Reply(f"Correction #{cid} {done['status']}.", private=True, data=done)

    def forget(self, caller: Caller, who: str = "me") -> Reply:
        if (who or "").strip().lower() != "me":
            return Reply("`/forget me` deletes what you asked, rated and corrected. "
                         "It only ever applies to you.", ok=False, private=True)
        counts = feedback.forget(self.db, caller.platform, caller.user)
        feedback.opt_out(self.db, caller.platform, caller.user)
        return Reply(f"Deleted {counts['answers']} question(s), {counts['votes']} vote(s) and "
                     f"{counts['corrections']} correction(s); you are opted out of training from now on "
                     "(`/feedback optin` undoes that). An adapter already trained keeps what it learned "
                     "until the next training run, which no longer sees your data.",
                     private=True, data=counts)

    # -- training and adapters -----------------------------------------------

    def train(self, caller: Caller) -> Reply:
        if not self.is_admin(caller):
            return self._refuse("/train")
        from . import jobs

        job_id = jobs.submit(self.db, feedback.person(caller.platform, caller.user), caller.platform,
                             caller.channel, caller.thread, enqueue=self.enqueue)
        note = "" if jobs.worker_alive(self.db) else (
            " No training worker is running now (start it with `python -m bot worker`); the job waits for it.")
        return Reply(f"Training job #{job_id} queued. Progress and the verdict are posted here.{note}",
                     data={"job": job_id})

    def jobs(self, caller: Caller, action: str | None = None, job_id=None) -> Reply:
        from . import jobs

        if action is None:
            rows = jobs.listing(self.db, limit=10)
            if not rows:
                return Reply("No training jobs yet. An admin starts one with /train.", private=True,
                             data={"jobs": []})
            return Reply("Training jobs, newest first:\n" + "\n".join(map(job_line, rows)), private=True,
                         data={"jobs": rows})
        if action != "cancel":
            return Reply("Use `/jobs` or `/jobs cancel <id>`.", ok=False, private=True)
        try:
            ident = int(str(job_id).lstrip("#"))
        except (TypeError, ValueError):
            return Reply("Which job? `/jobs cancel <id>`", ok=False, private=True)
        row = store.job(self.db, ident)
        if row is None:
            return Reply(f"There is no job #{ident}.", ok=False, private=True)
        if not self.is_admin(caller) and row["requested_by"] != feedback.person(caller.platform, caller.user):
            return self._refuse("cancelling someone else's job")
        try:
            done = jobs.cancel(self.db, ident, feedback.person(caller.platform, caller.user))
        except jobs.JobError as e:
            return Reply(_sentence(e), ok=False, private=True)
        return Reply(_sentence(done["message"]), data=done)

    def adapter(self, caller: Caller, action: str, version: str | None = None) -> Reply:
        from . import registry

        if action == "list":
            info = registry.listing(self.adapters_dir)
            if not info["versions"]:
                return Reply("No adapter versions yet: the base model serves.", private=True, data=info)
            lines = [f"{'▶' if v['version'] == info['in_service'] else '•'} {v['version']}"
                     f"{' (' + v['verdict'] + ')' if v.get('verdict') else ''}{metric_text(v.get('metrics') or {})}"
                     for v in info["versions"]]
            return Reply("Adapter versions (▶ in service):\n" + "\n".join(lines), private=True, data=info)
        if action not in ("promote", "rollback"):
            return Reply("Use `/adapter list`, `/adapter promote <version>` or `/adapter rollback`.",
                         ok=False, private=True)
        if not self.is_admin(caller):
            return self._refuse(f"/adapter {action}")
        try:
            if action == "promote":
                if not version:
                    return Reply("Which version? `/adapter promote <version>`", ok=False, private=True)
                now = registry.promote(self.db, self.adapters_dir, version, by=f"{caller.platform}:{caller.user}")
            else:
                now = registry.rollback(self.db, self.adapters_dir, by=f"{caller.platform}:{caller.user}")
        except registry.RegistryError as e:
            return Reply(str(e), ok=False, private=True)
        return Reply(f"Adapter in service: {now or 'the base model'}. The next answer uses it.")

    def help(self, caller: Caller) -> Reply:
        return Reply("\n".join(f"`{c}` — {d}" for c, d in HELP), private=True)


def _short(text: str, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[:n - 1] + "…"


def _sentence(message) -> str:
    text = str(message)
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def metric_text(metrics: dict) -> str:
    """`: learned F1 0.06→0.84, NLL 4.1→0.9 · golden ...` from a card's metrics (empty when it has none)."""
    parts = []
    for name, pair in metrics.items():
        if not isinstance(pair, dict):  # a card written by hand, or by an older version
            continue
        cand, cur = pair.get("candidate", {}), pair.get("current", {})
        if cand.get("n"):
            parts.append(f"{name} F1 {cur.get('f1', 0):.2f}→{cand['f1']:.2f}, NLL {cur.get('nll', 0):.2f}→{cand['nll']:.2f}")
    return (": " + " · ".join(parts)) if parts else ""


def job_line(row: dict) -> str:
    """One job in words: `#3 train promoted v0002 (step 60/60, loss 0.41) by slack:U1`."""
    step = f", step {row['step']}/{row['steps']}" if row.get("steps") else ""
    loss = f", loss {row['loss']:.3f}" if row.get("loss") is not None else ""
    version = f" {row['version']}" if row.get("version") else ""
    error = f": {_short(row['error'], 160)}" if row.get("error") and row["state"] in ("failed", "cancelled") else ""
    return f"#{row['id']} {row['kind']} {row['state']}{version}{step}{loss} by {row['requested_by']}{error}"
