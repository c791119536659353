"""The chat front ends on loopback, for the security tests (tests/test_guard.py, tests/reliability/).

Built as tests/test_slack.py and tests/test_discord.py build them: real bolt
serving signed HTTP, real discord.py against tests/discord_recorder.py, the
real command layer, answering pipeline, retrieval and SQLite. The fakes are
Slack's and Discord's servers, and a scripted model where the test is not
about the model. Payloads are sent as JSON with ASCII escapes, so a test can
carry a lone surrogate (`"\\ud800"`) the way a hostile client would.
"""
from __future__ import annotations

import asyncio
import copy
import itertools
import json
import sqlite3
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlencode

import aiohttp

from bot.answering import pipeline as answering
from bot import commands, config, guard, store
from bot.knowledge import retrieval
from bot.chat.slack import app as slack_app
from slack_recorder import Recorder, command_body, post_signed

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SECRET, TOKEN, SLACK_ADMIN = "8f742231b10e8888abcd99yyyzzz85a5", "xoxb-test-token", "U0ADMIN"


def slack_fixture(name: str) -> dict:
    return json.loads((FIXTURES / "slack" / f"{name}.json").read_text(encoding="utf-8"))


def unlimited() -> guard.Admission:
    """No rate limit and no queue bound: for tests that are not about them."""
    return guard.Admission(None, None, None)


def copy_db(source, path: Path):
    """A private, writable copy of an indexed database (SQLite's backup: milliseconds)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    dst = sqlite3.connect(path)
    source.conn.backup(dst)
    dst.close()
    return store.connect(path)


def make_commands(db, gen, *, admission: guard.Admission | None = None, adapters_dir: Path | None = None,
                  searcher=None, reindex=None) -> commands.Commands:
    answerer = answering.Answerer(db, searcher or retrieval.Searcher(db), None if gen is None else lambda: gen)
    return commands.Commands(
        db, answerer, admins={"slack": [SLACK_ADMIN], "discord": [DISCORD_ADMIN_USER, DISCORD_ADMIN_ROLE]},
        adapters_dir=adapters_dir, reindex=reindex or (lambda: "Re-indexed: nothing changed."), enqueue=False,
        guard=admission if admission is not None else unlimited(), settings=config.Settings.load())


def counts(db) -> dict:
    """Rows that people's feedback lives in, and what privileged actions leave behind."""
    tables = ("answers", "votes", "corrections", "jobs", "promotions", "opt_outs")
    return {t: db.execute(f"select count(*) from {t}").fetchone()[0] for t in tables}


# -- Slack --------------------------------------------------------------------------

def ascii_form(fields: dict) -> str:
    return urlencode(fields)


class Slack(SimpleNamespace):
    """The served Slack app (`url`), the recorder standing in for Slack (`recorder`), the command layer."""

    async def post(self, body: str, *, json_body: bool = False):
        return await post_signed(self.session, self.url, SECRET, body, json_body=json_body)

    def command_fields(self, name: str, text: str | None, user: str = "U0ALICE", **extra) -> dict:
        fields = {**slack_fixture("command_ask"), "command": name, "user_id": user, "trigger_id": uuid.uuid4().hex,
                  "response_url": self.recorder.response_url(f"{name[1:]}.{user}")}
        if text is None:
            fields.pop("text")
        else:
            fields["text"] = text
        return {**fields, **extra}

    async def command(self, name: str, text: str | None, user: str = "U0ALICE", **extra):
        return await self.post(command_body(self.command_fields(name, text, user, **extra)))

    async def event(self, envelope: dict):
        return await self.post(json.dumps(envelope), json_body=True)  # ASCII escapes: surrogates travel

    async def interaction(self, payload: dict):
        return await self.post(urlencode({"payload": json.dumps(payload)}))

    def answers(self) -> list[dict]:
        return list(self.db.query("select * from answers order by created_at"))

    def finals(self) -> list[dict]:
        return [u for u in self.recorder.of("chat.update") if u.get("blocks")]

    async def wait_finals(self, n: int, timeout: float = 15):
        await self.recorder.wait_for(lambda r: len(self.finals()) >= n, timeout)
        return self.finals()

    async def said_to(self, name: str, n: int = 1, timeout: float = 10) -> list[dict]:
        """What was posted to one response URL ("ask.U0ALICE"), once there are `n` messages."""
        url = f"/response/{name}"
        await self.recorder.wait_for(lambda r: sum(c.path == url for c in r.calls) >= n, timeout)
        return [c.data for c in self.recorder.calls if c.path == url]


@asynccontextmanager
async def slack_served(cmds: commands.Commands, update_every_s: float = 0.2):
    recorder = await Recorder().start()
    app = slack_app.build_app(cmds, token=TOKEN, signing_secret=SECRET, api_url=recorder.api_url,
                              update_every_s=update_every_s)
    runner = await slack_app.start_http(app, 0, host="127.0.0.1")
    session = aiohttp.ClientSession()
    url = "http://127.0.0.1:%d%s" % (runner.addresses[0][1], slack_app.EVENTS_PATH)
    try:
        yield Slack(recorder=recorder, cmds=cmds, db=cmds.db, app=app, session=session, url=url)
    finally:
        await session.close()
        await runner.cleanup()
        await recorder.close()


# -- Discord --------------------------------------------------------------------------

DISCORD_TOKEN = "MTMwMDAwMDAwMDAwMDAwMDAwMQ.test.token"
DISCORD_USER, DISCORD_ADMIN_USER = "1300000000000000400", "1300000000000000401"
DISCORD_ADMIN_ROLE = "1300000000000000500"
DISCORD_CHANNEL = "1300000000000000200"
_ids = itertools.count(1320000000000001000)


def discord_fixture(name: str) -> dict:
    return json.loads((FIXTURES / "discord" / name).read_text(encoding="utf-8"))


@asynccontextmanager
async def discord_served(cmds: commands.Commands, monkeypatch):
    """discord.py, logged in over REST against the recorder, with `cmds` behind it: (recorder, client)."""
    import discord
    import yarl
    from discord.gateway import DiscordWebSocket

    from bot.chat.discord import app as discord_app
    from discord_recorder import Recorder as DiscordRecorder

    rec = DiscordRecorder()
    base = await rec.start()
    monkeypatch.setattr(discord.http.Route, "BASE", base + "/api/v10")
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(base.replace("http", "ws", 1) + "/gateway"))
    client = discord_app.build_client(cmds)
    await client.login(DISCORD_TOKEN)
    try:
        yield rec, client
    finally:
        await client.close()
        await rec.stop()
    assert not rec.unhandled, rec.unhandled


def _payload(name: str) -> dict:
    payload = discord_fixture(name)
    payload["id"] = str(next(_ids))
    payload["token"] = f"token-{payload['id']}"
    return payload


def slash(name: str, options=(), *, user=DISCORD_USER, roles=()) -> dict:
    payload = _payload("interaction_command.json")
    payload["data"].update(name=name, options=list(options))
    payload["member"]["user"]["id"], payload["member"]["roles"] = user, list(roles)
    return payload


def opt(name: str, value, kind: int = 3) -> dict:
    return {"name": name, "type": kind, "value": value}


def click(custom_id: str) -> dict:
    payload = _payload("interaction_component.json")
    payload["data"]["custom_id"] = custom_id
    payload["message"]["components"] = [{"type": 1, "components": [
        {"type": 2, "style": 2, "custom_id": custom_id, "emoji": {"name": "👍"}}]}]
    return payload


def submit(custom_id: str, value: str | None, field: str = "correction") -> dict:
    payload = _payload("interaction_modal_submit.json")
    components = [] if value is None else [
        {"type": 18, "id": 1, "component": {"type": 4, "id": 2, "custom_id": field, "value": value}}]
    payload["data"] = {"custom_id": custom_id, "components": components}
    return payload


def mention(text: str) -> dict:
    from discord_recorder import APP_ID

    payload = discord_fixture("message_create_mention.json")
    payload["id"] = str(next(_ids))
    payload["content"] = f"<@{APP_ID}> {text}"
    return payload


def deliver(client, payload: dict, event: str = "INTERACTION_CREATE") -> None:
    """Hand a gateway event to the client exactly as its websocket reader does."""
    client._connection.parsers[event](copy.deepcopy(payload))


async def answered(rec, payload: dict, n: int = 1, timeout: float = 10):
    """The interaction's callbacks and follow-ups once it has `n` of them in all."""
    await rec.wait_for(lambda: len(rec.callbacks(payload["id"])) + len(rec.followups(payload["token"])) >= n,
                       timeout)
    return rec.callbacks(payload["id"]), rec.followups(payload["token"])


def said(request) -> str:
    """The text a recorded Discord request carries (a callback's data, a follow-up, a message)."""
    body = request.json or {}
    return ((body.get("data") or {}) if "type" in body else body).get("content") or ""


def ephemeral(request) -> bool:
    body = request.json.get("data", request.json) if "type" in request.json else request.json
    return bool((body.get("flags") or 0) & 64)


async def settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)
