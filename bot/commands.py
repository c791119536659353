"""The chat commands, once, for every platform: /ask, /kb, /feedback, /forget, /train, /jobs, /adapter, /help.

Transports (slack_app, discord_app, the CLI) parse their platform's payload
into a `Caller` and the command's arguments, call a method here, and render
the `Reply` their own way. Nothing here imports a chat SDK, and permissions
are decided here, not in a transport, so every platform refuses alike.
Methods are blocking (retrieval, generation, SQL): event-loop transports
call them through `asyncio.to_thread`.

Input is checked here (bot/guard.py) before any work, and questions are
admitted here (`admission`): every transport refuses alike. Every
privileged action (admin commands, reviews, cancels, forgets) writes an
audit row, refused and failed attempts included; audit rows carry ids and
counts, never what people wrote.

Feedback actions (votes, corrections, opt-out/in, reviews, forget) take the
platform's `delivery` id: it is stored in the same transaction as the work,
so a transport can acknowledge once the method returns (stored means
acknowledged), and a resend of a stored delivery gets a Reply with
`duplicate` set and changes nothing, while one whose first delivery died
before its commit is processed. Questions and other commands are
de-duplicated by `first_delivery` (a Slack middleware, one Discord helper),
and answers in flight are recorded through `inflight_*`: transports reach
the database only through this layer.

Arguments are typed: each transport parses its own payload (Slack's command
text in bot/chat/slack/parse.py; Discord's options arrive typed) and calls
the method for what was asked. A `Reply` carries typed fields, never a dict.
"""
from __future__ import annotations

import logging
import re
import threading
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Literal

from bot.answering import inflight, pipeline
from bot.learning import feedback
from bot import config, guard, messages, store
from bot.guard import MAX_CORRECTION_CHARS, MAX_QUESTION_CHARS  # noqa: F401  (re-exported: transports and tests name them here)
from bot.guard import Admission, Busy
from bot.messages import ALREADY, SORRY  # noqa: F401  (re-exported: transports and tests name them here)

log = logging.getLogger(__name__)

HELP = [
    ("/ask <question>", "answer from the knowledge base, with numbered sources and 👍/👎 buttons"),
    ("/kb search <query>", "show the passages that match a query"),
    ("/kb reindex", "re-read the knowledge base folder (admin)"),
    ("/kb add", "add the file shared here (Slack: the latest in the channel, or mention me on it; Discord: "
                "attach it) to the knowledge base; a file of the same name is replaced (admin)"),
    ("/kb list", "the documents, with their passage counts and when they were added"),
    ("/kb remove <name>", "take a document added from chat out of the knowledge base (admin)"),
    ("/feedback", "your recent answers, to rate or correct"),
    ("/feedback optout|optin", "keep your questions and feedback out of training (or back in)"),
    ("/feedback review [accept|reject <id>]", "corrections waiting for review; accept or reject one (admin)"),
    ("/forget me", "delete your questions, votes and corrections, and opt out of training"),
    ("/train", "queue a fine-tuning job on accepted feedback (admin)"),
    ("/jobs [cancel <id>]", "training jobs and their state; cancel one (admin or whoever queued it)"),
    ("/adapter list|chart|promote <version>|rollback",
     "adapter versions with their metrics, or as a chart; promote and rollback are admin"),
    ("/help", "this list"),
]
_IDENT = re.compile(r"[\w.:#-]{1,64}", re.ASCII)
_MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger id cannot name a row, and would not even bind


def ident(text) -> str:
    """What an audit row may say about an argument someone typed: an id-shaped word, else a placeholder."""
    text = str(text or "")
    return text if _IDENT.fullmatch(text) else "(not an id)"


def parse_id(text) -> int | None:
    """`7` or `#7` -> 7; anything else (words, signs, ids past SQLite's range) -> None."""
    m = re.fullmatch(r"#?([0-9]{1,19})", str(text if text is not None else "").strip(), re.ASCII)
    return int(m[1]) if m and 1 <= int(m[1]) <= _MAX_ID else None


@dataclass
class Caller:
    """Who is asking, and where; `roles` are Discord role ids (admins may be named by role)."""

    platform: str
    user: str
    channel: str = ""
    thread: str = ""
    roles: tuple[str, ...] = ()

    def context(self) -> pipeline.Context:
        return pipeline.Context(self.platform, self.user, self.channel, self.thread)


@dataclass(frozen=True)
class Attachment:
    """A file a reply carries (the /adapter chart PNG): each transport attaches it its own way."""

    name: str
    content: bytes
    title: str = ""


@dataclass(frozen=True)
class CorrectionState:
    """A correction stored or reviewed: its id, its status, and who decided it (reviews)."""

    id: int
    status: str  # "pending" | "accepted" | "rejected"
    by: str | None = None

    def as_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class JobChange:
    """A training job queued (/train) or cancelled (/jobs cancel): its id, state and what happened."""

    id: int
    state: str  # "queued" | "cancelled" | "cancelling"
    message: str = ""


@dataclass
class Reply:
    """What a command says, and what a transport needs beyond the text. Each field names one thing:
    the recent answers to rate (`rateable`) are rows, what /forget deleted (`forgotten`) are counts."""

    text: str
    ok: bool = True
    private: bool = False  # shown only to the caller (Slack ephemeral, Discord ephemeral)
    duplicate: bool = False  # a resend of work already stored: its reply was given the first time
    busy: Busy | None = None  # a question not admitted: why, and when to try again
    attachment: Attachment | None = None
    rateable: list[dict] = field(default_factory=list)  # /feedback: the caller's recent answers (id, question, vote)
    hits: list[dict] = field(default_factory=list)  # /kb search: the passages, as `Hit.as_json`
    pending: list[dict] | None = None  # /feedback review: the corrections waiting (None: not a listing)
    correction: CorrectionState | None = None
    forgotten: dict | None = None  # /forget me: how many answers, votes, corrections, adapter rows were deleted
    job: JobChange | None = None
    jobs: list[dict] | None = None  # /jobs: the listing, newest first
    adapters: dict | None = None  # /adapter list: `registry.listing` ({"in_service", "versions"})
    in_service: str | None = None  # /adapter promote|rollback: the version now served (None: the base model)
    document: dict | None = None  # /kb add|remove: the document (doc, passages, replaced, sample)
    documents: list[dict] | None = None  # /kb list: every document (doc, passages, added_at, added_by)


class Commands:
    def __init__(self, db, answerer: pipeline.Answerer | None, *, admins: dict[str, list[str]] | None = None,
                 reindex: Callable[[], str] | None = None, adapters_dir=None, enqueue: bool = True,
                 guard: Admission | None = None, settings: config.Settings):
        self.db, self.answerer = db, answerer  # None: a command layer that answers nothing (the CLI's twins)
        self.admins = {k: set(v) for k, v in (admins or {}).items()}
        self._reindex, self.adapters_dir = reindex, adapters_dir
        self.enqueue = enqueue  # False: /train records the job but leaves running it to the caller (tests)
        # Rate limits and the queue bound: from the settings unless a caller (a test, a load script) brings its own.
        self.guard = guard if guard is not None else Admission.from_settings(
            settings, depth=answerer.queue_depth if answerer is not None else None)
        self.reviewers = settings.trusted_reviewers  # whose corrections are accepted without a review
        self.model = settings.model  # the serving preset: its control tokens are refused in corrections
        self.cache_dir = settings.cache_dir  # where its weights are: an adapter is checked against that base
        # /kb add: where originals are kept, the largest accepted, and the chunk size `index` uses.
        self.uploads_dir, self.chunk_chars = settings.uploads_dir, settings.chunk_chars
        self.max_file_bytes = int(settings.max_file_mb * 1024 * 1024)
        self._kb_lock = threading.Lock()  # one add or remove at a time: each is a read-check-write of a file

    # -- de-duplication: each platform calls this once per delivery (a Slack middleware, a Discord helper) --

    def first_delivery(self, key: str) -> bool:
        """True the first time a platform delivery `key` is seen (and records it); False for a resend."""
        return store.first_delivery(self.db, key)

    # -- answers in flight (bot/answering/inflight.py): a restart finishes what a dead process left ------

    def inflight_begin(self, caller: Caller, question: str, *, interaction: str | None = None) -> int:
        return inflight.begin(self.db, caller, question, interaction=interaction)

    def inflight_placed(self, inflight_id: int, message: str) -> None:
        inflight.placed(self.db, inflight_id, message)

    def inflight_hand_off(self, inflight_id: int, text: str) -> int | None:
        return inflight.hand_off(self.db, inflight_id, text)

    def inflight_end(self, inflight_id: int) -> None:
        inflight.end(self.db, inflight_id)

    # -- permissions ---------------------------------------------------------

    def is_admin(self, caller: Caller) -> bool:
        allowed = self.admins.get(caller.platform, set())
        return caller.user in allowed or any(r in allowed for r in caller.roles) or caller.platform == "cli"

    def _refuse(self, caller: Caller, what: str, action: str, target: str = "") -> Reply:
        self._audit(caller, action, target, "refused")
        return Reply(messages.admins_only(what), ok=False, private=True)

    # -- the audit trail -------------------------------------------------------

    def _audit(self, caller: Caller, action: str, target: str = "", result: str = "ok", detail: str = "") -> None:
        try:
            store.audit(self.db, caller.platform, caller.user, action, target, result, detail)
        except Exception:  # the action has happened (or been refused): say so to the caller all the same
            log.exception("could not write the audit row for %s (%s)", action, result)

    def _failed(self, caller: Caller, action: str, target: str, error: Exception) -> Reply:
        """An unexpected failure of a privileged action: audited, logged, and a plain apology for the caller."""
        log.error("%s by %s:%s failed", action, caller.platform, caller.user, exc_info=error)
        self._audit(caller, action, target, f"error: {type(error).__name__}: {error}"[:300])
        return Reply(SORRY, ok=False, private=True)

    # -- questions -----------------------------------------------------------

    def check_question(self, question: str) -> Reply | None:
        """A clear refusal for a question that cannot be asked (empty, too long, not text), else None."""
        why = guard.check_question(question)
        return Reply(why, ok=False, private=True) if why else None

    def admit(self, caller: Caller) -> Reply | None:
        """None when the question may go to the model (a slot is then held: `release` it), else a polite
        "busy, try again in N s" for the caller. Checked before any work; a refusal stores nothing."""
        busy = self.guard.admit(caller.platform, caller.user, caller.channel)
        if busy is None:
            return None
        return Reply(busy.text, ok=False, private=True, busy=busy)

    def release(self, caller: Caller) -> None:
        self.guard.release(caller.platform, caller.user)

    @contextmanager
    def admission(self, caller: Caller) -> Iterator[Reply | None]:
        """`with commands.admission(caller) as busy:` the slot is held for the block and always released."""
        busy = self.admit(caller)
        try:
            yield busy
        finally:
            if busy is None:
                self.release(caller)

    def ask(self, caller: Caller, question: str, on_token=None) -> pipeline.Answer:
        return self.answerer.ask(question.strip(), caller.context(), on_token=on_token)

    def kb_search(self, caller: Caller, query: str, k: int = 5) -> Reply:
        if not (query or "").strip():
            return Reply("Please add a query, e.g. `/kb search 融资策略`", ok=False, private=True)
        why = guard.check_text(query, what="query", limit=guard.MAX_QUESTION_CHARS, empty="")
        if why:
            return Reply(why, ok=False, private=True)
        hits = self.answerer.searcher.search(query, k)
        if not hits:
            return Reply("No passage matches that query.", private=True)
        lines = [f"[{n}] {h.source} › {h.heading}\n{' '.join(h.text.split())[:300]}" for n, h in enumerate(hits, 1)]
        return Reply("\n\n".join(lines), private=True, hits=[h.as_json() for h in hits])

    def kb_reindex(self, caller: Caller) -> Reply:
        if not self.is_admin(caller):
            return self._refuse(caller, "/kb reindex", "kb reindex")
        if self._reindex is None:
            self._audit(caller, "kb reindex", "", "error: not available in this process")
            return Reply("Re-indexing is not available in this process.", ok=False, private=True)
        try:
            text = self._reindex()
        except Exception as e:
            return self._failed(caller, "kb reindex", "", e)
        self._audit(caller, "kb reindex", "", "ok", text.splitlines()[0][:200] if text else "")
        return Reply(text)

    # -- documents added from chat: /kb add, /kb list, /kb remove --------------
    # An upload is kept as sent under BOT_UPLOADS_DIR and indexed as `uploads/NAME` (the folder's name):
    # outside BOT_KNOWLEDGE_DIR, so `index` and `/kb reindex` of that folder neither re-read it nor
    # remove it as vanished (they remove only files under the folders they walk). Only /kb remove does.

    def _upload_doc(self, name: str) -> str:
        return f"{self.uploads_dir.name}/{name}"

    def kb_add_refusal(self, caller: Caller, filename: str | None = None, size: int | None = None) -> Reply | None:
        """Why a file may not be added (None: it may), checked before a transport downloads anything:
        who asks, then (when given) the file's name, type and size as the platform reports them."""
        name = upload_name(filename) if filename is not None else None
        if not self.is_admin(caller):
            return self._refuse(caller, "/kb add", "kb add", name or "")
        if filename is None:
            return None
        why = self._bad_upload(name, size)
        if why:
            self._audit(caller, "kb add", name or "", f"error: {why}"[:300])
            return Reply(why, ok=False, private=True)
        return None

    def _bad_upload(self, name: str | None, size: int | None) -> str | None:
        from bot.knowledge import ingest

        if not name:
            return "That file has no usable name; rename it and share it again. Nothing was added."
        suffix = "." + name.rpartition(".")[2].lower() if "." in name else ""
        if suffix not in ingest.SUPPORTED_SUFFIXES:
            kinds = " ".join(sorted(ingest.SUPPORTED_SUFFIXES))
            return f"Could not add {name}: unsupported type “{suffix or 'no suffix'}” (supported: {kinds}). " \
                   "Nothing was added."
        if size is not None and size > self.max_file_bytes:
            return (f"Could not add {name}: it is {_mb(size)}, over the {_mb(self.max_file_bytes)} limit "
                    "(BOT_MAX_FILE_MB). Nothing was added.")
        if size == 0:
            return f"Could not add {name}: the file is empty. Nothing was added."
        return None

    def kb_add(self, caller: Caller, filename: str, data: bytes) -> Reply:
        """Keep `data` as uploads/NAME, index it (replacing a document of the same name), and say how many
        passages it gave with a sample search. A file that fails to convert leaves the index as it was."""
        refusal = self.kb_add_refusal(caller, filename, len(data))
        if refusal:
            return refusal
        name = upload_name(filename)
        doc = self._upload_doc(name)
        try:
            with self._kb_lock:
                done = self._add(caller, name, doc, data)
        except Exception as e:
            return self._failed(caller, "kb add", doc, e)
        if isinstance(done, str):  # the document's own fault: said by name, nothing added
            self._audit(caller, "kb add", doc, f"error: {done}"[:300])
            return Reply(f"Could not add {name}: {done}. Nothing was added.", ok=False, private=True)
        sample = self._sample(doc)
        done["sample"] = sample
        self._audit(caller, "kb add", doc, "ok", f"{done['passages']} passages, {len(data)} bytes"
                    + (", replaced" if done["replaced"] else "") + (", unchanged" if done["unchanged"] else ""))
        what = ("replaced (re-indexed)" if done["replaced"] and not done["unchanged"] else
                "already in the knowledge base with the same content" if done["unchanged"] else "added")
        text = f"{doc} {what}: {done['passages']} passage(s)."
        if sample:
            text += (f"\nSample search “{sample['query']}” → {sample['doc']} › {sample['heading']}\n"
                     f"{_short(sample['text'], 300)}")
        return Reply(text, document=done)

    def _add(self, caller: Caller, name: str, doc: str, data: bytes) -> dict | str:
        from bot.knowledge import ingest

        folder = self.uploads_dir
        path = folder / name
        old = store.document(self.db, doc)
        if old is not None and old["source"] != str(path.absolute()):
            return f"a document of the knowledge folder is already called {doc}; rename the file"
        folder.mkdir(parents=True, exist_ok=True)
        previous = path.read_bytes() if path.exists() else None
        _write(path, data)
        reports = [r for r in ingest.index_paths(self.db, [path], folder.parent, self.chunk_chars, progress=False,
                                                     max_file_mb=self.max_file_bytes / (1024 * 1024))
                   if r.doc == doc]
        report = reports[0] if reports else None
        if report is None or report.status not in ("indexed", "unchanged"):
            # Nothing half-added: the file goes, and a replaced original comes back with its passages
            # (the indexer drops a document whose file turned bad).
            why = report.message if report is not None and report.message else "it could not be indexed"
            if previous is None:
                path.unlink(missing_ok=True)
                if store.document(self.db, doc):
                    ingest.remove_document(self.db, doc)
            else:
                _write(path, previous)
                ingest.index_paths(self.db, [path], folder.parent, self.chunk_chars, progress=False,
                                   max_file_mb=self.max_file_bytes / (1024 * 1024))
            store.bump_index_generation(self.db)
            return why
        store.record_upload(self.db, doc, name, f"{caller.platform}:{caller.user}", len(data),
                            ingest.file_digest(data))
        store.bump_index_generation(self.db)  # every replica's searcher reloads on its next question
        return {"doc": doc, "passages": report.chunks, "replaced": old is not None,
                "unchanged": report.status == "unchanged", "bytes": len(data)}

    def _sample(self, doc: str) -> dict | None:
        """The top passage for a query made from the document's first heading (else its first words)."""
        searcher = self.answerer.searcher if self.answerer is not None else None
        first = store.document_passages(self.db, doc, 1)
        if searcher is None or not first:
            return None
        heading = first[0]["heading"].split(" > ")[-1].strip()
        query = heading if heading and heading != doc.rpartition("/")[2].rpartition(".")[0] \
            else " ".join(first[0]["text"].split())[:40]
        hits = searcher.search(query, 1)
        return {"query": query, **hits[0].as_json()} if hits else None

    def kb_list(self, caller: Caller) -> Reply:
        """Every document with its passage count and when it was added (from chat: by whom; from the
        knowledge folder: when it was last indexed)."""
        added = store.uploads(self.db)
        rows = []
        for d in store.documents(self.db):
            up = added.get(d["doc"])
            rows.append({"doc": d["doc"], "passages": d["chunks"], "uploaded": up is not None,
                         "added_at": up["added_at"] if up else d["indexed_at"],
                         "added_by": up["added_by"] if up else None})
        if not rows:
            return Reply("The knowledge base is empty. An admin adds documents with /kb add.", private=True,
                         documents=[])
        shown = sorted(rows, key=lambda r: -r["added_at"])[:LIST_SHOWN]
        lines = [f"• {r['doc']}: {r['passages']} passage(s), "
                 + (f"added {_when(r['added_at'])} by {r['added_by']}" if r["uploaded"]
                    else f"indexed {_when(r['added_at'])}") for r in shown]
        more = f"\n…and {len(rows) - len(shown)} more (the oldest)." if len(rows) > len(shown) else ""
        return Reply(f"{len(rows)} document(s), {sum(r['passages'] for r in rows)} passage(s), newest first:\n"
                     + "\n".join(lines) + more, private=True, documents=rows)

    def kb_remove(self, caller: Caller, name: str | None) -> Reply:
        """Take a document added from chat out of the index, and delete the kept original. A document of
        the knowledge folder is not removed here: it would come back with the next re-index."""
        from bot.knowledge import ingest

        given = (name or "").strip()
        safe = upload_name(given.removeprefix(self.uploads_dir.name + "/")) if given else None
        doc = self._upload_doc(safe) if safe else ""
        if not self.is_admin(caller):
            return self._refuse(caller, "/kb remove", "kb remove", doc)
        if not safe:
            return Reply("Which document? `/kb remove <name>` (as `/kb list` shows it).", ok=False, private=True)
        try:
            with self._kb_lock:
                if doc not in store.uploads(self.db):
                    where = store.document(self.db, given)
                    why = (f"{given} is a file of the knowledge folder: delete it there and run /kb reindex"
                           if where else f"there is no document added from chat called {doc} (see /kb list)")
                    self._audit(caller, "kb remove", doc, f"error: {why}"[:300])
                    return Reply(_sentence(why), ok=False, private=True)
                removed = ingest.remove_document(self.db, doc)
                store.forget_upload(self.db, doc)
                (self.uploads_dir / safe).unlink(missing_ok=True)
        except Exception as e:
            return self._failed(caller, "kb remove", doc, e)
        self._audit(caller, "kb remove", doc, "ok", f"{removed} passages")
        return Reply(f"{doc} removed: {removed} passage(s) are out of the knowledge base.",
                     document={"doc": doc, "passages": removed})

    # -- feedback ------------------------------------------------------------

    def _answer_or_error(self, answer_id: str) -> Reply | None:
        if not answer_id or store.answer(self.db, answer_id) is None:
            return Reply("That answer no longer exists (it may have been deleted); nothing was recorded.",
                         ok=False, private=True)
        return None

    def _duplicate(self, delivery: str | None) -> Reply | None:
        """The reply to a resend whose work is already stored (checked first, so a resend of an accepted
        review is not told "already accepted"; the write's own claim catches a resend racing the first)."""
        if delivery is not None and store.delivered(self.db, delivery):
            return _already()
        return None

    def vote(self, caller: Caller, answer_id: str, value: int, delivery: str | None = None) -> Reply:
        bad = _nobody(caller) or guard.check_answer_id(answer_id)
        if bad:
            return Reply(bad, ok=False, private=True)
        try:
            feedback.vote(self.db, answer_id, caller.platform, caller.user, value, delivery=delivery)
        except feedback.Duplicate:
            return _already()
        except feedback.FeedbackError as e:
            return Reply(_sentence(e), ok=False, private=True)
        return Reply("Thanks for the 👍!" if value > 0 else "Thanks: noted 👎. A correction helps most.",
                     private=True)

    def correct(self, caller: Caller, answer_id: str, text: str, delivery: str | None = None) -> Reply:
        bad = _nobody(caller) or guard.check_answer_id(answer_id) or guard.check_correction(text, self.model)
        if bad:
            return Reply(bad, ok=False, private=True)
        try:
            done = feedback.correct(self.db, answer_id, text, caller.platform, caller.user, self.reviewers,
                                    delivery=delivery, model=self.model)
        except feedback.Duplicate:
            return _already()
        except feedback.FeedbackError as e:
            return Reply(_sentence(e), ok=False, private=True)
        if done["status"] == "accepted":
            text = "Thanks! Your correction is saved and accepted: the next training job learns from it."
        else:
            text = "Thanks! Your correction is saved and waits for an admin's review before it is used for training."
        return Reply(text, private=True, correction=CorrectionState(done["id"], done["status"]))

    def feedback_list(self, caller: Caller, limit: int = 5) -> Reply:
        rows = store.recent_answers(self.db, caller.platform, caller.user, limit)
        if not rows:
            return Reply("You have no answers to rate yet. Ask something with /ask.", private=True)
        marks = {1: "👍", -1: "👎", None: "not rated"}
        text = "\n".join(f"• {r['question'][:80]} ({marks[r['vote']]})" for r in rows)
        return Reply("Your recent answers:\n" + text, private=True, rateable=rows)

    def opt_out(self, caller: Caller, delivery: str | None = None) -> Reply:
        try:
            feedback.opt_out(self.db, caller.platform, caller.user, delivery=delivery)
        except feedback.Duplicate:
            return _already()
        return Reply("Done: your questions and feedback stay out of training from now on. "
                     "You are still answered. `/feedback optin` undoes it; `/forget me` also deletes them.",
                     private=True)

    def opt_in(self, caller: Caller, delivery: str | None = None) -> Reply:
        try:
            feedback.opt_in(self.db, caller.platform, caller.user, delivery=delivery)
        except feedback.Duplicate:
            return _already()
        return Reply("Done: your feedback can help train the assistant again.", private=True)

    def review(self, caller: Caller, action: Literal["accept", "reject"] | None = None,
               correction_id: int | None = None, delivery: str | None = None) -> Reply:
        """Corrections waiting (no `action`), or accept/reject one. Admins only; the refusal comes before any
        other check, so a non-admin learns nothing about the arguments. `correction_id` is checked here too
        (a number in SQLite's range) because every transport hands on what a person typed."""
        if not self.is_admin(caller):
            verb = action if action in ("accept", "reject") else "review"
            target = f"#{parse_id(correction_id)}" if parse_id(correction_id) else ""
            return self._refuse(caller, "/feedback review", f"feedback {verb}", target)
        if action is None:
            rows = feedback.pending(self.db)
            # Reading everyone's pending corrections is itself privileged: on the trail, by count.
            self._audit(caller, "feedback review", "pending", "ok", f"{len(rows)} waiting")
            if not rows:
                return Reply("No corrections are waiting for review.", private=True, pending=[])
            lines = [f"#{r['id']} by {r['platform']}:{r['user']} on “{_short(r['question'], 80)}”\n"
                     f"    answer: {_short(r['answer'], 120)}\n    correction: {_short(r['text'], 300)}" for r in rows]
            return Reply("Corrections waiting for review (`/feedback review accept|reject <id>`):\n"
                         + "\n".join(lines), private=True, pending=rows)
        if action not in ("accept", "reject"):
            return Reply("Use `/feedback review`, `/feedback review accept <id>` or `/feedback review reject <id>`.",
                         ok=False, private=True)
        if correction_id is None:
            return Reply(f"Which correction? `/feedback review {action} <id>` (the number after #).",
                         ok=False, private=True)
        cid, what = correction_id, f"feedback {action}"
        already = self._duplicate(delivery)
        if already:
            return already
        try:
            if not _in_range(cid):  # a number no row can have (the CLI passes what it was given)
                raise feedback.FeedbackError(f"no correction #{cid}")
            done = feedback.review(self.db, cid, action == "accept", by=feedback.person(caller.platform, caller.user),
                                   delivery=delivery)
        except feedback.Duplicate:
            return _already()
        except feedback.FeedbackError as e:
            self._audit(caller, what, f"#{cid}", f"error: {e}")
            return Reply(_sentence(e), ok=False, private=True)
        except Exception as e:
            return self._failed(caller, what, f"#{cid}", e)
        self._audit(caller, what, f"#{cid}")
        return Reply(f"Correction #{cid} {done['status']}.", private=True,
                     correction=CorrectionState(done["id"], done["status"], done.get("by")))

    def forget(self, caller: Caller, delivery: str | None = None, *, person: tuple[str, str] | None = None) -> Reply:
        """`/forget me`: the caller's questions, votes and corrections, and what adapters learned from them.
        `person` (platform, user): someone else's, for an admin (the operator at the CLI)."""
        platform, user = person or (caller.platform, caller.user)
        me = feedback.person(platform, user)
        if person is not None and not self.is_admin(caller):
            return self._refuse(caller, "forgetting someone else", "forget", me)
        try:
            counts = feedback.forget(self.db, platform, user, adapters_dir=self.adapters_dir,
                                     by=(caller.platform, caller.user), enqueue=self.enqueue, delivery=delivery)
        except feedback.Duplicate:
            return _already()
        except Exception as e:
            return self._failed(caller, "forget", me, e)
        self._audit(caller, "forget", me, "ok", feedback.forget_detail(counts))
        files = counts["adapters"]
        model = (f" {len(files['marked'])} adapter version(s) had learned from it: a retrain without it is queued "
                 f"(job #{files['retrain_job']}), and their weights are deleted once it replaces them."
                 if files["retrain_job"] else
                 f" {len(files['marked'])} adapter version(s) out of service had learned from it: their weights "
                 "are deleted." if files["marked"] else "")
        whose = "" if person is None else f" of {me}"
        opted = ("you are opted out of training from now on (`/feedback optin` undoes that)" if person is None
                 else "they are opted out of training from now on")
        return Reply(f"Deleted {counts['answers']} question(s), {counts['votes']} vote(s) and "
                     f"{counts['corrections']} correction(s){whose}, and {files['rows']} copy(ies) of them in "
                     f"{files['files']} training file(s); {opted}.{model}", private=True, forgotten=counts)

    # -- training and adapters -----------------------------------------------

    def train(self, caller: Caller) -> Reply:
        if not self.is_admin(caller):
            return self._refuse(caller, "/train", "train")
        from bot.learning import jobs

        try:
            job_id = jobs.submit(self.db, feedback.person(caller.platform, caller.user), caller.platform,
                                 caller.channel, caller.thread, enqueue=self.enqueue)
        except Exception as e:
            return self._failed(caller, "train", "", e)
        self._audit(caller, "train", f"#{job_id}")
        note = "" if jobs.worker_alive(self.db) else (
            " No training worker is running now (start it with `python -m bot worker`); the job waits for it.")
        return Reply(f"Training job #{job_id} queued. Progress and the verdict are posted here.{note}",
                     job=JobChange(job_id, "queued"))

    def jobs(self, caller: Caller, limit: int = 10) -> Reply:
        from bot.learning import jobs

        rows = jobs.listing(self.db, limit=limit)
        if not rows:
            return Reply("No training jobs yet. An admin starts one with /train.", private=True, jobs=[])
        return Reply("Training jobs, newest first:\n" + "\n".join(map(job_line, rows)), private=True, jobs=rows)

    def cancel_job(self, caller: Caller, job_id: int | None) -> Reply:
        """Admins, or whoever queued it. `job_id` is checked here (in SQLite's range): transports hand on
        what a person typed."""
        from bot.learning import jobs

        if job_id is None:
            return Reply("Which job? `/jobs cancel <id>` (the number after #).", ok=False, private=True)
        number, target = job_id, f"#{job_id}"
        row = store.job(self.db, number) if _in_range(number) else None
        if row is None:
            self._audit(caller, "jobs cancel", target, "error: no such job")
            return Reply(f"There is no job #{number}.", ok=False, private=True)
        if not self.is_admin(caller) and row["requested_by"] != feedback.person(caller.platform, caller.user):
            return self._refuse(caller, "cancelling someone else's job", "jobs cancel", target)
        try:
            done = jobs.cancel(self.db, number, feedback.person(caller.platform, caller.user))
        except jobs.JobError as e:
            self._audit(caller, "jobs cancel", target, f"error: {e}")
            return Reply(_sentence(e), ok=False, private=True)
        except Exception as e:
            return self._failed(caller, "jobs cancel", target, e)
        self._audit(caller, "jobs cancel", target, "ok", done["state"])
        return Reply(_sentence(done["message"]), job=JobChange(done["job"], done["state"], done["message"]))

    def adapter_list(self, caller: Caller) -> Reply:
        from bot.learning import registry

        info = registry.listing(self.adapters_dir)
        if not info["versions"]:
            return Reply("No adapter versions yet: the base model serves.", private=True, adapters=info)
        lines = [version_line(v, info["in_service"]) for v in info["versions"]]
        return Reply("Adapter versions (▶ in service):\n" + "\n".join(lines), private=True, adapters=info)

    def adapter_chart(self, caller: Caller) -> Reply:
        from bot.learning import charts

        png = charts.adapter_chart(self.adapters_dir)
        if png is None:
            return Reply("No adapter version has a card yet: there is nothing to chart.", private=True)
        return Reply("Adapter versions, the gate's decision for each: the candidate against the adapter it was "
                     "compared to on every set, F1 per version (left) and NLL (right), the metric that decided "
                     "drawn solid; below, the training loss and its moving average.",
                     attachment=Attachment("adapters.png", png, "Adapter versions"))

    def adapter_promote(self, caller: Caller, version: str | None) -> Reply:
        return self._switch(caller, "promote", version)

    def adapter_rollback(self, caller: Caller) -> Reply:
        return self._switch(caller, "rollback", None)

    def _switch(self, caller: Caller, action: Literal["promote", "rollback"], version: str | None) -> Reply:
        from bot.learning import registry

        what = f"adapter {action}"
        target = ident(version) if action == "promote" and version else ""
        if not self.is_admin(caller):
            return self._refuse(caller, f"/adapter {action}", what, target)
        if action == "promote" and not version:
            return Reply("Which version? `/adapter promote <version>`", ok=False, private=True)
        try:
            before = registry.listing(self.adapters_dir)["in_service"]
            base = registry.serving_base(self.model, self.cache_dir)
            if action == "promote":
                now = registry.promote(self.db, self.adapters_dir, version, by=f"{caller.platform}:{caller.user}",
                                       base=base)
            else:
                now = registry.rollback(self.db, self.adapters_dir, by=f"{caller.platform}:{caller.user}", base=base)
        except registry.RegistryError as e:
            # The server's own paths are none of the chat's business: the folder is named as `adapters`.
            why = str(e).replace(str(self.adapters_dir), "adapters") if self.adapters_dir else str(e)
            self._audit(caller, what, target, f"error: {why}"[:300])
            return Reply(why, ok=False, private=True)
        except Exception as e:
            return self._failed(caller, what, target, e)
        self._audit(caller, what, now or "base", "ok", f"{before or 'base'} -> {now or 'base'}")
        return Reply(f"Adapter in service: {now or 'the base model'}. The next answer uses it.", in_service=now)

    def help(self, caller: Caller) -> Reply:
        return Reply("\n".join(f"`{c}` — {d}" for c, d in HELP), private=True)


LIST_SHOWN = 40  # /kb list names the newest documents; a chat message holds about this many lines


def upload_name(filename) -> str | None:
    """A file name from chat made safe to keep and to show: the last path part only (no `..`, slashes or
    NUL), characters no file system allows replaced, Unicode (CJK included) kept as written, the name
    cut to 100 bytes with its suffix (lower-cased) kept. None when nothing usable is left."""
    from pathvalidate import sanitize_filename

    base = re.split(r"[\\/]", str(filename or "").replace("\x00", ""))[-1]
    base = unicodedata.normalize("NFC", " ".join(base.split())).strip(" .")
    stem, dot, suffix = base.rpartition(".")
    if not dot or not stem:
        stem, suffix = base, ""
    suffix = sanitize_filename(suffix, platform="universal").lower()[:16]
    stem = sanitize_filename(stem, replacement_text="_", platform="universal").strip(" .")
    stem = stem.encode()[:100].decode(errors="ignore").strip(" .")  # a cut never splits a character
    if not stem:
        return None
    return f"{stem}.{suffix}" if suffix else stem


def _write(path, data: bytes) -> None:
    """Write a file whole or not at all (a reader never sees half of it)."""
    import os

    # One temporary name per writer: two replicas adding the same name at once must not write into one file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB" if size >= 1024 * 1024 else f"{max(1, round(size / 1024))} KB"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _already() -> Reply:
    return Reply(ALREADY, private=True, duplicate=True)


def _in_range(number: int) -> bool:
    """Whether a row id can be this number: SQLite's integers are 1..2**63-1 here (a larger one would not bind)."""
    return 1 <= number <= _MAX_ID


def _nobody(caller: Caller) -> str | None:
    """Feedback is stored against a person: a payload that names none cannot give any."""
    return None if caller.user else messages.NOBODY


def _short(text: str, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[:n - 1] + "…"


def _sentence(message) -> str:
    text = str(message)
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def version_line(version: dict, in_service: str | None) -> str:
    """One adapter version in words, `▶` marking the one in service: `▶ v0002 (promoted): golden F1 …`."""
    return (f"{'▶' if version['version'] == in_service else '•'} {version['version']}"
            f"{' (' + version['verdict'] + ')' if version.get('verdict') else ''}"
            f"{metric_text(version.get('metrics') or {})}{forgotten_text(version)}")


def forgotten_text(version: dict) -> str:
    """` ⚠ trained on forgotten data (retrain queued)` for a marked version of `registry.listing`."""
    if not version.get("forgotten"):
        return ""
    return " ⚠ trained on forgotten data" + (", weights deleted" if not version.get("weights") else
                                              ": replaced at the next training job")


def metric_text(metrics: dict) -> str:
    """`: learned F1 0.06→0.84, NLL 4.10→0.90 · golden ...` from a card's metrics (empty when it has none)."""
    from bot.learning.evaluation import metric_parts

    parts = metric_parts(metrics)
    return (": " + " · ".join(parts)) if parts else ""


def job_line(row: dict) -> str:
    """One job in words: `#3 train promoted v0002 (step 60/60, loss 0.41) by slack:U1`."""
    step = f", step {row['step']}/{row['steps']}" if row.get("steps") else ""
    loss = f", loss {row['loss']:.3f}" if row.get("loss") is not None else ""
    version = f" {row['version']}" if row.get("version") else ""
    error = f": {_short(row['error'], 160)}" if row.get("error") and row["state"] in ("failed", "cancelled") else ""
    return f"#{row['id']} {row['kind']} {row['state']}{version}{step}{loss} by {row['requested_by']}{error}"
