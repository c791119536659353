"""The serving process: `python -m bot serve` (Procfile `web`).

One process, one event loop, one copy of the model: Slack (HTTP on $PORT at
/slack/events, or Socket Mode when SLACK_APP_TOKEN is set) and Discord (when
DISCORD_TOKEN is set) share the loop, and both reach the model through the
single model worker. `/healthz` (liveness), `/readyz` (readiness) and
`/metrics` (Prometheus) answer on $PORT in every case, so the process
starts, and tells the operator what it serves, with nothing set.
Each running platform also posts the training jobs' outbox (`post_outbox`),
which also carries the answers a killed process left unfinished: at start,
`inflight.recover` gives each an apology with the retrieval-only answer, and
the sender puts it in place of the placeholder.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

from bot import config, store, wiring

log = logging.getLogger("bot.ops.serve")
OUTBOX_EVERY_S = 2.0  # how often each platform's poster looks for job messages
SLACK_TEXT_CHARS = 39000  # Slack truncates a message past 40,000 characters


# -- the outbox: what training jobs have to say, posted by this process -------------
#
# The training worker holds no chat token: it writes its progress and verdict
# to the `outbox` table, and each platform running here posts its rows to the
# channel or thread that asked. A claim is a lease (store.claim_outbox), so a
# message claimed by a poster that died is offered again; a post that fails
# is left unmarked and offered again after the lease, unless it can never
# succeed (the channel is gone, the bot may not post there): that one is
# logged and dropped, not retried forever.


class Undeliverable(Exception):
    """Raised by a sender for a message that can never be posted; the poster drops it."""


async def post_outbox_once(db, platform: str, send, claimer: str, *, lease_s: float = 60.0,
                           limit: int = 20) -> int:
    """Claim `platform`'s unsent messages and post them with `await send(row)`; returns how many were posted.

    Each posted message is marked sent at once; an undeliverable one is marked
    dropped, with the reason. After a
    failed post, the later messages of the same conversation wait for the
    retry too, so a thread never reads a job's messages out of order."""
    rows = await asyncio.to_thread(store.claim_outbox, db, platform, claimer, limit, lease_s)
    posted, blocked = 0, set()
    for row in rows:
        where = (row["channel"], row["thread"])
        if where in blocked:
            continue
        try:
            await send(row)
        except Undeliverable as e:
            log.warning("outbox #%s (job %s) to %s %s dropped: %s", row["id"], row["job_id"], platform, where, e)
            await asyncio.to_thread(store.mark_outbox_dropped, db, row["id"], str(e))
            continue
        except Exception as e:  # noqa: BLE001 (a network error, a rate limit): offered again after the lease
            log.warning("outbox #%s (job %s) to %s %s not posted, retried in %.0f s: %r",
                        row["id"], row["job_id"], platform, where, lease_s, e)
            blocked.add(where)
            continue
        else:
            posted += 1
        await asyncio.to_thread(store.mark_outbox_sent, db, [row["id"]])
    return posted


async def post_outbox(db, platform: str, send, every_s: float = OUTBOX_EVERY_S, stop: asyncio.Event | None = None,
                      *, ready=None, claimer: str | None = None, lease_s: float = 60.0) -> None:
    """Post `platform`'s outbox every `every_s` seconds until `stop` is set (or the task is cancelled).

    `send(row)` is the transport's coroutine (`slack_sender`, `discord_sender`);
    `ready()`, when given, says whether the platform can post yet (Discord
    before login cannot): nothing is claimed until it can. The loop outlives
    any exception (the database busy, a bug in a sender)."""
    claimer = claimer or f"{platform}@{socket.gethostname()}:{os.getpid()}"
    stop = stop or asyncio.Event()
    while not stop.is_set():
        try:
            if ready is None or ready():
                await post_outbox_once(db, platform, send, claimer, lease_s=lease_s)
        except Exception:  # noqa: BLE001
            log.exception("outbox poster (%s) failed; trying again in %.1f s", platform, every_s)
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except asyncio.TimeoutError:
            pass


SLACK_UNDELIVERABLE = {"channel_not_found", "not_in_channel", "is_archived", "restricted_action",
                       "msg_too_long", "no_text", "invalid_thread_ts", "thread_reply_not_allowed"}


SLACK_GONE = {"message_not_found", "cant_update_message", "edit_window_closed"}


def slack_sender(client):
    """`send(row)` for Slack: chat.postMessage to the row's channel, in its thread when it has one; a row
    that names a message (a placeholder left by a killed process) replaces it with chat.update instead."""
    from slack_sdk.errors import SlackApiError

    from bot.chat.slack.render import escape

    async def send(row: dict) -> None:
        text = escape(row["text"])[:SLACK_TEXT_CHARS]
        try:
            if row.get("update_message"):
                try:
                    await client.chat_update(channel=row["channel"], ts=row["update_message"], text=text)
                    return
                except SlackApiError as e:
                    if e.response.get("error") not in SLACK_GONE:
                        raise
                    # The placeholder was deleted: the answer goes to its thread as a new message.
            await client.chat_postMessage(channel=row["channel"], thread_ts=row["thread"] or None, text=text)
        except SlackApiError as e:
            error = e.response.get("error")
            if error in SLACK_UNDELIVERABLE:
                raise Undeliverable(f"Slack answered {error}") from e
            raise
    return send


def discord_sender(client):
    """`send(row)` for Discord: to the row's thread (or channel), split at Discord's 2000 characters.

    A channel the client has not cached (no gateway yet, a DM) is reached by
    id alone (a partial messageable): no extra request, no read permission."""
    import discord

    from bot.chat.discord.app import _post

    async def send(row: dict) -> None:
        if row.get("interaction") and await _edit_interaction(client, row):
            return
        try:
            target = int(row["thread"] or row["channel"])
        except (TypeError, ValueError):
            raise Undeliverable(f"not a Discord channel id: {row['thread'] or row['channel']!r}") from None
        channel = client.get_channel(target) or client.get_partial_messageable(target)
        try:
            await _post(channel.send, row["text"])
        except (discord.NotFound, discord.Forbidden) as e:
            raise Undeliverable(f"Discord answered {e.status} {e.text or ''}".strip()) from e
    return send


async def _edit_interaction(client, row: dict) -> bool:
    """Put the row's text in place of a deferred interaction's "thinking…" reply; False when the
    interaction can no longer be edited (its token lasts 15 minutes), so the text is posted instead."""
    import discord

    from bot.chat.discord.app import LIMIT
    from bot.chat.discord.render import split_message

    app_id, _, token = row["interaction"].partition("/")
    first, *rest = split_message(row["text"], LIMIT) or ["…"]
    try:
        hook = discord.Webhook.partial(int(app_id), token, client=client)
        await hook.edit_message("@original", content=first)  # type: ignore[arg-type]
        for chunk in rest:
            await hook.send(chunk, allowed_mentions=discord.AllowedMentions.none())
    except (ValueError, discord.NotFound, discord.Forbidden) as e:
        log.info("outbox #%s: interaction reply not editable (%s): posting in the channel", row["id"],
                 type(e).__name__)
        return False
    return True


def _watch(task: asyncio.Task, name: str, state: dict) -> asyncio.Task:
    """Log a platform that stops (a bad token, a lost connection) instead of failing silently."""
    def done(t: asyncio.Task):
        if not t.cancelled() and t.exception() is not None:
            state[name] = f"stopped: {type(t.exception()).__name__}: {t.exception()}"
            log.error("%s stopped: %r", name, t.exception())
    task.add_done_callback(done)
    return task


# -- operations: health, readiness and metrics on $PORT -------------------------------

DB_CHECK_TIMEOUT_S = 2.0  # a readiness probe must answer well within a load balancer's few seconds


class Ops:
    """What /healthz, /readyz and /metrics read: the database, the answerer's model, the platforms.

    `platforms` is the dict the serving loop fills in as each platform starts
    (and `_watch` when one stops): `{"slack": "off" | "http :3000/slack/events"
    | "socket mode" | "stopped: ...", "discord": ...}`."""

    def __init__(self, commands, platforms: dict, db_path, adapters_dir=None):
        self.commands, self.platforms = commands, platforms
        self.db_path, self.adapters_dir = db_path, adapters_dir
        self._registry = None

    def _generator(self):
        # Answerer.generator() holds its lock while the model loads: ask only once loaded (it returns at once).
        answerer = self.commands.answerer
        return answerer.generator() if answerer.generator_loaded else None

    def live(self) -> dict:
        """The in-process figures: model state, queues, adapter in service (no I/O but one small file read).

        `queue_depth` is what waits for the model worker; `in_flight` every question
        between `ask` and its recorded answer (retrieving, waiting, generating)."""
        from bot.llm.hotswap import read_pointer

        answerer = self.commands.answerer
        gen = self._generator()
        if gen is not None:
            model_state, model = "loaded", "loaded"
        elif answerer.unavailable_reason is not None:
            model_state, model = "retrieval-only", answerer.unavailable_reason
        else:
            model_state, model = "loading", "loading"
        inner = getattr(gen, "generator", gen)  # a ModelWorker wraps the LocalGenerator that holds the adapters
        return {"model_state": model_state, "model": model, "model_loaded": gen is not None,
                "queue_depth": int(getattr(gen, "depth", 0) or 0), "in_flight": answerer.queue_depth(),
                "adapter": {"in_service": read_pointer(self.adapters_dir) if self.adapters_dir else None,
                            "serving": getattr(inner, "active_adapter", None)}}

    async def database(self) -> dict:
        """`{"ok": True, "ms"}` when a fresh connection answers a real query in time, else `{"ok": False, "error"}`."""
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.to_thread(store.ping, self.db_path, DB_CHECK_TIMEOUT_S),
                                   DB_CHECK_TIMEOUT_S + 0.5)
        except asyncio.TimeoutError:
            return {"ok": False, "error": f"no answer within {DB_CHECK_TIMEOUT_S:.0f} s"}
        except Exception as e:  # noqa: BLE001 (missing, unreadable, not a database, locked)
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        return {"ok": True, "ms": round((time.perf_counter() - t0) * 1000, 2)}

    async def health(self) -> dict:
        """Liveness and readiness in one report; `ready` is what /readyz answers 200 or 503 on."""
        database, live = await self.database(), self.live()
        return {"ok": True,  # the process answers: liveness
                # Ready once the database answers and the model is loaded or has definitively fallen
                # back to retrieval-only; while it loads, questions would wait behind it.
                "ready": database["ok"] and live["model_state"] != "loading",
                "database": database, "model": live["model"], "model_state": live["model_state"],
                "queue_depth": live["queue_depth"], "in_flight": live["in_flight"], "adapter": live["adapter"],
                "slack": self.platforms.get("slack", "off"), "discord": self.platforms.get("discord", "off"),
                "platforms": dict(self.platforms)}

    @property
    def registry(self):
        if self._registry is None:  # prometheus_client is imported on first scrape, not with bot.ops.serve
            from bot.ops import metrics

            self._registry = metrics.registry(self.commands.db, self.live)
        return self._registry

    def routes(self) -> list:
        """GET /healthz (always 200 while the process lives; `?ready=1`: as /readyz), /readyz (200 or 503), /metrics."""
        from aiohttp import web

        async def healthz(request):
            report = await self.health()
            strict = request.query.get("ready", "") not in ("", "0", "false")
            return web.json_response(report, status=503 if strict and not report["ready"] else 200)

        async def readyz(request):
            report = await self.health()
            return web.json_response(report, status=200 if report["ready"] else 503)

        async def metrics_view(request):
            from bot.ops import metrics

            body = await asyncio.to_thread(metrics.exposition, self.registry)  # SQL: off the event loop
            return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

        return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_view)]


async def main_async(stop: asyncio.Event | None = None, outbox_every_s: float = OUTBOX_EVERY_S) -> None:
    from aiohttp import web

    from bot.answering import inflight

    cmds = wiring.build_commands()
    stop = stop or asyncio.Event()
    # Before any platform starts: what a killed process of this host left "Thinking…" goes to the
    # outbox now, answered from retrieval (no model needed), and the posters put it in place.
    await asyncio.to_thread(inflight.recover, cmds.db, cmds.answerer.searcher)
    state = {"slack": "off", "discord": "off"}  # the platforms, as they start and stop
    ops = Ops(cmds, state, config.get("BOT_DB"), config.get("BOT_ADAPTERS_DIR"))
    tasks = []
    port = config.get("PORT")
    slack_token, app_token = config.get("SLACK_BOT_TOKEN"), config.get("SLACK_APP_TOKEN")
    runner = None
    if slack_token:
        from bot.chat.slack import app as slack_app

        app = slack_app.build_app(cmds, token=slack_token, signing_secret=config.get("SLACK_SIGNING_SECRET"),
                                  api_url=config.get("SLACK_API_URL"))
        if app_token:
            tasks.append(_watch(asyncio.create_task(slack_app.start_socket_mode(app, app_token)), "slack", state))
            state["slack"] = "socket mode"
        else:
            runner = await slack_app.start_http(app, port, extra_routes=ops.routes())
            state["slack"] = f"http :{port}/slack/events"
        tasks.append(_watch(asyncio.create_task(
            post_outbox(cmds.db, "slack", slack_sender(app.client), outbox_every_s, stop)), "slack outbox", state))
    if runner is None:
        webapp = web.Application()
        webapp.add_routes(ops.routes())
        runner = web.AppRunner(webapp)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", port).start()
    if config.get("DISCORD_TOKEN"):
        from bot.chat.discord import app as discord_app

        client = discord_app.build_client(cmds)
        tasks.append(_watch(asyncio.create_task(discord_app.start(client, config.get("DISCORD_TOKEN"))), "discord", state))
        tasks.append(_watch(asyncio.create_task(post_outbox(
            cmds.db, "discord", discord_sender(client), outbox_every_s, stop,
            ready=lambda: client.user is not None and not client.is_closed())), "discord outbox", state))
        state["discord"] = "gateway"
    if state["slack"] == "off" and state["discord"] == "off":
        log.warning("no chat platform configured (set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET, or DISCORD_TOKEN); "
                    "serving /healthz, /readyz and /metrics on :%s only", port)
    else:
        log.info("serving: slack %s, discord %s; /healthz, /readyz and /metrics on :%s",
                 state["slack"], state["discord"], port, extra={"slack": state["slack"], "discord": state["discord"]})
    # Load the model now, off the loop, so the first question does not pay for it.
    asyncio.get_running_loop().run_in_executor(None, cmds.answerer.generator)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await runner.cleanup()


def main() -> int:
    from bot.ops import logs

    logs.setup()  # BOT_LOG_FORMAT: JSON lines for a log collector, or text

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main_async(stop)

    asyncio.run(run())
    return 0
