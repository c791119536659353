"""The chat commands, once, for every platform: /ask, /kb, /feedback, /train, /jobs, /adapter, /help.

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

from . import answering, store

HELP = [
    ("/ask <question>", "answer from the knowledge base, with numbered sources and 👍/👎 buttons"),
    ("/kb search <query>", "show the passages that match a query"),
    ("/kb reindex", "re-read the knowledge base folder (admin)"),
    ("/feedback", "your recent answers, to rate or correct"),
    ("/train", "queue a fine-tuning job on accepted feedback (admin)"),
    ("/jobs", "list training jobs and their state"),
    ("/adapter list|promote <version>|rollback", "adapter versions; promote and rollback are admin"),
    ("/help", "this list"),
]
MAX_QUESTION_CHARS = 4000
MAX_CORRECTION_CHARS = 8000
NOT_YET = ("Training jobs arrive with the fine-tuning loop, which is not built yet: "
           "nothing was queued.")


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
                 reindex: Callable[[], str] | None = None, adapters_dir=None):
        self.db, self.answerer = db, answerer
        self.admins = {k: set(v) for k, v in (admins or {}).items()}
        self._reindex, self.adapters_dir = reindex, adapters_dir

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
        if value not in (1, -1):
            return Reply("A vote is 👍 or 👎.", ok=False, private=True)
        error = self._answer_or_error(answer_id)
        if error:
            return error
        store.record_vote(self.db, answer_id, caller.user, caller.platform, value)
        return Reply("Thanks for the 👍!" if value > 0 else "Thanks: noted 👎. A correction helps most.",
                     private=True)

    def correct(self, caller: Caller, answer_id: str, text: str) -> Reply:
        error = self._answer_or_error(answer_id)
        if error:
            return error
        text = (text or "").strip()
        if not text:
            return Reply("The correction is empty; nothing was recorded.", ok=False, private=True)
        if len(text) > MAX_CORRECTION_CHARS:
            return Reply(f"The correction is {len(text)} characters; the limit is {MAX_CORRECTION_CHARS}.",
                         ok=False, private=True)
        cid = store.record_correction(self.db, answer_id, caller.user, caller.platform, text)
        return Reply("Thanks! Your correction is saved and waits for review before it is used for training.",
                     private=True, data={"correction_id": cid})

    def feedback_list(self, caller: Caller, limit: int = 5) -> Reply:
        rows = store.recent_answers(self.db, caller.platform, caller.user, limit)
        if not rows:
            return Reply("You have no answers to rate yet. Ask something with /ask.", private=True)
        marks = {1: "👍", -1: "👎", None: "not rated"}
        text = "\n".join(f"• {r['question'][:80]} ({marks[r['vote']]})" for r in rows)
        return Reply("Your recent answers:\n" + text, private=True, data={"answers": rows})

    # -- training and adapters (the loop itself is the fine-tuning issue) ----

    def train(self, caller: Caller) -> Reply:
        if not self.is_admin(caller):
            return self._refuse("/train")
        return Reply(NOT_YET, ok=False)

    def jobs(self, caller: Caller) -> Reply:
        return Reply("No training jobs: the job system arrives with the fine-tuning loop.", private=True)

    def adapter(self, caller: Caller, action: str, version: str | None = None) -> Reply:
        from . import registry

        if action == "list":
            info = registry.listing(self.adapters_dir)
            if not info["versions"]:
                return Reply("No adapter versions yet: the base model serves.", private=True, data=info)
            lines = [f"{'▶' if v['version'] == info['in_service'] else '•'} {v['version']}"
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
