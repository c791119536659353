"""The serving process: `python -m bot serve` (Procfile `web`).

One process, one event loop, one copy of the model: Slack (HTTP on $PORT at
/slack/events, or Socket Mode when SLACK_APP_TOKEN is set) and Discord (when
DISCORD_TOKEN is set) share the loop, and both reach the model through the
single model worker. `/healthz` answers on $PORT in every case, so the
process starts, and tells the operator what it serves, with nothing set.
"""
from __future__ import annotations

import asyncio
import logging
import signal

from . import config

log = logging.getLogger("bot.serve")


def build_commands(db=None, answerer=None):
    """The command layer wired to the database, the answerer and the settings."""
    from . import cli, commands, ingest

    db = db or cli._db()
    answerer = answerer or cli._answerer(db)
    kdir = config.get("BOT_KNOWLEDGE_DIR")

    def reindex() -> str:
        reports = ingest.index_paths(db, [kdir], kdir, config.get("BOT_CHUNK_CHARS"), progress=False)
        answerer.searcher.__init__(db, answerer.searcher.embedder_name)  # serve the new index at once
        counts = {s: sum(r.status == s for r in reports) for s in ("indexed", "removed", "skipped", "error")}
        bad = [f"{r.doc}: {r.message}" for r in reports if r.status in ("skipped", "error")]
        text = "Re-indexed: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) if any(counts.values()) \
            else "Re-indexed: nothing changed."
        return text + ("\n" + "\n".join(bad) if bad else "")

    return commands.Commands(
        db, answerer, reindex=reindex, adapters_dir=config.get("BOT_ADAPTERS_DIR"),
        admins={"slack": config.get("BOT_SLACK_ADMINS"), "discord": config.get("BOT_DISCORD_ADMINS")})


def _watch(task: asyncio.Task, name: str, state: dict) -> asyncio.Task:
    """Log a platform that stops (a bad token, a lost connection) instead of failing silently."""
    def done(t: asyncio.Task):
        if not t.cancelled() and t.exception() is not None:
            state[name] = f"stopped: {type(t.exception()).__name__}: {t.exception()}"
            log.error("%s stopped: %r", name, t.exception())
    task.add_done_callback(done)
    return task


def health_route(state: dict):
    """GET /healthz: liveness, and what this process serves (the state dict is filled in as platforms start)."""
    from aiohttp import web

    async def health(request):
        answerer = state["commands"].answerer
        model = "loaded" if answerer.generator_loaded else (answerer.unavailable_reason or "loading")
        return web.json_response({"ok": True, "slack": state["slack"], "discord": state["discord"], "model": model})

    return web.get("/healthz", health)


async def main_async(stop: asyncio.Event | None = None) -> None:
    from aiohttp import web

    cmds = build_commands()
    state = {"commands": cmds, "slack": "off", "discord": "off"}
    tasks = []
    port = config.get("PORT")
    slack_token, app_token = config.get("SLACK_BOT_TOKEN"), config.get("SLACK_APP_TOKEN")
    health = health_route(state)
    runner = None
    if slack_token:
        from . import slack_app

        app = slack_app.build_app(cmds, token=slack_token, signing_secret=config.get("SLACK_SIGNING_SECRET"),
                                  api_url=config.get("SLACK_API_URL"))
        if app_token:
            tasks.append(_watch(asyncio.create_task(slack_app.start_socket_mode(app, app_token)), "slack", state))
            state["slack"] = "socket mode"
        else:
            runner = await slack_app.start_http(app, port, extra_routes=[health])
            state["slack"] = f"http :{port}/slack/events"
    if runner is None:
        webapp = web.Application()
        webapp.add_routes([health])
        runner = web.AppRunner(webapp)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", port).start()
    if config.get("DISCORD_TOKEN"):
        from . import discord_app

        client = discord_app.build_client(cmds)
        tasks.append(_watch(asyncio.create_task(discord_app.start(client, config.get("DISCORD_TOKEN"))), "discord", state))
        state["discord"] = "gateway"
    if state["slack"] == "off" and state["discord"] == "off":
        log.warning("no chat platform configured (set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET, or DISCORD_TOKEN); "
                    "serving /healthz on :%s only", port)
    else:
        log.info("serving: slack %s, discord %s; health on :%s/healthz", state["slack"], state["discord"], port)
    # Load the model now, off the loop, so the first question does not pay for it.
    asyncio.get_running_loop().run_in_executor(None, cmds.answerer.generator)
    stop = stop or asyncio.Event()
    await stop.wait()
    for t in tasks:
        t.cancel()
    await runner.cleanup()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main_async(stop)

    asyncio.run(run())
    return 0
