"""A stand-in for Discord's servers on loopback: the REST API and a minimal gateway, recording every request.

discord.py talks to it unchanged once `discord.http.Route.BASE` (REST and
interaction webhooks) and `DiscordWebSocket.DEFAULT_GATEWAY` point here. It
answers the calls the bot makes with payloads shaped like Discord's, and
`Content-Type: application/json` exactly: with a charset, discord.py reads
the body as text. Tests read `requests` and wait on them with `wait_for`.
Files people attach (`attachment`) are served from `/attachments/...`, as
Discord's CDN serves them, to whoever has the URL.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from aiohttp import WSMsgType, web

FIXTURES = Path(__file__).parent / "fixtures" / "discord"
CHANNEL_OF_ATTACHMENTS = "1300000000000000200"
APP_ID = "1300000000000000001"
BOT_USER = {"id": APP_ID, "username": "kb-assistant", "discriminator": "0", "global_name": None, "avatar": None,
            "bot": True, "verified": True, "mfa_enabled": False, "flags": 0}


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@dataclass
class Request:
    method: str
    path: str  # after /api/v10
    query: dict
    json: dict | list | None
    files: dict = field(default_factory=dict)  # attachments of a multipart request: filename -> bytes

    def __repr__(self) -> str:
        return f"<{self.method} {self.path} {str(self.json)[:80]}>"


@dataclass
class Recorder:
    requests: list[Request] = field(default_factory=list)
    identify: dict | None = None  # the gateway IDENTIFY payload, once a client has connected
    unhandled: list[Request] = field(default_factory=list)  # requests Discord would not have understood
    expired: set = field(default_factory=set)  # interaction tokens past their 15 minutes: 404 Unknown Webhook
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1340000000000000001))
    cdn: dict = field(default_factory=dict)  # attachment id -> its bytes (`attachment`)

    async def start(self) -> str:
        """Serve on a free loopback port; returns the base URL (http://127.0.0.1:PORT)."""
        self._changed = asyncio.Condition()
        self._sockets: list[web.WebSocketResponse] = []
        self._seq = itertools.count(1)
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        app.router.add_get("/attachments/{tail:.*}", self._cdn)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        return self.base

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        await self._runner.cleanup()

    # -- what tests look at ---------------------------------------------------

    def find(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]

    def callbacks(self, interaction_id) -> list[Request]:
        return self.find("POST", rf"/interactions/{interaction_id}/[^/]+/callback")

    def followups(self, token: str) -> list[Request]:
        return self.find("POST", rf"/webhooks/{APP_ID}/{re.escape(token)}")

    async def wait_for(self, predicate, timeout: float = 10.0):
        """Wait until `predicate()` is truthy (re-checked on every request); returns its value."""
        async def check():
            async with self._changed:
                while not (value := predicate()):
                    await self._changed.wait()
                return value

        return await asyncio.wait_for(check(), timeout)

    async def _record(self, request: Request) -> None:
        self.requests.append(request)
        async with self._changed:
            self._changed.notify_all()

    # -- files people attach --------------------------------------------------

    def attachment(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> dict:
        """An attachment as an interaction's `resolved.attachments` carries it, its bytes on the CDN here."""
        attachment_id = str(next(self._ids))
        path = f"/attachments/{CHANNEL_OF_ATTACHMENTS}/{attachment_id}/{quote(name, safe='')}"
        self.cdn[attachment_id] = data
        return {"id": attachment_id, "filename": name, "size": len(data), "content_type": content_type,
                "url": self.base + path, "proxy_url": self.base + path, "ephemeral": True}

    async def _cdn(self, request: web.Request) -> web.Response:
        await self._record(Request("GET", request.path, dict(request.query), None))
        parts = request.match_info["tail"].split("/")  # CHANNEL/ID/NAME: found by its id, as the CDN does
        data = self.cdn.get(parts[1]) if len(parts) > 2 else None
        if data is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=data, content_type="application/octet-stream")

    # -- REST -----------------------------------------------------------------

    @staticmethod
    def _json(payload, status: int = 200) -> web.Response:
        return web.Response(status=status, body=json.dumps(payload).encode(),
                            headers={"Content-Type": "application/json"})

    def message(self, channel_id: str, body: dict) -> dict:
        """The message Discord would create from a send payload."""
        message = {
            "id": str(next(self._ids)), "channel_id": channel_id, "type": 0, "author": BOT_USER,
            "content": body.get("content") or "", "components": body.get("components") or [],
            "flags": body.get("flags") or 0, "attachments": [], "embeds": [], "mentions": [], "mention_roles": [],
            "mention_everyone": False, "pinned": False, "tts": False, "edited_timestamp": None,
            "timestamp": "2025-05-01T10:00:00.000000+00:00",
        }
        if body.get("message_reference"):
            message |= {"type": 19, "message_reference": body["message_reference"]}
        return message

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        files = {}
        if request.content_type.startswith("multipart/"):  # a message with attachments: payload_json + files[n]
            body = None
            async for part in await request.multipart():
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                else:
                    files[part.filename] = await part.read()
        else:
            raw = await request.read()
            body = json.loads(raw) if raw and request.content_type == "application/json" else None
        recorded = Request(request.method, path, dict(request.query), body, files)
        await self._record(recorded)
        method, body = request.method, body or {}
        if (method, path) == ("GET", "/users/@me"):
            return self._json(BOT_USER)
        if (method, path) == ("GET", "/oauth2/applications/@me"):
            return self._json({"id": APP_ID, "name": "kb-assistant", "icon": None, "description": "",
                               "bot_public": False, "bot_require_code_grant": False, "owner": BOT_USER | {"bot": False},
                               "team": None, "verify_key": "0" * 64, "flags": 8953856, "rpc_origins": [],
                               "interactions_endpoint_url": None})
        if m := re.fullmatch(r"/interactions/(\d+)/[^/]+/callback", path):
            kind, flags = body.get("type"), (body.get("data") or {}).get("flags") or 0
            return self._json({"interaction": {"id": m[1], "type": 2, "response_message_loading": kind == 5,
                                               "response_message_ephemeral": bool(flags & 64)},
                               "resource": {"type": kind}})
        if re.fullmatch(rf"/webhooks/{APP_ID}/[^/]+", path) and method == "POST":
            if request.query.get("wait") in ("1", "true"):  # application webhooks always wait
                return self._json(self.message("0", body))
            return web.Response(status=204)
        if (m := re.fullmatch(rf"/webhooks/{APP_ID}/([^/]+)/.*", path)) and m[1] in self.expired:
            return self._json({"message": "Unknown Webhook", "code": 10015}, status=404)
        if re.fullmatch(rf"/webhooks/{APP_ID}/[^/]+/messages/@original", path):
            return web.Response(status=204) if method == "DELETE" else self._json(self.message("0", body))
        if m := re.fullmatch(r"/channels/(\d+)/messages", path):
            return self._json(self.message(m[1], body))
        if re.fullmatch(r"/channels/\d+/typing", path):
            return web.Response(status=204)
        if re.fullmatch(rf"/applications/{APP_ID}(/guilds/\d+)?/commands", path) and method == "PUT":
            return self._json([c | {"id": str(next(self._ids)), "application_id": APP_ID, "version": "1",
                                    "default_member_permissions": None, "type": c.get("type", 1)} for c in body])
        self.unhandled.append(recorded)
        return self._json({"message": "Unknown route (recorder)", "code": 0}, status=404)

    # -- gateway --------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        """HELLO, then READY on IDENTIFY, and a heartbeat ACK for each heartbeat."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 45000}}))
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if frame["op"] == 2:
                self.identify = frame["d"]
                await self.dispatch("READY", fixture("ready.json"))
                async with self._changed:
                    self._changed.notify_all()
            elif frame["op"] == 1:
                await ws.send_str(json.dumps({"op": 11}))
        self._sockets.remove(ws)
        return ws

    async def dispatch(self, event: str, data: dict) -> None:
        """Send a gateway event (INTERACTION_CREATE, MESSAGE_CREATE...) to every connected client."""
        frame = json.dumps({"op": 0, "t": event, "s": next(self._seq), "d": data})
        for ws in self._sockets:
            await ws.send_str(frame)
