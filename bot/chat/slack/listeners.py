"""What the bot does with each Slack request: slash commands, mentions, DMs, 👍/👎, corrections.

`Listeners.register(app)` wires them with bolt's own decorators. Questions
and commands ack first (Slack allows 3 s), then work; feedback (👍/👎,
corrections, `/feedback optout|optin|review`, `/forget me`) is stored first
and acked after, its delivery id committed in the same transaction, so an
acknowledged click is a stored one and a resend after a crash is processed.
The command layer is blocking (retrieval, SQL, generation), so it runs on
the listeners' thread pools, never on the loop. An answer streams into a
placeholder reply: the model writes tokens on a worker thread, `TokenStream`
hands them to the loop without blocking either side, and `pump` shows them
at most once per interval (Slack allows about one `chat.update` per message per second,
more gets HTTP 429), stopping as soon as the answer is complete so the
final update (sources, buttons) is never overtaken by a stale frame.
Slack retries deliveries it believes lost; one middleware (`Listeners.once`,
through `Commands.first_delivery`) makes each event and command count once,
the feedback writes' own delivery key each click. Every placeholder is on
record (`Commands.inflight_*`) until its answer lands, so a restart finishes
answers a killed process left "Thinking…". Slack's command text is parsed
into typed calls by bot/chat/slack/parse.py. `/kb add` (or `@kb add` on a
message with files, or in a thread with one) fetches the file first
(bot/chat/slack/files.py), after the command layer has said the caller and
the file's name and size may go on.

Questions are admitted (rate limits, the queue bound) before any work: past
a limit the asker is told "busy, try again in N s" at once. Input is checked
by the command layer; ids, buttons, forms and commands the bot does not know
get a message saying so rather than bolt's 404. Chat text never goes to the
logs: a failure is logged with ids only.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor

from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError

from bot import guard, messages
from bot.chat.slack import files, parse, render
from bot.commands import Caller, Commands, Reply
from bot.messages import SORRY

STORED_COMMANDS = ("/feedback", "/forget")  # acked only once their work is stored
# Commands that count once by the middleware (the stored ones count once by their write's delivery key).
ONCE_COMMANDS = ("/ask", "/kb", "/train", "/jobs", "/adapter", "/help")
FEEDBACK_ACK_S = 2.5  # how long a form or feedback command waits for its commit within Slack's 3 s
log = logging.getLogger(__name__)
# Slack's answers to a message it will never accept as sent: retrying cannot help, a new shape can.
REFUSED = {"msg_blocks_too_long", "msg_too_long", "invalid_blocks", "too_many_blocks"}
PLATFORM = "slack"


class TokenStream:
    """Tokens from the model's thread, shown in one Slack message by `pump` on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.pieces = loop, []
        self.changed, self.done = asyncio.Event(), asyncio.Event()
        self.updates = 0  # chat.update calls made while streaming
        self._woken = False

    def on_token(self, piece: str) -> None:
        """The answering layer's `on_token`: runs on a worker thread, never blocks."""
        self.pieces.append(piece)
        if not self._woken:
            self._woken = True
            try:
                self.loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop has closed (shutdown): generation may finish unseen
                pass

    def _wake(self) -> None:
        self._woken = False
        self.changed.set()

    def close(self) -> None:
        """The answer is complete: `pump` returns without another frame."""
        self.done.set()
        self.changed.set()

    def text(self) -> str:
        return "".join(self.pieces)

    async def pump(self, client, channel: str, ts: str, every_s: float) -> None:
        """Show the text so far in message `ts`, at most once per `every_s` seconds, until `close()`."""
        loop, last, shown = asyncio.get_running_loop(), -math.inf, ""
        while True:
            await self.changed.wait()
            self.changed.clear()
            wait = last + every_s - loop.time()
            if wait > 0 and not self.done.is_set():
                try:  # let tokens gather until the next update is allowed, unless the answer ends first
                    await asyncio.wait_for(self.done.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            if self.done.is_set():
                return
            text = self.text()
            if text == shown:
                continue
            try:
                await client.chat_update(channel=channel, ts=ts, text=render.streaming_text(text))
                self.updates += 1
            except SlackApiError as e:  # rate-limited or deleted: skip a frame; the final update follows
                log.warning("chat.update while streaming failed: %s", e.response.get("error"))
            shown, last = text, loop.time()


class Listeners:
    """The listeners, bound to one command layer and its thread pools."""

    def __init__(self, commands: Commands, update_every_s: float, workers: int):
        self.commands, self.update_every_s = commands, update_every_s
        # Own pools rather than asyncio.to_thread's default one: that has cpu+4
        # threads, is shared with Discord, and a question holds its thread for
        # the whole generation; delivery checks and feedback writes (milliseconds
        # of SQL, owed before an ack) get their own small pool, so a retried event
        # is recognised and a click stored in time even while every answer thread is busy.
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="slack-work")
        self.quick = ThreadPoolExecutor(4, thread_name_prefix="slack-quick")

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.quick.shutdown(wait=False, cancel_futures=True)

    def _submit(self, pool, fn, *args, **kwargs) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args, **kwargs))

    # -- de-duplication, once for every request: a bolt middleware --------------

    async def once(self, body, next):
        """Let a request through to its listener only the first time Slack delivers it.

        Questions and commands are claimed here, before their listener runs; feedback is not (its write
        commits its own delivery key, so a resend of one that died before its commit is processed). A
        resend stops here with bolt's empty 200: Slack's ack, and nothing else happens. The claim is
        milliseconds of SQL on the quick pool, so it comes before the listener's ack within Slack's 3 s."""
        key = delivery_key(body)
        if key is None or await self._submit(self.quick, self.commands.first_delivery, key):
            await next()
            return None
        return BoltResponse(status=200, body="")

    # -- slash commands -------------------------------------------------------

    def command(self, run):
        """A slash command answered by one message: `run(caller, text) -> Reply`, off the loop."""
        async def listener(ack, command, respond, client):
            if not command.get("user_id"):
                await ack(messages.NO_USER)
                return
            await ack()
            caller = Caller(PLATFORM, command["user_id"], command.get("channel_id", ""))
            try:
                reply = await self._submit(self.pool, run, caller,
                                           render.unescape(command.get("text") or "").strip())
            except Exception:  # a bug or the database: the caller hears so, the log gets no chat text
                log.exception("%s by %s failed", command.get("command"), caller.user)
                reply = Reply(SORRY, ok=False, private=True)
            await respond(**render.reply_message(reply))
            if reply.attachment is not None and caller.channel:
                await self.upload(client, caller.channel, reply)
        return listener

    def stored_command(self, run):
        """A feedback command (`/feedback`, `/forget`): `run(caller, text, delivery=...)` commits its work with
        the delivery id, and the ack carries the reply, so what is acknowledged is stored."""
        async def listener(ack, command, respond):
            if not command.get("user_id"):
                await ack(messages.NO_USER)
                return
            caller = Caller(PLATFORM, command["user_id"], command.get("channel_id", ""))
            work = self._submit(self.pool, run, caller, render.unescape(command.get("text") or "").strip(),
                                delivery=f"slack:cmd:{command.get('trigger_id')}")
            try:
                reply = await asyncio.wait_for(asyncio.shield(work), FEEDBACK_ACK_S)
            except asyncio.TimeoutError:
                # Not stored in Slack's time: no ack (Slack tells the person it failed, and a
                # later listener must not ack it either: unknown_command); the reply follows.
                log.warning("%s was not stored within %.1f s: left unacknowledged", command.get("command"),
                            FEEDBACK_ACK_S)
                reply = await self._settle(work, caller, command.get("command"))
                await respond(**render.reply_message(reply))
                return
            except Exception:
                reply = await self._settle(work, caller, command.get("command"))
            if reply.duplicate:
                await ack()  # a resend of a command already done: its reply was given
                return
            message = render.reply_message(reply)
            await ack(text=message["text"], response_type=message["response_type"])
        return listener

    @staticmethod
    async def _settle(work, caller: Caller, what) -> Reply:
        try:
            return await work
        except Exception:  # a bug or the database: the caller hears so, the log gets no chat text
            log.exception("%s by %s failed", what, caller.user)
            return Reply(SORRY, ok=False, private=True)

    @staticmethod
    async def upload(client, channel: str, reply: Reply) -> None:
        """Attach a reply's file (the /adapter chart) to the channel: Slack's v2 upload (needs files:write)."""
        file = reply.attachment
        try:
            await client.files_upload_v2(channel=channel, file=file.content, filename=file.name,
                                         title=file.title or file.name)
        except Exception as e:  # no files:write scope, or not in the channel: say so, keep serving
            log.warning("chart upload to %s failed: %s", channel, type(e).__name__)

    def kb(self, plain):
        """`/kb`: `add` fetches the newest file shared in the channel first; every other verb is `plain`."""
        async def listener(ack, command, respond, client):
            if not parse.is_kb_add(render.unescape(command.get("text") or "")) or not command.get("user_id"):
                await plain(ack, command, respond, client)
                return
            await ack()
            caller = Caller(PLATFORM, command["user_id"], command.get("channel_id", ""))
            reply = await self.add_file(client, caller, None)
            await respond(**render.reply_message(reply))
        return listener

    async def add_file(self, client, caller: Caller, file: dict | None, thread: str | None = None) -> Reply:
        """/kb add: the admin check before anything is read, then the file (`file`, else the newest shared
        in the thread or channel), its name and size checked before its bytes are fetched, then indexed."""
        cmds = self.commands
        try:
            refusal = await self._submit(self.quick, cmds.kb_add_refusal, caller)
            if refusal:
                return refusal
            file = file or await files.latest_file(client, caller.channel, thread)
            if file is None:
                return Reply("No file was shared here lately. Share the document, then run `/kb add`, or mention "
                             "me on the message that carries it (`@kb add`).", ok=False, private=True)
            file = await files.described(client, file)
            refusal = await self._submit(self.quick, cmds.kb_add_refusal, caller, file.get("name") or "",
                                         file.get("size"))
            if refusal:
                return refusal
            data = await files.download(file, client.token, cmds.max_file_bytes)
            return await self._submit(self.pool, cmds.kb_add, caller, file.get("name") or "", data)
        except files.FetchError as e:
            return Reply(messages.not_added("the file", str(e)), ok=False, private=True)
        except Exception:  # a bug or the database: the caller hears so, the log gets no chat text
            log.exception("/kb add by %s failed", caller.user)
            return Reply(SORRY, ok=False, private=True)

    async def ask(self, ack, command, respond, client):
        question = render.unescape(command.get("text") or "").strip()
        user, channel = command.get("user_id"), command.get("channel_id")
        if not user or not channel:
            await ack(messages.NO_USER_OR_CHANNEL)
            return
        bad = self.commands.check_question(question)
        if bad:
            await ack(render.escape(bad.text))  # a slash command's ack text is shown to the caller only
            return
        caller = Caller(PLATFORM, user, channel)
        with self.commands.admission(caller) as busy:
            if busy:
                await ack(render.escape(busy.text))
                return
            await ack()
            try:
                root = await client.chat_postMessage(channel=channel,
                                                     text=f"<@{user}> asked: {render.escape(question)}")
            except SlackApiError as e:
                # Not a member here (a private channel, a DM with someone else): answer
                # through the command's response URL instead, without streaming.
                log.info("cannot post in %s (%s): answering through response_url", channel, e.response.get("error"))
                try:
                    answer = await self._submit(self.pool, self.commands.ask, caller, question)
                except Exception:
                    log.exception("answering in %s for %s failed", channel, user)
                    await respond(**render.reply_message(Reply(SORRY, ok=False, private=True)))
                    return
                # No file can be posted where the bot is not a member: a long answer is cut, and says so.
                await respond(text=render.answer_fallback(answer),
                              blocks=render.answer_blocks(answer, uploaded=False), response_type="in_channel")
                return
            await self.answer(client, Caller(PLATFORM, user, channel, root["ts"]), question)

    # -- answering in a thread -------------------------------------------------

    async def answer(self, client, caller: Caller, question: str) -> None:
        """Post a placeholder in the thread, stream into it, then replace it with the final answer.

        The placeholder is on record from before it is posted until the final answer lands
        (bot/answering/inflight.py): a process killed in between leaves the record for the restart."""
        cmds = self.commands
        held = await self._submit(self.quick, cmds.inflight_begin, caller, question)
        try:
            placeholder = await client.chat_postMessage(channel=caller.channel, thread_ts=caller.thread,
                                                        text=render.THINKING)
        except Exception:  # nothing was posted: nothing to finish
            await self._submit(self.quick, cmds.inflight_end, held)
            raise
        ts = placeholder["ts"]
        await self._submit(self.quick, cmds.inflight_placed, held, ts)
        stream = TokenStream(asyncio.get_running_loop())
        pump = asyncio.create_task(stream.pump(client, caller.channel, ts, self.update_every_s))
        answer = None
        try:
            answer = await self._submit(self.pool, self.commands.ask, caller, question, on_token=stream.on_token)
        except Exception:  # the command layer never fails for the model's sake: a bug, or the database
            # Ids only: the question is chat text and never goes to the logs.
            log.exception("answering in %s (thread %s) for %s failed", caller.channel, caller.thread, caller.user)
        finally:
            stream.close()
            await pump  # no streaming frame may land after the final text
        if answer is not None and render.is_long(answer):
            # More than one message holds: the whole answer as a file in the thread, then the answer cut
            # with a note pointing at it (so below the file), then the placeholder loses its cursor.
            uploaded = await self._upload_answer(client, caller, answer)
            await self._post_below(client, caller, ts, answer, uploaded)
            await self._submit(self.quick, cmds.inflight_end, held)
            return
        if answer is None:
            final = {"text": messages.ANSWER_FAILED}
        else:
            final = {"text": render.answer_fallback(answer), "blocks": render.answer_blocks(answer)}
        try:
            await client.chat_update(channel=caller.channel, ts=ts, **final)
        except Exception as e:  # noqa: BLE001 (rate-limited, a network error): the outbox retries it, as text
            error = e.response.get("error") if isinstance(e, SlackApiError) else type(e).__name__
            if answer is None or error not in REFUSED:
                log.warning("final chat.update in %s failed (%r): handed to the outbox", caller.channel, error)
                # The answer as written: the outbox's sender converts and escapes it (the fallback
                # `text` is mrkdwn already, and would be escaped twice).
                await self._submit(self.quick, cmds.inflight_hand_off, held,
                                   final["text"] if answer is None else answer.answer)
                return
            # Slack will never take this answer as one message: it goes to the thread in parts, sources
            # and buttons last, and the placeholder loses its cursor. Retrying (the outbox) cannot help.
            log.warning("final chat.update in %s refused (%s): the answer follows in parts", caller.channel, error)
            await self._post_below(client, caller, ts, answer)
        await self._submit(self.quick, cmds.inflight_end, held)

    @staticmethod
    async def _post_below(client, caller: Caller, ts: str, answer, uploaded: bool | None = True) -> None:
        """The answer as new messages in the thread (sources and buttons last), and the placeholder `ts`
        told so, without its cursor. `uploaded`: see render.answer_blocks."""
        for part in render.answer_messages(answer, uploaded):
            await client.chat_postMessage(channel=caller.channel, thread_ts=caller.thread, **part)
        with contextlib.suppress(SlackApiError):
            await client.chat_update(channel=caller.channel, ts=ts, text=render.escape(messages.ANSWER_BELOW))

    @staticmethod
    async def _upload_answer(client, caller: Caller, answer) -> bool | None:
        """Upload the whole answer to the thread (files:write): True once it is there. None when it could
        not be: the answer is then posted whole in parts instead, never cut without its file."""
        try:
            await client.files_upload_v2(channel=caller.channel, thread_ts=caller.thread,
                                         **render.answer_file(answer))
            return True
        except Exception as e:  # noqa: BLE001 (no files:write scope, a network error): whole in parts instead
            log.warning("uploading a long answer to %s failed: %s", caller.channel, type(e).__name__)
            return None

    # -- mentions and direct messages -----------------------------------------

    async def on_mention(self, body, event, client):
        if not event.get("bot_id"):  # another bot mentioning us: no bot-to-bot loops
            await self._answer_event(body, event, client)

    async def on_message(self, body, event, client):
        # Every message event reaches here (and is acked by bolt, so Slack does not
        # retry it); only a person's own new DM is a question.
        if event.get("channel_type") == "im" and not event.get("subtype") and not event.get("bot_id"):
            await self._answer_event(body, event, client)

    async def _answer_event(self, body, event, client) -> None:
        thread = event.get("thread_ts") or event.get("ts")
        if not _addressed(event):
            log.warning("ignored a %s event without channel, user or ts (%s)", event.get("type"), body.get("event_id"))
            return  # nobody to answer, nowhere to answer: there is no one to tell either
        caller = Caller(PLATFORM, event["user"], event["channel"], thread)
        question = render.question_from_event(event.get("text") or "")
        if parse.is_kb_add(question):  # `@kb add` on a message with a file, or in a thread that has one
            await self._add_from_event(client, caller, event)
            return
        refusal = self.commands.check_question(question)
        # Only a question that can be asked takes a slot; a refused one is told why and costs nothing.
        admission = self.commands.admission(caller) if refusal is None else contextlib.nullcontext()
        with admission as busy:
            refusal = refusal or busy
            if refusal:
                try:
                    await client.chat_postEphemeral(channel=caller.channel, user=caller.user, thread_ts=thread,
                                                    text=render.escape(refusal.text))
                except SlackApiError as e:
                    log.warning("could not tell %s why their message was not answered: %s",
                                caller.user, e.response.get("error"))
                return
            await self.answer(client, caller, question)

    async def _add_from_event(self, client, caller: Caller, event: dict) -> None:
        """`@kb add`: the files the message carries, else the newest in its thread (a reply) or channel."""
        carried = files.shared(event.get("files"))
        in_thread = event.get("thread_ts")
        replies = [await self.add_file(client, caller, f) for f in carried] if carried else \
            [await self.add_file(client, caller, None, in_thread)]
        for reply in replies:
            try:
                if reply.private:
                    await client.chat_postEphemeral(channel=caller.channel, user=caller.user, thread_ts=caller.thread,
                                                    text=render.escape(reply.text))
                else:
                    await client.chat_postMessage(channel=caller.channel, thread_ts=caller.thread,
                                                  text=render.escape(reply.text))
            except SlackApiError as e:
                log.warning("could not reply to /kb add by %s: %s", caller.user, e.response.get("error"))

    # -- 👍 / 👎 and corrections ------------------------------------------------

    @staticmethod
    def _action_caller(body) -> Caller:
        return Caller(PLATFORM, (body.get("user") or {}).get("id", ""), (body.get("channel") or {}).get("id", ""))

    async def _say(self, body, respond, client, reply: Reply) -> None:
        """A private message to whoever clicked: through the response URL when there is one (messages),
        else ephemerally in the channel; a click inside a modal has neither, and is only acked."""
        try:
            if body.get("response_url"):
                await respond(**render.reply_message(reply))
            elif (body.get("channel") or {}).get("id") and (body.get("user") or {}).get("id"):
                await client.chat_postEphemeral(channel=body["channel"]["id"], user=body["user"]["id"],
                                                text=render.escape(reply.text))
        except SlackApiError as e:
            log.warning("could not reply to a click: %s", e.response.get("error"))

    def _action_key(self, body, action) -> str:
        return f"slack:action:{body.get('trigger_id') or action.get('action_ts')}"

    async def _store_vote(self, body, action, value: int) -> Reply:
        """Commit the vote with its delivery id, before the ack: SQL takes milliseconds of Slack's 3 s."""
        caller = self._action_caller(body)
        try:
            return await self._submit(self.quick, self.commands.vote, caller, action.get("value", ""), value,
                                      delivery=self._action_key(body, action))
        except Exception:  # the database: not stored, and the clicker is told so
            log.exception("storing a vote by %s failed", caller.user)
            return Reply(SORRY, ok=False, private=True)

    async def vote_up(self, ack, body, action, respond, client):
        reply = await self._store_vote(body, action, 1)
        await ack()
        if not reply.duplicate:  # a resend of a stored click was answered the first time
            await self._say(body, respond, client, reply)

    async def vote_down(self, ack, body, action, respond, client):
        answer_id = action.get("value", "")
        bad = guard.check_answer_id(answer_id)
        if bad:  # a forged or garbled button: no form to open for it
            await ack()
            await self._say(body, respond, client, Reply(bad, ok=False, private=True))
            return
        # Stored, then acked, then the form: the trigger_id allows 3 s for all three, the SQL takes milliseconds.
        reply = await self._store_vote(body, action, -1)
        await ack()
        if reply.duplicate:
            return
        if not reply.ok:
            await self._say(body, respond, client, reply)
            return
        try:
            await client.views_open(trigger_id=body["trigger_id"], view=render.correction_modal(answer_id))
        except SlackApiError as e:
            log.warning("could not open the correction modal: %s", e.response.get("error"))

    async def submit_correction(self, ack, body, view):
        caller = Caller(PLATFORM, (body.get("user") or {}).get("id", ""))
        # The command layer decides what a valid correction is and commits it with the delivery id;
        # its answer (ms of SQL) is what the ack carries, as field errors or a thank-you in place of the form.
        work = self._submit(self.quick, self.commands.correct, caller, view.get("private_metadata", ""),
                            render.correction_text(view),
                            # The form's view id: the same for Slack's resend and for the person submitting
                            # the same form again after an error, so neither stores it twice.
                            delivery=f"slack:view:{view.get('id') or body.get('trigger_id')}")
        try:
            reply = await asyncio.wait_for(asyncio.shield(work), FEEDBACK_ACK_S)
        except asyncio.TimeoutError:
            # Not stored in Slack's time: no ack, so the form stays open with the text in it and
            # Slack says it could not be sent; the commit goes on, and a second submission of the
            # same form is recognised by its delivery id.
            log.warning("a correction was not stored within %.1f s: left unacknowledged", FEEDBACK_ACK_S)
            await self._settle(work, caller, "a correction")
            return
        except Exception:
            reply = await self._settle(work, caller, "a correction")
        if reply.ok:
            await ack(response_action="update", view=render.thanks_modal(reply))
        elif not view.get("state", {}).get("values", {}).get(render.CORRECTION):
            # No such field in this form (a forged or older view): an error for it would show nowhere.
            await ack(response_action="update", view=render.notice_modal("Not saved", reply.text))
        else:
            await ack(response_action="errors", errors={render.CORRECTION: render.field_error(reply.text)})

    # -- what the bot does not know: a message, not bolt's 404 ------------------

    async def unknown_command(self, ack, command):
        if command.get("command") in STORED_COMMANDS:  # see unknown_action: still being stored
            return
        await ack(render.escape(messages.unknown_command(command.get("command")))[:3000])

    async def unknown_action(self, ack, body, respond, client):
        ids = {a.get("action_id") for a in body.get("actions") or []}
        if ids & {render.VOTE_UP, render.VOTE_DOWN}:
            # Bolt hands a request on to the next matching listener when the first has not acked
            # within its 3 s: a vote still waiting for its commit. Acking it here would acknowledge
            # a vote that is not stored (and tell the person the button is unknown); unacked,
            # Slack shows an error, and the vote lands when its commit does.
            log.warning("a vote was not stored within Slack's 3 s: left unacknowledged")
            return
        await ack()
        log.info("unknown action %s", [a.get("action_id") for a in body.get("actions") or []][:3])
        await self._say(body, respond, client, Reply(render.UNKNOWN_ACTION, ok=False, private=True))

    async def unknown_view(self, ack, view):
        if view.get("callback_id") == render.CORRECTION:  # see unknown_action: the real listener is still at work
            log.warning("a correction form was not answered within Slack's 3 s: left unacknowledged")
            return
        log.info("unknown form %s", view.get("callback_id"))
        await ack(response_action="update", view=render.notice_modal("Not saved", render.UNKNOWN_FORM))

    async def ignore(self, ack):
        await ack()  # a form closed, a shortcut not ours: nothing to do, and nothing to say

    def register(self, app) -> None:
        cmds = self.commands
        app.middleware(self.once)
        app.command("/ask")(self.ask)
        app.command("/kb")(self.kb(self.command(functools.partial(parse.kb, cmds))))
        app.command("/feedback")(self.stored_command(functools.partial(parse.feedback, cmds)))
        app.command("/forget")(self.stored_command(functools.partial(parse.forget, cmds)))
        # The job's progress and verdict go to the channel /train was run in (the outbox, posted by serve).
        app.command("/train")(self.command(lambda caller, text: cmds.train(caller)))
        app.command("/jobs")(self.command(functools.partial(parse.jobs, cmds)))
        app.command("/adapter")(self.command(functools.partial(parse.adapter, cmds)))
        app.command("/help")(self.command(lambda caller, text: cmds.help(caller)))
        app.event("app_mention")(self.on_mention)
        app.event("message")(self.on_message)
        app.action(render.VOTE_UP)(self.vote_up)
        app.action(render.VOTE_DOWN)(self.vote_down)
        app.view(render.CORRECTION)(self.submit_correction)
        # Bolt runs the first listener that matches: these catch whatever the ones above did not.
        anything = re.compile(".*", re.DOTALL)
        app.command(anything)(self.unknown_command)
        app.action(anything)(self.unknown_action)
        app.view_submission(anything)(self.unknown_view)
        app.view_closed(anything)(self.ignore)
        app.shortcut(anything)(self.ignore)


def _addressed(event: dict) -> bool:
    """Whether an event names who wrote it, where, and the message to answer in the thread of."""
    return bool(event.get("channel") and event.get("user") and (event.get("thread_ts") or event.get("ts")))


def _question_event(event: dict) -> bool:
    """Whether the listeners answer this event: a person's mention of the bot, or their own new DM."""
    if event.get("bot_id") or not _addressed(event):
        return False
    if event.get("type") == "app_mention":
        return True
    return event.get("type") == "message" and event.get("channel_type") == "im" and not event.get("subtype")


def delivery_key(body: dict) -> str | None:
    """The key a request is de-duplicated by, or None for one that is not (feedback carries its own key in
    its write; events the bot does not answer are not recorded at all)."""
    if body.get("command") is not None:
        return f"slack:cmd:{body.get('trigger_id')}" if body.get("command") in ONCE_COMMANDS else None
    event = body.get("event")
    if body.get("type") == "event_callback" and isinstance(event, dict) and _question_event(event):
        return f"slack:event:{body.get('event_id')}"
    return None
