"""Slack front end: `build_app(commands, token=..., signing_secret=...)`, served by `start_http` or `start_socket_mode`.

One bolt `AsyncApp`, on the event loop the Discord client shares; its
listeners (bot/chat/slack/listeners.py) are registered with bolt's own
decorators and call the platform-neutral command layer. Construction makes
no network call, so it works offline and in tests; the Web API base URL is
a parameter, so tests point it at a local recorder. Over HTTP, signatures
are checked on the raw bytes before anything is parsed (bot/chat/slack/http.py:
a bad, stale or missing one gets 401), then bolt checks them again.
"""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.logger import messages
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.chat.slack import http as slack_http
from bot.commands import Commands
from bot.chat.slack.listeners import Listeners

log = logging.getLogger(__name__)
EVENTS_PATH = "/slack/events"


def _authorizer(client: AsyncWebClient):
    """Bolt's `authorize`: the bot token for every request, without waiting on Slack.

    Bolt's default single-workspace authorization calls auth.test before the
    first request is handled, so the first acks would wait on Slack (or fail
    while it is unreachable). The bot's own ids, which bolt uses to ignore the
    bot's own events, are fetched once in the background instead; until they
    arrive, the listeners' own bot-message checks cover the gap.
    """
    who: dict = {}
    pending: list = []

    async def whoami():
        try:
            who.update((await client.auth_test()).data)
        except Exception as e:  # retried on a later request
            log.warning("auth.test failed: %s", e)
        finally:
            pending.clear()

    async def authorize(enterprise_id, team_id) -> AuthorizeResult:
        if not who and not pending:
            pending.append(asyncio.ensure_future(whoami()))
        return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id, bot_token=client.token,
                               bot_user_id=who.get("user_id"), bot_id=who.get("bot_id"))
    return authorize


class _TokenIsUsed(logging.Filter):
    """Drops bolt's "`token` will be unused" warnings, which it gives whenever SLACK_BOT_TOKEN is in
    the environment alongside a client or `authorize`: here the token is used, through `authorize`."""

    MISLEADING = {messages.warning_client_prioritized_and_token_skipped(), messages.warning_token_skipped()}

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.MISLEADING


class KbApp(AsyncApp):
    """bolt's app, with what `start_http` needs of ours declared beside it (bolt has no hook of its own
    for either): the listeners, stopped at shutdown, and the signing secret, checked before bolt parses."""

    kb_listeners: Listeners | None = None
    kb_signing_secret: str = ""


def build_app(commands: Commands, *, token: str, signing_secret: str, api_url: str = "https://slack.com/api/",
              update_every_s: float = 1.0, workers: int = 32) -> KbApp:
    """The Slack app for `commands`. Makes no network call: construction works offline."""
    # slack_sdk logs every request and response body at DEBUG: message text, which never goes
    # to our logs. Its loggers (the Web API client and response URLs) stop at INFO whatever the root level.
    sdk_log = logging.getLogger("slack_sdk")
    sdk_log.setLevel(max(logging.INFO, sdk_log.level))
    client = AsyncWebClient(base_url=api_url.rstrip("/") + "/",
                            retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)])
    bolt_log, quiet = logging.getLogger("slack_bolt.AsyncApp"), _TokenIsUsed()
    bolt_log.addFilter(quiet)
    try:
        app = KbApp(name="kb-bot", client=client, signing_secret=signing_secret, authorize=_authorizer(client))
    finally:
        bolt_log.removeFilter(quiet)
    # On the client only after construction: given to AsyncApp, bolt would drop it in favour of `authorize`.
    # Requests get it through `authorize`; calls made outside a request (an outbox) through `app.client`.
    client.token = token
    slack = Listeners(commands, update_every_s, workers)
    slack.register(app)
    app.kb_listeners, app.kb_signing_secret = slack, signing_secret
    return app


def _share_session(app: KbApp):
    """One HTTP connection pool for every Web API call; returns what stops it (and the app's threads).

    Without a session, slack_sdk opens a new one (and a new connection) for
    each call: under load, streaming updates then cost the loop far more
    than the acks do. Bolt's per-request clients reuse the app client's
    session, so setting it here, on the running loop, covers them all."""
    import aiohttp

    session = None
    if app.client.session is None or app.client.session.closed:
        session = app.client.session = aiohttp.ClientSession()

    async def close():
        if app.kb_listeners is not None:
            app.kb_listeners.shutdown()
        if session is not None:
            await session.close()
    return close


_SHAPES = {"event": dict, "view": dict, "user": (dict, str), "actions": list, "channel": (dict, str),
           "container": dict, "team": (dict, str, type(None)), "type": str, "state": dict,
           # What bolt's listener matchers compare (with regular expressions: a list there is a TypeError).
           "command": str, "callback_id": str, "action_id": str, "trigger_id": str}
_TEXT = (str, type(None))
_INNER = {"event": {"type": str, "subtype": _TEXT, "callback_id": _TEXT, "function": (dict, type(None))},
          "view": {"state": dict, "callback_id": _TEXT, "type": str, "private_metadata": _TEXT}}


def _fits(body: dict, shapes: dict) -> bool:
    return all(key not in body or isinstance(body[key], kind) for key, kind in shapes.items())


def well_formed(body) -> bool:
    """Whether a parsed body has the shape bolt indexes into (a dict, with dicts and lists where
    Slack puts them, and text where bolt matches listeners against it). Bolt assumes it, and answers
    500 with a traceback for a payload that breaks it; such a payload is not from Slack and gets a
    400 before bolt dispatches it."""
    if not isinstance(body, dict) or not _fits(body, _SHAPES):
        return False
    for key, inner in _INNER.items():
        # Slack's events and views always say their type; bolt reads body["event"]["type"] unguarded.
        if key in body and not (_fits(body[key], inner) and isinstance(body[key].get("type"), str)):
            return False
    if "actions" in body and not body["actions"]:  # bolt takes body["actions"][0]
        return False
    return all(isinstance(a, dict) and _fits(a, {"action_id": _TEXT, "block_id": _TEXT})
               for a in body.get("actions") or [])


async def start_http(app: KbApp, port: int, extra_routes=(), host: str = "0.0.0.0") -> web.AppRunner:
    """Serve the app at /slack/events (plus `extra_routes`) on host:port; returns the runner to clean up.

    With port 0 the system picks a free port: `runner.addresses[0][1]`."""
    secret = app.kb_signing_secret

    async def events(request: web.Request) -> web.Response:
        # Nothing of the body is decoded or parsed before its signature is checked (bot/chat/slack/http.py).
        raw = await slack_http.read_signed(request, secret)
        if isinstance(raw, web.Response):
            return raw
        bolt_request = slack_http.parse(raw, request, well_formed)
        if isinstance(bolt_request, web.Response):
            return bolt_request
        return await to_aiohttp_response(await app.async_dispatch(bolt_request))

    webapp = web.Application()
    webapp.add_routes([web.post(EVENTS_PATH, events), *extra_routes])
    close = _share_session(app)

    async def cleanup(_):
        await close()
    webapp.on_cleanup.append(cleanup)
    # The body as it came off the wire: Slack signs those bytes. (aiohttp would otherwise decompress
    # first, and refuse an encoding it has no decoder for with a 400 before the signature is checked.)
    runner = web.AppRunner(webapp, auto_decompress=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def socket_mode_handler(app: KbApp, app_token: str):
    """The Socket Mode handler for `app`, not yet connected (tests drive its `handle` offline)."""
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    return AsyncSocketModeHandler(app, app_token)


async def start_socket_mode(app: KbApp, app_token: str) -> None:
    """Connect over Socket Mode (an `xapp-` token) and serve until cancelled: run it as a task."""
    handler = socket_mode_handler(app, app_token)
    close = _share_session(app)
    try:
        await handler.connect_async()
        await asyncio.Event().wait()
    finally:
        await handler.close_async()
        await close()
