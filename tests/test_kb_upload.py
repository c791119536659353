"""Documents added, listed and removed from chat: /kb add, /kb list, /kb remove.

Real: the command layer, the indexer, SQLite, the searcher, files under a
temporary BOT_UPLOADS_DIR, bolt serving signed requests, discord.py. Fake:
Slack's and Discord's servers (tests/slack_recorder.py, which also serves
channel history and file downloads; tests/discord_recorder.py, whose CDN
serves attachments).
"""
from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest
import pytest_asyncio

from bot import commands, config, store
from bot.answering import pipeline as answering
from bot.chat.slack import app as slack_app, render as slack_render
from bot.commands import Caller, upload_name
from bot.knowledge import ingest, retrieval
from fakes import ScriptedGenerator
from slack_recorder import Recorder, command_body, event_body, post_signed

SECRET, TOKEN, ADMIN = "8f742231b10e8888abcd99yyyzzz85a5", "xoxb-test-token", "U0ADMIN"
# Facts stated only here, in Chinese and English: a search finds them in this document or nowhere.
WARRANTY = ("# 星尘咖啡机保修政策\n\n星尘咖啡机的保修期为三十七个月，保修卡编号以 XK-9 开头。\n\n"
            "## Stardust warranty\n\nThe Stardust coffee machine warranty lasts thirty-seven months; "
            "warranty cards start with XK-9.\n").encode()
NOT_UTF8 = "# 报告\n\n损坏的文本".encode("gbk")  # a .md file in another encoding: it fails to convert


def settings(tmp_path, **changes) -> config.Settings:
    return config.Settings.load().replace(uploads_dir=tmp_path / "uploads", **changes)


def make_commands(db, tmp_path, admins: dict, **changes) -> commands.Commands:
    answerer = answering.Answerer(db, retrieval.Searcher(db), lambda: ScriptedGenerator("x"))
    return commands.Commands(db, answerer, admins=admins, adapters_dir=tmp_path / "adapters", enqueue=False,
                             settings=settings(tmp_path, **changes))


def docs_of(db, query: str) -> list[str]:
    return [h.doc for h in retrieval.Searcher(db).search(query, 3)]


# -- the command layer -------------------------------------------------------------------------

@pytest.mark.parametrize("given, kept", [
    ("../../etc/passwd.md", "passwd.md"), ("..\\..\\boot.ini.txt", "boot.ini.txt"), ("a\x00b.md", "ab.md"),
    ("季度报告 2024.MD", "季度报告 2024.md"), (".hidden.md", "hidden.md"), ("con.txt", "con_.txt"),
    ("a:b*?|.md", "a_b___.md"), ("  line\nbreak .md", "line break.md"), ("..", None), ("/", None), ("", None),
])
def test_a_file_name_from_chat_is_made_safe_and_stays_readable(given, kept):
    assert upload_name(given) == kept


def test_a_very_long_name_is_cut_within_the_file_system_limit_keeping_its_suffix():
    name = upload_name("报" * 300 + ".md")
    assert name.endswith(".md") and len(name.encode()) <= 104 and set(name[:-3]) == {"报"}


def test_add_replace_keeps_the_old_version_when_the_new_one_fails_and_a_reindex_keeps_uploads(kb_db, tmp_path,
                                                                                              indexed_kb):
    cmds = make_commands(kb_db, tmp_path, {"slack": [ADMIN]})
    admin = Caller("slack", ADMIN, "C1")
    generation = store.index_generation(kb_db)
    first = cmds.kb_add(admin, "warranty.md", WARRANTY)
    assert first.ok and first.document["doc"] == "uploads/warranty.md" and first.document["passages"] >= 2
    assert store.index_generation(kb_db) > generation  # other replicas reload
    assert (tmp_path / "uploads" / "warranty.md").read_bytes() == WARRANTY

    # A replacement that fails to convert: said by name, and the version that worked is still served.
    broken = cmds.kb_add(admin, "warranty.md", NOT_UTF8)
    assert not broken.ok and broken.text.startswith("Could not add warranty.md: not UTF-8")
    assert "Nothing was added" in broken.text
    assert (tmp_path / "uploads" / "warranty.md").read_bytes() == WARRANTY
    assert docs_of(kb_db, "星尘咖啡机保修期")[0] == "uploads/warranty.md"

    # The same name again with new text: replaced, and said so.
    again = cmds.kb_add(admin, "warranty.md", WARRANTY.replace("三十七".encode(), "四十一".encode()))
    assert again.ok and "replaced (re-indexed)" in again.text and again.document["replaced"]
    assert any("四十一" in r["text"] for r in store.document_passages(kb_db, "uploads/warranty.md", 5))

    # `index` of the knowledge folder neither re-reads nor removes what was added from chat.
    reports = ingest.index_paths(kb_db, [indexed_kb.kb_dir], indexed_kb.kb_dir, progress=False)
    assert "uploads/warranty.md" not in {r.doc for r in reports}
    assert store.document(kb_db, "uploads/warranty.md") is not None

    # A document of the knowledge folder is not removed from chat (the next re-index would bring it back).
    folder_doc = store.documents(kb_db)[0]["doc"]
    kept = cmds.kb_remove(admin, folder_doc)
    assert not kept.ok and "knowledge folder" in kept.text and store.document(kb_db, folder_doc)
    actions = [(r["action"], r["target"], r["result"].split(":")[0]) for r in store.audit_log(kb_db)][::-1]
    assert actions == [("kb add", "uploads/warranty.md", "ok"), ("kb add", "uploads/warranty.md", "error"),
                       ("kb add", "uploads/warranty.md", "ok"), ("kb remove", "uploads/" + upload_name(folder_doc),
                                                                  "error")]


def test_a_file_over_the_limit_or_of_an_unknown_type_is_refused_by_name(kb_db, tmp_path):
    cmds = make_commands(kb_db, tmp_path, {"slack": [ADMIN]}, max_file_mb=0.001)  # 1048 bytes
    admin = Caller("slack", ADMIN, "C1")
    big = cmds.kb_add_refusal(admin, "big.md", 5000)
    assert "big.md" in big.text and "over the 0.0 MB limit" not in big.text and "BOT_MAX_FILE_MB" in big.text
    assert not cmds.kb_add(admin, "big.md", b"# x\n\n" + b"y" * 5000).ok
    odd = cmds.kb_add_refusal(admin, "tool.exe", 10)
    assert "Could not add tool.exe: unsupported type" in odd.text and ".md" in odd.text
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").iterdir())
    assert [r["result"].split(":")[0] for r in store.audit_log(kb_db)] == ["error"] * 3


@pytest.mark.parametrize("text, call", [
    ("list", ("kb_list", (), {})), ("remove 季度 报告.md", ("kb_remove", ("季度 报告.md",), {})),
    ("remove", ("kb_remove", ("",), {})),
])
def test_slack_kb_text_becomes_one_typed_call(text, call):
    from bot.chat.slack import parse
    from test_chat_seams import ME, Recorder as Calls

    cmds = Calls()
    parse.kb(cmds, ME, text)
    assert cmds.calls == [call]
    assert [parse.is_kb_add(t) for t in ("add", " ADD ", "/kb add", "add this", "address")] == \
        [True, True, True, False, False]


# -- Slack, through the recorder -------------------------------------------------------------

class Slack:
    def __init__(self, recorder, session, url, cmds, db):
        self.recorder, self.session, self.url, self.cmds, self.db = recorder, session, url, cmds, db

    async def command(self, text: str, user: str = ADMIN, channel: str = "C0GENERAL") -> dict:
        """Run `/kb <text>` and return what it said to its response URL."""
        name = uuid.uuid4().hex
        fields = {"command": "/kb", "text": text, "user_id": user, "channel_id": channel, "team_id": "T0KB",
                  "trigger_id": name, "response_url": self.recorder.response_url(name)}
        status, body, _ = await post_signed(self.session, self.url, SECRET, command_body(fields))
        assert status == 200, body
        await self.recorder.wait_for(lambda r: any(c.path.endswith(name) for c in r.calls), 20)
        return next(c.data for c in self.recorder.calls if c.path.endswith(name))


@pytest_asyncio.fixture
async def slack(kb_db, tmp_path):
    recorder = await Recorder().start()
    recorder.token = TOKEN
    cmds = make_commands(kb_db, tmp_path, {"slack": [ADMIN]}, max_file_mb=0.01)  # 10 KB
    app = slack_app.build_app(cmds, token=TOKEN, signing_secret=SECRET, api_url=recorder.api_url,
                              update_every_s=0.2)
    runner = await slack_app.start_http(app, 0, host="127.0.0.1")
    session = aiohttp.ClientSession()
    yield Slack(recorder, session, "http://127.0.0.1:%d%s" % (runner.addresses[0][1], slack_app.EVENTS_PATH),
                cmds, kb_db)
    await session.close()
    await runner.cleanup()
    await recorder.close()


@pytest.mark.asyncio
async def test_slack_admin_adds_the_file_shared_in_the_channel_lists_finds_and_removes_it(slack, tmp_path):
    slack.recorder.share("C0GENERAL", "old-notes.txt", b"older file")
    slack.recorder.share("C0GENERAL", "warranty.md", WARRANTY)  # the newest one is added
    said = await slack.command("add")
    doc = "uploads/warranty.md"
    passages = store.document(slack.db, doc)["chunks"]
    assert said["response_type"] == "in_channel"
    assert said["text"].startswith(slack_render.escape(f"{doc} added: {passages} passage(s)."))
    assert "Sample search “星尘咖啡机保修政策” → uploads/warranty.md" in said["text"]
    (download,) = slack.recorder.of("file")
    assert [c.token for c in slack.recorder.calls if c.method == "file"] == [TOKEN]
    assert not (tmp_path / "uploads" / "old-notes.txt").exists()

    listing = await slack.command("list", user="U0BOB")  # anyone may list
    assert listing["response_type"] == "ephemeral"
    assert f"• {doc}: {passages} passage(s), added " in listing["text"] and f"by slack:{ADMIN}" in listing["text"]
    found = await slack.command("search XK-9 warranty card", user="U0BOB")
    assert found["text"].startswith(f"[1] {doc}")

    removed = await slack.command("remove warranty.md")
    assert removed["text"] == f"{doc} removed: {passages} passage(s) are out of the knowledge base."
    assert store.document(slack.db, doc) is None and not (tmp_path / "uploads" / "warranty.md").exists()
    assert doc not in (await slack.command("list"))["text"]
    assert doc not in docs_of(slack.db, "星尘咖啡机保修期 XK-9")
    audit = [(r["action"], r["target"], r["result"], r["user"]) for r in store.audit_log(slack.db)][::-1]
    assert audit == [("kb add", doc, "ok", ADMIN), ("kb remove", doc, "ok", ADMIN)]


@pytest.mark.asyncio
async def test_slack_a_mention_on_a_message_with_a_file_adds_it_with_a_hostile_name_made_safe(slack, tmp_path):
    message = slack.recorder.share("C0GENERAL", "../../../etc/季度 报告.md", WARRANTY, user=ADMIN)
    envelope = {"type": "event_callback", "event_id": "Ev0ADD1", "team_id": "T0KB", "api_app_id": "A0KBBOT",
                "event": {"type": "app_mention", "user": ADMIN, "text": "<@UKBBOT> add", "channel": "C0GENERAL",
                          "ts": message["ts"], "event_ts": message["ts"], "files": message["files"]}}
    status, _, _ = await post_signed(slack.session, slack.url, SECRET, event_body(envelope), json_body=True)
    assert status == 200
    await slack.recorder.wait_for(lambda r: r.of("chat.postMessage"), 20)
    (posted,) = slack.recorder.of("chat.postMessage")
    assert posted["thread_ts"] == message["ts"] and posted["text"].startswith("uploads/季度 报告.md added: ")
    assert [p.name for p in (tmp_path / "uploads").iterdir()] == ["季度 报告.md"]
    assert not list(tmp_path.glob("etc*")) and store.document(slack.db, "uploads/季度 报告.md")
    assert slack.recorder.count("conversations.history") == 0  # the file came with the mention


@pytest.mark.asyncio
async def test_slack_add_in_a_thread_takes_the_file_shared_in_that_thread(slack):
    root = slack.recorder.share("C0GENERAL", "elsewhere.md", b"# Elsewhere\n\nnot this one")
    slack.recorder.messages["C0GENERAL"][-1].pop("files")  # the thread's root carries no file
    slack.recorder.share("C0GENERAL", "warranty.md", WARRANTY, thread=root["ts"])
    slack.recorder.share("C0GENERAL", "channel-later.md", b"# Later\n\nnot this one either")
    envelope = {"type": "event_callback", "event_id": "Ev0ADD2", "team_id": "T0KB", "api_app_id": "A0KBBOT",
                "event": {"type": "app_mention", "user": ADMIN, "text": "<@UKBBOT> add", "channel": "C0GENERAL",
                          "ts": slack.recorder.next_ts(), "thread_ts": root["ts"]}}
    await post_signed(slack.session, slack.url, SECRET, event_body(envelope), json_body=True)
    await slack.recorder.wait_for(lambda r: r.of("chat.postMessage"), 20)
    assert slack.recorder.of("chat.postMessage")[0]["text"].startswith("uploads/warranty.md added: ")
    assert [d["doc"] for d in store.documents(slack.db) if d["doc"].startswith("uploads/")] == ["uploads/warranty.md"]


@pytest.mark.asyncio
async def test_slack_a_file_that_fails_to_convert_is_named_and_nothing_is_added(slack, tmp_path):
    slack.recorder.share("C0GENERAL", "broken.md", NOT_UTF8)
    said = await slack.command("add")
    assert said["response_type"] == "ephemeral"
    assert said["text"].startswith("Could not add broken.md: not UTF-8 text") and "Nothing was added" in said["text"]
    assert store.document(slack.db, "uploads/broken.md") is None and not any((tmp_path / "uploads").iterdir())
    (row,) = store.audit_log(slack.db)
    assert (row["action"], row["target"], row["result"][:6]) == ("kb add", "uploads/broken.md", "error:")


@pytest.mark.asyncio
async def test_slack_refusals_come_before_any_download(slack, tmp_path):
    slack.recorder.share("C0GENERAL", "warranty.md", WARRANTY)
    refused = await slack.command("add", user="U0BOB")
    assert "admins only" in refused["text"] and refused["response_type"] == "ephemeral"
    assert slack.recorder.count("conversations.history") == 0 and slack.recorder.count("file") == 0
    (row,) = store.audit_log(slack.db)
    assert (row["user"], row["action"], row["result"]) == ("U0BOB", "kb add", "refused")
    assert "admins only" in (await slack.command("remove warranty.md", user="U0BOB"))["text"]

    slack.recorder.share("C0GENERAL", "huge.md", b"# Huge\n\n" + b"x" * 20000)  # over the 10 KB limit
    big = await slack.command("add")
    assert "Could not add huge.md: it is 0.0 MB, over the 0.0 MB limit" not in big["text"]
    assert big["text"].startswith("Could not add huge.md: it is ") and "BOT_MAX_FILE_MB" in big["text"]
    slack.recorder.share("C0GENERAL", "setup.exe", b"MZ\x90\x00")
    odd = await slack.command("add")
    assert odd["text"].startswith("Could not add setup.exe: unsupported type")
    assert slack.recorder.count("file") == 0  # Slack said the size and the name: nothing was fetched
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").iterdir())


@pytest.mark.asyncio
async def test_slack_without_files_read_the_sign_in_page_is_recognised_not_indexed(slack):
    slack.recorder.token = "xoxb-another-app"  # Slack serves its sign-in page to this bot's token
    slack.recorder.share("C0GENERAL", "warranty.md", WARRANTY)
    said = await slack.command("add")
    assert "files:read" in said["text"] and "Nothing was added" in said["text"]
    assert store.document(slack.db, "uploads/warranty.md") is None
    nothing = await slack.command("add", channel="C0EMPTY")
    assert nothing["text"].startswith("No file was shared here lately")


# -- Discord, through the recorder ------------------------------------------------------------

from test_discord import ADMIN_USER, USER, TOKEN as DISCORD_TOKEN, answered, deliver, ephemeral, rec, slash  # noqa: E402,F401


@pytest_asyncio.fixture
async def discord_bot(rec, kb_db, tmp_path):  # noqa: F811 (rec: the recorder fixture of test_discord)
    from bot.chat.discord import app as discord_app

    client = discord_app.build_client(make_commands(kb_db, tmp_path, {"discord": [ADMIN_USER]}, max_file_mb=0.01))
    await client.login(DISCORD_TOKEN)
    yield client
    await client.close()


def kb_add(rec, name: str, data: bytes, user: str = ADMIN_USER) -> dict:  # noqa: F811
    attachment = rec.attachment(name, data)
    payload = slash("kb", [{"type": 1, "name": "add", "options": [{"type": 11, "name": "file",
                                                                    "value": attachment["id"]}]}], user=user)
    payload["data"]["resolved"] = {"attachments": {attachment["id"]: attachment}}
    return payload


def kb(verb: str, user: str = ADMIN_USER, **options) -> dict:
    return slash("kb", [{"type": 1, "name": verb, "options": [
        {"type": 3, "name": k, "value": v} for k, v in options.items()]}], user=user)


async def said(rec, client, payload) -> tuple:
    deliver(client, payload)
    (deferred,), (reply,) = await answered(rec, payload, 2)
    return deferred, reply


def downloads(rec) -> int:
    return len(rec.find("GET", r"/attachments/.*"))


@pytest.mark.asyncio
async def test_discord_admin_adds_an_attachment_lists_finds_and_removes_it(rec, discord_bot, tmp_path):  # noqa: F811
    db, doc = discord_bot.kb.db, "uploads/warranty.md"
    deferred, reply = await said(rec, discord_bot, kb_add(rec, "warranty.md", WARRANTY))
    passages = store.document(db, doc)["chunks"]
    assert not ephemeral(deferred) and not ephemeral(reply) and downloads(rec) == 1
    assert reply.json["content"].startswith(f"{doc} added: {passages} passage(s).")
    assert "Sample search “星尘咖啡机保修政策” → uploads/warranty.md" in reply.json["content"]

    _, listing = await said(rec, discord_bot, kb("list", user=USER))
    assert ephemeral(listing) and f"• {doc}: {passages} passage(s), added " in listing.json["content"]
    _, found = await said(rec, discord_bot, kb("search", user=USER, query="XK-9 warranty card"))
    assert found.json["content"].startswith(f"[1] {doc}")
    _, removed = await said(rec, discord_bot, kb("remove", name="warranty.md"))
    assert removed.json["content"] == f"{doc} removed: {passages} passage(s) are out of the knowledge base."
    assert store.document(db, doc) is None and not (tmp_path / "uploads" / "warranty.md").exists()
    assert [(r["action"], r["result"]) for r in store.audit_log(db)][::-1] == [("kb add", "ok"), ("kb remove", "ok")]


@pytest.mark.asyncio
async def test_discord_refusals_and_a_file_that_fails_to_convert(rec, discord_bot, tmp_path):  # noqa: F811
    db = discord_bot.kb.db
    _, refused = await said(rec, discord_bot, kb_add(rec, "warranty.md", WARRANTY, user=USER))
    assert ephemeral(refused) and "admins only" in refused.json["content"]
    assert rec.find("DELETE", r"/webhooks/.*/messages/@original")  # the public "thinking…" went first
    _, big = await said(rec, discord_bot, kb_add(rec, "big.md", b"# Big\n\n" + b"x" * 20000))
    assert big.json["content"].startswith("Could not add big.md: it is 20 KB, over the 10 KB limit")
    assert downloads(rec) == 0  # Discord said the size and who asked: nothing was fetched
    _, broken = await said(rec, discord_bot, kb_add(rec, "../损坏.md", NOT_UTF8))
    assert ephemeral(broken) and broken.json["content"].startswith("Could not add 损坏.md: not UTF-8 text")
    assert downloads(rec) == 1 and store.document(db, "uploads/损坏.md") is None
    assert not any((tmp_path / "uploads").iterdir())
    assert [(r["user"], r["result"].split(":")[0]) for r in store.audit_log(db)][::-1] == [
        (USER, "refused"), (ADMIN_USER, "error"), (ADMIN_USER, "error")]


def test_forgetting_the_person_who_added_a_document_keeps_it_but_not_their_name(kb_db, tmp_path, indexed_kb):
    cmds = make_commands(kb_db, tmp_path, {"slack": [ADMIN]})
    assert cmds.kb_add(Caller("slack", ADMIN, "C1"), "warranty-forget.md", WARRANTY).ok
    assert store.uploads(kb_db)["uploads/warranty-forget.md"]["added_by"] == f"slack:{ADMIN}"
    store.forget_user(kb_db, "slack", ADMIN)
    assert store.uploads(kb_db)["uploads/warranty-forget.md"]["added_by"] == "forgotten"
    assert "uploads/warranty-forget.md" in docs_of(kb_db, "星尘咖啡机保修期")
    cmds.kb_remove(Caller("slack", ADMIN, "C1"), "warranty-forget.md")  # the module's index is shared


def test_a_pdf_from_chat_is_cited_by_page_and_a_corrupt_one_is_refused_by_name(kb_db, tmp_path, indexed_kb):
    from tools import format_fixtures

    made = format_fixtures.write_fixtures(tmp_path / "made")
    pdf = next(p for p in made.values() if p.suffix == ".pdf")
    cmds = make_commands(kb_db, tmp_path, {"slack": [ADMIN]})
    admin = Caller("slack", ADMIN, "C1")
    added = cmds.kb_add(admin, "heron-report.pdf", pdf.read_bytes())
    assert added.ok and added.document["passages"] >= 3, added.text
    hit = retrieval.Searcher(kb_db).search("鹭田机器人成都办公室工程师", 1)[0]
    assert (hit.doc, hit.source) == ("uploads/heron-report.pdf", "uploads/heron-report.pdf p. 3")

    corrupt = cmds.kb_add(admin, "broken.pdf", b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nnot a pdf body\n")
    assert not corrupt.ok and corrupt.text.startswith("Could not add broken.pdf:") and "Nothing was added" in corrupt.text
    assert store.document(kb_db, "uploads/broken.pdf") is None and not (tmp_path / "uploads" / "broken.pdf").exists()
    generation = store.index_generation(kb_db)
    assert cmds.kb_remove(admin, "heron-report.pdf").ok  # the module's index is shared
    assert store.index_generation(kb_db) > generation  # remove_document bumps it: other replicas reload


def test_a_new_chunker_re_reads_an_upload_under_its_own_name(kb_db, tmp_path, indexed_kb):
    cmds = make_commands(kb_db, tmp_path, {"slack": [ADMIN]})
    admin = Caller("slack", ADMIN, "C1")
    assert cmds.kb_add(admin, "warranty-rechunk.md", WARRANTY).ok
    store.set_meta(kb_db, "chunker", "0:0")  # as after an upgrade that changes the chunker
    ingest.index_paths(kb_db, [indexed_kb.kb_dir], indexed_kb.kb_dir, progress=False)
    names = [d["doc"] for d in store.documents(kb_db) if d["doc"].endswith("warranty-rechunk.md")]
    assert names == ["uploads/warranty-rechunk.md"]
    assert cmds.kb_remove(admin, "warranty-rechunk.md").ok  # the module's index is shared
