"""The serving process: `python -m bot serve` (Procfile `web`).

One process, one event loop, one copy of the model: Slack (HTTP on $PORT at
/slack/events, or Socket Mode when SLACK_APP_TOKEN is set) and Discord (when
DISCORD_TOKEN is set) share the loop, and both reach the model through the
single model worker. `/healthz` (liveness), `/readyz` (readiness) and
`/metrics` (Prometheus) answer on $PORT in every case, so the process
starts, and tells the operator what it serves, with nothing set.
Each running platform also posts the training jobs' outbox (bot.chat.outbox,
with its sender from bot.chat.slack.send / bot.chat.discord.send), which also
carries the answers a killed process left unfinished: `inflight.recover`
(at start, then every BOT_LEASE_TTL seconds) gives each placeholder whose
owner's heartbeat lease is gone, on any host, an apology with the
retrieval-only answer, and the sender puts it in place of the placeholder.
This process holds its own `inflight:` lease from before its first
placeholder, so other replicas leave its answers alone.

This module is the process only: it builds its parts through bot.wiring,
starts the transports, the posters and the health routes (bot.ops.health),
and stops on a signal.
"""
from __future__ import annotations

import asyncio
import logging
import signal

from bot import config, wiring
from bot.chat.outbox import OUTBOX_EVERY_S, post_outbox
from bot.ops.health import Health

log = logging.getLogger("bot.ops.serve")


def _watch(task: asyncio.Task, name: str, state: dict) -> asyncio.Task:
    """Log a platform that stops (a bad token, a lost connection) instead of failing silently."""
    def done(t: asyncio.Task):
        if not t.cancelled() and t.exception() is not None:
            state[name] = f"stopped: {type(t.exception()).__name__}: {t.exception()}"
            log.error("%s stopped: %r", name, t.exception())
    task.add_done_callback(done)
    return task


async def main_async(settings: config.Settings, stop: asyncio.Event | None = None, outbox_every_s: float = OUTBOX_EVERY_S) -> None:
    from aiohttp import web

    from bot.answering import inflight

    cmds = wiring.build_commands(settings)
    discord_lease = _discord_lease(settings, cmds.db)  # before anything starts: a second one refuses here
    stop = stop or asyncio.Event()
    # Held before any placeholder exists: replicas judge this process's placeholders by this lease alone.
    inflight_lease = _inflight_lease(settings, cmds.db)
    # Before any platform starts: what a dead process (any host) left "Thinking…" goes to the
    # outbox now, answered from retrieval (no model needed), and the posters put it in place.
    await asyncio.to_thread(inflight.recover, cmds.db, cmds.answerer.searcher)
    state = {"slack": "off", "discord": "off"}  # the platforms, as they start and stop
    ops = Health(cmds, state, settings.db, settings.adapters_dir)
    outbox = wiring.StoreOutbox(cmds.db)
    tasks = []
    port = settings.port
    slack_token, app_token = settings.slack_bot_token, settings.slack_app_token
    runner = None
    if slack_token:
        from bot.chat.slack import app as slack_app
        from bot.chat.slack.send import slack_sender

        app = slack_app.build_app(cmds, token=slack_token, signing_secret=settings.slack_signing_secret,
                                  api_url=settings.slack_api_url)
        if app_token:
            tasks.append(_watch(asyncio.create_task(slack_app.start_socket_mode(app, app_token)), "slack", state))
            state["slack"] = "socket mode"
        else:
            runner = await slack_app.start_http(app, port, extra_routes=ops.routes())
            state["slack"] = f"http :{port}/slack/events"
        tasks.append(_watch(asyncio.create_task(
            post_outbox(outbox, "slack", slack_sender(app.client), outbox_every_s, stop)), "slack outbox", state))
    if runner is None:
        webapp = web.Application()
        webapp.add_routes(ops.routes())
        runner = web.AppRunner(webapp)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", port).start()
    if settings.discord_token:
        from bot.chat.discord import app as discord_app
        from bot.chat.discord.send import discord_sender

        client = discord_app.build_client(cmds)
        tasks.append(_watch(asyncio.create_task(discord_app.start(client, settings.discord_token)), "discord", state))
        tasks.append(_watch(asyncio.create_task(post_outbox(
            outbox, "discord", discord_sender(client), outbox_every_s, stop,
            ready=lambda: client.user is not None and not client.is_closed())), "discord outbox", state))
        state["discord"] = "gateway"
    # A replica killed while this one runs: its lease expires, and its placeholders are finished from here.
    tasks.append(_watch(asyncio.create_task(_recover_every(cmds, settings.lease_ttl, stop)), "recovery", state))
    if state["slack"] == "off" and state["discord"] == "off":
        log.warning("no chat platform configured (set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET, or DISCORD_TOKEN); "
                    "serving /healthz, /readyz and /metrics on :%s only", port)
    else:
        log.info("serving: slack %s, discord %s; /healthz, /readyz and /metrics on :%s",
                 state["slack"], state["discord"], port, extra={"slack": state["slack"], "discord": state["discord"]})
    # Load the model now, off the loop, so the first question does not pay for it.
    asyncio.get_running_loop().run_in_executor(None, cmds.answerer.generator)
    asyncio.get_running_loop().run_in_executor(None, cmds.answerer.warm)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await runner.cleanup()
    if discord_lease is not None:
        discord_lease.release()
    inflight_lease.release()  # what is still "Thinking…" here is for a live replica (or the next start) to finish


def _inflight_lease(settings: config.Settings, db):
    """The `inflight:<owner>` lease: while it is renewed, no replica touches this process's placeholders."""
    from bot.answering import inflight
    from bot.learning import leases

    lease = leases.Lease(db, inflight.lease_name(), settings.lease_ttl, owner=inflight.OWNER)
    if not lease.acquire():  # the owner id is unique to this process: only a broken database refuses it
        raise RuntimeError(f"cannot take the lease {inflight.lease_name()}")
    return lease


async def _recover_every(cmds, every_s: float, stop: asyncio.Event) -> None:
    """`inflight.recover` every `every_s` seconds until `stop`: the leases of replicas that died since expire."""
    from bot.answering import inflight

    while True:
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return
        except asyncio.TimeoutError:
            pass
        try:
            await asyncio.to_thread(inflight.recover, cmds.db, cmds.answerer.searcher)
        except Exception:  # noqa: BLE001 (a locked database): the next round retries
            log.exception("recovering placeholders of stopped replicas failed")


def _discord_lease(settings: config.Settings, db):
    """The `discord` lease, held while this process runs Discord (None: DISCORD_TOKEN unset).

    Discord's gateway delivers each event to every connected client of the bot, so two replicas would
    answer every question twice: exactly one `serve` may run it, and a second refuses to start (a
    SettingError: one line naming the holder, exit status 1). Slack over HTTP runs in any number."""
    if not settings.discord_token:
        return None
    from bot.learning import leases

    lease = leases.Lease(db, "discord", settings.lease_ttl)
    if not lease.acquire():
        raise config.SettingError(
            f"Discord is already served by {leases.describe(db, 'discord')}: Discord runs in exactly one `serve` "
            f"replica (a lease in the database, free {settings.lease_ttl:g} s after its holder stops); "
            "unset DISCORD_TOKEN for this one, which may still serve Slack over HTTP")
    return lease


def main(settings: config.Settings) -> int:
    """`serve`, with the settings the CLI loaded."""
    from bot.ops import logs

    logs.setup(settings.log_format)  # BOT_LOG_FORMAT: JSON lines for a log collector, or text

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main_async(settings, stop)

    asyncio.run(run())
    return 0
