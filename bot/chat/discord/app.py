"""Discord front end: runs inside `python -m bot serve` when DISCORD_TOKEN is set.

Slash commands are declared with discord.py's app_commands (each signature is
the command's schema) and registered by `python -m bot discord-sync`
(sync_commands), never on start. Mentions and DMs are answered too, with the
earlier turns of the thread, channel or DM as context. Permissions and every
other decision live in bot.commands: this module turns payloads into a Caller
and Replies into messages, running the blocking command methods in threads so
the event loop (shared with Slack) never waits. Questions are admitted first
(rate limits, the queue bound: "busy, try again in N s"); buttons and forms
the bot does not know get a message saying so instead of Discord's
"This interaction failed".

Feedback (votes, corrections, /feedback, /forget) is committed with the
interaction id as its delivery key before the person is told it is saved,
so a redelivered interaction is answered once and one whose first delivery
died before its commit is processed. Questions and unknown interactions count
once through one helper (`_first`, `Commands.first_delivery`). A question
being answered is on record (`Commands.inflight_*`) until its answer is
posted, so a restart finishes it. Slash-command options arrive typed and go
straight to the typed command methods.
"""
from __future__ import annotations

import asyncio
import io
import logging
import re
from typing import Literal, Optional

import discord
from discord import app_commands

from bot.commands import Caller, Commands, Reply, upload_name
from bot.chat.discord.render import answer_messages, split_message
from bot.messages import CORRECT_TITLE, TRY_AGAIN as SORRY, UNKNOWN_BUTTON, UNKNOWN_FORM, not_added

log = logging.getLogger("bot.discord")
LIMIT = 2000  # Discord's maximum message length
CORRECTION_ID = re.compile(r"kb:correct:(?P<answer>[0-9a-f]{6,32})")
VOTE_ID = re.compile(r"kb:vote:(?P<value>up|down):(?P<answer>[0-9a-f]{6,32})")
FIELD = "correction"
DOWNLOAD_TIMEOUT_S = 60.0  # /kb add: fetching an attachment from Discord's CDN


# -- who is asking, and where ------------------------------------------------

def _where(channel, channel_id) -> tuple[str, str]:
    """(channel, thread) keys: a Discord thread is one conversation; elsewhere the channel or DM is."""
    if isinstance(channel, discord.Thread):
        return str(channel.parent_id), str(channel.id)
    key = str(channel.id if channel is not None else channel_id or "")
    return key, key


def _roles(user) -> tuple[str, ...]:
    if not isinstance(user, discord.Member):
        return ()
    # `roles` lists only roles in the guild cache (absent for a user-installed app),
    # `_roles` every id Discord sent with the member; @everyone is left out of both.
    ids = {r.id for r in user.roles if not r.is_default()} | set(getattr(user, "_roles", ()))
    return tuple(sorted(str(i) for i in ids))


def _caller(user, channel, channel_id) -> Caller:
    where, thread = _where(channel, channel_id)
    return Caller("discord", str(user.id), where, thread, _roles(user))


def caller_for(interaction: discord.Interaction) -> Caller:
    return _caller(interaction.user, interaction.channel, interaction.channel_id)


async def _first(cmds: Commands, key: str) -> bool:
    """The one de-duplication of this platform: True the first time Discord delivers `key`."""
    return await asyncio.to_thread(cmds.first_delivery, key)


def _delivery(interaction: discord.Interaction) -> str:
    return f"discord:interaction:{interaction.id}"


# -- buttons and the correction modal ------------------------------------------

class VoteButton(discord.ui.DynamicItem[discord.ui.Button], template=VOTE_ID.pattern):
    """👍/👎 under an answer. The state lives in the custom_id, so a click on a
    message sent before a restart reaches a fresh process all the same."""

    def __init__(self, value: str, answer_id: str, label: str | None = None, row: int | None = None):
        emoji = "👍" if value == "up" else "👎"
        super().__init__(discord.ui.Button(
            emoji=emoji, label=label, style=discord.ButtonStyle.secondary, row=row,
            custom_id=f"kb:vote:{value}:{answer_id}"))
        self.value, self.answer_id = value, answer_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str], /):
        return cls(match["value"], match["answer"])

    async def callback(self, interaction: discord.Interaction) -> None:
        cmds: Commands = interaction.client.kb
        # Stored before the response, so the vote counts even if the person then closes the correction form.
        reply = await asyncio.to_thread(cmds.vote, caller_for(interaction), self.answer_id,
                                        1 if self.value == "up" else -1, delivery=_delivery(interaction))
        if reply.duplicate:
            return  # a redelivery of a stored click: the first one was answered
        if self.value == "down" and reply.ok:
            await interaction.response.send_modal(CorrectionModal(self.answer_id))
        else:
            await interaction.response.send_message(reply.text, ephemeral=True)


def vote_view(answer_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(VoteButton("up", answer_id))
    view.add_item(VoteButton("down", answer_id))
    return view


class CorrectionModal(discord.ui.Modal):
    """The form a 👎 opens. Its custom_id names the answer, so a form submitted
    after a restart is still understood (KBClient.on_interaction)."""

    def __init__(self, answer_id: str):
        super().__init__(title=CORRECT_TITLE, custom_id=f"kb:correct:{answer_id}", timeout=15 * 60)
        self.answer_id = answer_id
        # 4000 is Discord's cap for a text input; commands.correct checks its own limit too.
        self.text = discord.ui.TextInput(custom_id=FIELD, style=discord.TextStyle.paragraph, max_length=4000,
                                         placeholder="What should the answer have said? Cite the document if you can.")
        self.add_item(discord.ui.Label(text="Your correction", component=self.text,
                                       description="Reviewed before it is used to train the assistant."))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await submit_correction(interaction, self.answer_id, self.text.value)


def _submitted(components: list, custom_id: str) -> str:
    """A field's value from a modal-submit payload (inside action rows or labels)."""
    for c in components:
        if c.get("custom_id") == custom_id:
            return c.get("value") or ""
        value = _submitted(c.get("components") or ([c["component"]] if "component" in c else []), custom_id)
        if value:
            return value
    return ""


async def submit_correction(interaction: discord.Interaction, answer_id: str, text: str) -> None:
    cmds: Commands = interaction.client.kb
    # The live modal and the restart fallback both see a submission, and Discord may redeliver it:
    # the delivery key commits with the correction, so it is stored and answered once, and a
    # delivery that died before its commit is stored by the next one.
    try:
        reply = await asyncio.to_thread(cmds.correct, caller_for(interaction), answer_id, text,
                                        delivery=_delivery(interaction))
    except Exception:  # the database: nothing was stored (nor its key), and the person is told so
        log.exception("storing a correction by %s failed", interaction.user.id)
        reply = Reply(SORRY, ok=False, private=True)
    if reply.duplicate:
        return
    await interaction.response.send_message(reply.text, ephemeral=True)


async def _unknown(interaction: discord.Interaction, text: str) -> None:
    log.info("unknown %s %s", interaction.type.name, ((interaction.data or {}).get("custom_id") or "")[:100])
    if not await _first(interaction.client.kb, _delivery(interaction)):
        return
    await interaction.response.send_message(text, ephemeral=True)


# -- sending ------------------------------------------------------------------

async def _post(send, text: str, view: discord.ui.View | None = None, first=None, file=None, **kw) -> None:
    """Post text as one or more messages (Discord's limit); the view (buttons) and a file go under the last."""
    await _post_chunks(send, split_message(text, LIMIT), view, first, file, **kw)


async def _post_answer(send, answer, first=None) -> None:
    """An answer with its 👍/👎; one too long for MAX_MESSAGES messages also as a file under the last."""
    chunks, whole = answer_messages(answer, LIMIT)
    file = discord.File(io.BytesIO(whole.encode()), filename=f"answer-{answer.id}.md") if whole else None
    await _post_chunks(send, chunks, vote_view(answer.id), first, file)


async def _post_chunks(send, chunks: list[str], view=None, first=None, file=None, **kw) -> None:
    chunks = chunks or ["(nothing to show)"]
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        extra = {"view": view} if view is not None and last else {}
        if file is not None and last:
            extra["file"] = file
        await (first if i == 0 and first else send)(chunk, **kw, **extra)


# How long a feedback command may take before its interaction is deferred: Discord allows 3 s for the
# first response, and the rest of the margin is for the network.
STORED_REPLY_WAIT_S = 2.0


async def _run(interaction: discord.Interaction, method, *args, public: bool = False, stored: bool = False) -> None:
    """Run the command off the loop and reply; one that outlasts Discord's 3 s is deferred ("thinking")
    and followed up (15 min allowed).

    `public`: the reply may be for the channel (a completed /train, promote,
    reindex); a refusal is still private, so the public "thinking" placeholder is
    deleted and the refusal goes to the caller alone. `stored`: a feedback command (/feedback optout,
    review accept, /forget), committed with the interaction id as its delivery key. Acknowledged means
    stored: its first response waits for the commit and is the result itself, so a crash can never
    leave an acknowledged action unstored. Only when the commit outlasts STORED_REPLY_WAIT_S is the
    interaction deferred, and then nothing says "done" before the follow-up, sent after the commit.
    Other commands defer at once: they store nothing a person was told about.
    """
    kwargs = {"delivery": _delivery(interaction)} if stored else {}
    work = asyncio.ensure_future(asyncio.to_thread(method, caller_for(interaction), *args, **kwargs))
    if stored:
        done, _ = await asyncio.wait({work}, timeout=STORED_REPLY_WAIT_S)
        if done:
            reply: Reply = work.result()
            if not reply.duplicate:
                await _post(interaction.followup.send, reply.text, _feedback_view(reply),
                            first=interaction.response.send_message, ephemeral=not public or reply.private)
            return
    await interaction.response.defer(ephemeral=not public, thinking=True)
    reply = await work
    if reply.duplicate:
        return
    await _follow_up(interaction, reply, public)


async def _follow_up(interaction: discord.Interaction, reply: Reply, public: bool) -> None:
    """The reply to a deferred command: a private one after a public "thinking" deletes that first."""
    if public and reply.private:
        await interaction.delete_original_response()
    file = reply.attachment  # /adapter chart: the PNG rides on the follow-up
    chart = discord.File(io.BytesIO(file.content), filename=file.name) if file is not None else None
    await _post(interaction.followup.send, reply.text, _feedback_view(reply), file=chart, ephemeral=reply.private)


async def add_attachment(interaction: discord.Interaction, file: discord.Attachment) -> None:
    """/kb add: who asks, and the file's name, type and size (Discord says them), are checked before the
    file is downloaded from Discord's CDN (with a timeout); then it is indexed, off the loop."""
    cmds: Commands = interaction.client.kb
    if not await _first(cmds, _delivery(interaction)):
        return  # a redelivery: the first one is being added
    await interaction.response.defer(thinking=True)  # public: the channel sees what was added
    caller = caller_for(interaction)
    reply = await asyncio.to_thread(cmds.kb_add_refusal, caller, file.filename, file.size)
    if reply is None:
        try:
            data = await asyncio.wait_for(file.read(), DOWNLOAD_TIMEOUT_S)
        except (discord.HTTPException, asyncio.TimeoutError) as e:
            why = f"took over {DOWNLOAD_TIMEOUT_S:.0f} s" if isinstance(e, asyncio.TimeoutError) else \
                f"failed (HTTP {e.status})"
            reply = Reply(not_added(upload_name(file.filename) or "the file", f"downloading it {why}"),
                          ok=False, private=True)
        else:
            reply = await asyncio.to_thread(cmds.kb_add, caller, file.filename, data)
    await _follow_up(interaction, reply, public=True)


def _feedback_view(reply: Reply) -> discord.ui.View | None:
    """/feedback lists recent answers; give each a 👍/👎 pair, numbered as in the list."""
    answers = reply.rateable
    view = discord.ui.View(timeout=None) if answers else None
    for n, a in enumerate(answers[:5], 1):
        view.add_item(VoteButton("up", a["id"], label=str(n), row=n - 1))
        view.add_item(VoteButton("down", a["id"], label=str(n), row=n - 1))
    return view


# -- the client ---------------------------------------------------------------

class KBClient(discord.Client):
    def __init__(self, cmds: Commands | None, *, message_content: bool = False):
        intents = discord.Intents.none()
        intents.guilds = intents.guild_messages = intents.dm_messages = True
        # Messages that mention the bot, and DMs, carry their text without the
        # privileged intent; asking for it needs a switch in the developer portal.
        intents.message_content = message_content
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none())
        # discord.py logs every request body and gateway event at DEBUG: message text, which never
        # goes to our logs. Its loggers stop at INFO whatever the root level.
        logging.getLogger("discord").setLevel(max(logging.INFO, logging.getLogger("discord").level))
        self.kb = cmds
        self.tree = app_commands.CommandTree(self)
        _register(self.tree)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(VoteButton)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        data = interaction.data or {}
        custom_id = data.get("custom_id") or ""
        if interaction.type is discord.InteractionType.modal_submit:
            match = CORRECTION_ID.fullmatch(custom_id)
            # Also reached when the modal is alive in this process: submit_correction answers once.
            if match:
                await submit_correction(interaction, match["answer"], _submitted(data.get("components", []), FIELD))
            else:
                await _unknown(interaction, UNKNOWN_FORM)
        elif interaction.type is discord.InteractionType.component and not VOTE_ID.fullmatch(custom_id):
            # VoteButton answers its own ids (also after a restart); nothing else would answer this one.
            await _unknown(interaction, UNKNOWN_BUTTON)

    async def on_message(self, message: discord.Message) -> None:
        me = self.user
        if me is None or message.author.bot or message.webhook_id or message.author.id == me.id:
            return
        in_dm = isinstance(message.channel, discord.DMChannel)
        if not in_dm and not any(u.id == me.id for u in message.mentions):
            return
        question = re.sub(rf"<@!?{me.id}>", " ", message.content).strip()
        refusal = self.kb.check_question(question)
        if refusal:
            await message.reply(refusal.text)
            return
        caller = _caller(message.author, message.channel, None)
        with self.kb.admission(caller) as busy:
            if busy:
                await message.reply(busy.text)
                return
            if not await _first(self.kb, f"discord:message:{message.id}"):
                return
            # Nothing is posted until the answer is: a restart posts it in the conversation instead.
            held = await asyncio.to_thread(self.kb.inflight_begin, caller, question)
            async with message.channel.typing():
                answer = await asyncio.to_thread(self.kb.ask, caller, question)
        await _post_answer(message.channel.send, answer, first=message.reply)
        await asyncio.to_thread(self.kb.inflight_end, held)


def _register(tree: app_commands.CommandTree) -> None:
    """The slash commands; callbacks reach the command layer through `interaction.client.kb`."""

    @tree.command(name="ask", description="Answer from the knowledge base, with numbered sources")
    @app_commands.describe(question="Your question, in Chinese or English")
    async def ask(interaction: discord.Interaction, question: str) -> None:
        cmds: Commands = interaction.client.kb
        refusal = cmds.check_question(question)
        if refusal:
            await interaction.response.send_message(refusal.text, ephemeral=True)
            return
        caller = caller_for(interaction)
        with cmds.admission(caller) as busy:
            if busy:
                await interaction.response.send_message(busy.text, ephemeral=True)
                return
            if not await _first(cmds, _delivery(interaction)):
                return  # a redelivery: the first one is being answered
            # On record before the deferral: a restart edits the "thinking…" reply through the token.
            held = await asyncio.to_thread(cmds.inflight_begin, caller, question,
                                           interaction=f"{interaction.application_id}/{interaction.token}")
            await interaction.response.defer(thinking=True)
            answer = await asyncio.to_thread(cmds.ask, caller, question)
        await _post_answer(interaction.followup.send, answer)
        await asyncio.to_thread(cmds.inflight_end, held)

    kb = app_commands.Group(name="kb", description="The knowledge base")

    @kb.command(name="search", description="Show the passages that match a query")
    @app_commands.describe(query="Words to look for")
    async def kb_search(interaction: discord.Interaction, query: str) -> None:
        await _run(interaction, interaction.client.kb.kb_search, query)

    @kb.command(name="reindex", description="Re-read the knowledge base folder (admin)")
    async def kb_reindex(interaction: discord.Interaction) -> None:
        await _run(interaction, interaction.client.kb.kb_reindex, public=True)

    @kb.command(name="add", description="Add a document to the knowledge base; one of the same name is replaced (admin)")
    @app_commands.describe(file="The document to add: any type `python -m bot index` reads")
    async def kb_add(interaction: discord.Interaction, file: discord.Attachment) -> None:
        await add_attachment(interaction, file)

    @kb.command(name="list", description="The documents, with passage counts and when they were added")
    async def kb_list(interaction: discord.Interaction) -> None:
        await _run(interaction, interaction.client.kb.kb_list)

    @kb.command(name="remove", description="Take a document added from chat out of the knowledge base (admin)")
    @app_commands.describe(name="The document's name, as /kb list shows it")
    async def kb_remove(interaction: discord.Interaction, name: str) -> None:
        await _run(interaction, interaction.client.kb.kb_remove, name, public=True)

    tree.add_command(kb)

    @tree.command(name="feedback", description="Your recent answers to rate; opt out of training; review corrections")
    @app_commands.describe(
        # Discord allows 100 characters and discord.py cuts longer ones silently (tests check the payload).
        action="list (default): your recent answers · optout/optin: training use · review/accept/reject (admin)",
        correction_id="The correction to accept or reject (the number after # in the review list)")
    async def feedback(interaction: discord.Interaction,
                       action: Optional[Literal["list", "optout", "optin", "review", "accept", "reject"]] = None,
                       correction_id: Optional[app_commands.Range[int, 1]] = None) -> None:
        cmds: Commands = interaction.client.kb
        if action in (None, "list"):
            await _run(interaction, cmds.feedback_list)
        elif action == "optout":
            await _run(interaction, cmds.opt_out, stored=True)
        elif action == "optin":
            await _run(interaction, cmds.opt_in, stored=True)
        elif action == "review":
            await _run(interaction, cmds.review, stored=True)
        else:  # accept | reject
            await _run(interaction, cmds.review, action, correction_id, stored=True)

    @tree.command(name="forget", description="Delete your questions, votes and corrections, and opt out of training")
    @app_commands.describe(what="me: everything you asked, rated and corrected")
    async def forget(interaction: discord.Interaction, what: Literal["me"]) -> None:
        await _run(interaction, interaction.client.kb.forget, stored=True)  # `what` can only be "me"

    @tree.command(name="train", description="Queue a fine-tuning job on accepted feedback (admin)")
    async def train(interaction: discord.Interaction) -> None:
        # Public: the job's progress and verdict follow in this channel or thread (serve posts the outbox).
        await _run(interaction, interaction.client.kb.train, public=True)

    @tree.command(name="jobs", description="Training jobs and their state; cancel one (admin or whoever queued it)")
    @app_commands.describe(cancel="The id of a job to cancel")
    async def jobs(interaction: discord.Interaction, cancel: Optional[app_commands.Range[int, 1]] = None) -> None:
        if cancel is None:
            await _run(interaction, interaction.client.kb.jobs)
        else:
            await _run(interaction, interaction.client.kb.cancel_job, cancel, public=True)

    @tree.command(name="adapter", description="Adapter versions; promote and rollback are for admins")
    @app_commands.describe(action="list, chart, promote or rollback", version="The version to promote")
    async def adapter(interaction: discord.Interaction, action: Literal["list", "chart", "promote", "rollback"],
                      version: Optional[str] = None) -> None:
        cmds: Commands = interaction.client.kb
        if action == "list":
            await _run(interaction, cmds.adapter_list)
        elif action == "chart":
            await _run(interaction, cmds.adapter_chart, public=True)
        elif action == "promote":
            await _run(interaction, cmds.adapter_promote, version, public=True)
        else:
            await _run(interaction, cmds.adapter_rollback, public=True)

    @tree.command(name="help", description="What this bot can do")
    async def help_(interaction: discord.Interaction) -> None:
        await _run(interaction, interaction.client.kb.help)

    @tree.error
    async def on_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        log.error("/%s failed", getattr(interaction.command, "qualified_name", "?"), exc_info=error)
        if interaction.response.is_done():
            await interaction.followup.send(SORRY, ephemeral=True)
        else:
            await interaction.response.send_message(SORRY, ephemeral=True)


# -- entry points -------------------------------------------------------------

def build_client(commands: Commands, *, message_content: bool = False) -> KBClient:
    """A client with the command tree and the persistent buttons; it starts nothing."""
    return KBClient(commands, message_content=message_content)


async def sync_commands(token: str, guild_id: int | None = None) -> list[str]:
    """Register the slash commands over REST (no gateway); returns their names.

    With `guild_id` they go to that guild only and show up at once (for development).
    """
    client = build_client(None)
    async with client:
        await client.login(token)
        guild = discord.Object(id=guild_id) if guild_id else None
        if guild is not None:
            client.tree.copy_global_to(guild=guild)
        synced = await client.tree.sync(guild=guild)
    return [c.name for c in synced]


async def start(client: discord.Client, token: str) -> None:
    """Log in and hold the gateway on the running event loop until cancelled; never syncs."""
    async with client:
        await client.start(token)
