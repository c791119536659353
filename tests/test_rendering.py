"""Answers that render in every client: long, entity-heavy, Markdown-rich, through the real transports.

Real: bolt serving signed HTTP, discord.py over REST, the command layer, the
answering pipeline over the indexed knowledge base, SQLite. Fake: Slack's and
Discord's servers (tests/slack_recorder.py, tests/discord_recorder.py) and the
model, a scripted generator that writes the answers below. Slack is checked
on what it would show: mrkdwn with no literal `**`, no broken entity, no
mention or broadcast, nothing cut without a visible note and the whole answer
in a file, sources and buttons present, no cursor left behind.
"""
from __future__ import annotations

import asyncio
import re

import pytest

from bot import messages
from bot.chat.discord import render as discord_render
from bot.chat.slack import mrkdwn, render as slack_render
from bot.answering import pipeline as answering
from chat_harness import (deliver, discord_served, make_commands, opt, slack_served,
                          slash as discord_slash)
from fakes import ScriptedGenerator

QUESTION = "什么是边缘计算？"


def rich(blocks: int) -> str:
    """A Markdown-rich, entity-heavy Chinese answer; each block carries a unique mark `段NNNN`."""
    return "".join(
        f"## 段{i:04d} 边缘计算的**要点**\n\n"
        f"边缘计算把计算放在**靠近数据源**的地方[1]，R&D 团队说 <低延迟> & 省带宽；原文写作 a&amp;b 与 3<4>2。\n\n"
        f"- **第一**：降低延迟[2]\n- *第二*：节省带宽 & 成本\n  - 嵌套 `x < y && z > 0`\n\n"
        f"1. 见 [文档](https://example.com/edge?a=1&b=2)\n2. 不是链接：[1](见下) 与 [x](!channel) @channel\n\n"
        f"```python\nprint(a**2 & b < c)  # 段{i:04d}\n```\n\n"
        f"> 引用：English **bold** and _italic_, ~~old~~ text.\n\n"
        for i in range(blocks))


MARKS = re.compile(r"段\d{4}")
_LINK = re.compile(r"<(?:https?|mailto):[^<>|\s]*(?:\|[^<>]*)?>")
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.DOTALL)


def assert_clean(text: str) -> None:
    """What Slack would show wrongly: a broken or bare entity, a `<…>` that is no http(s) link (a mention,
    a broadcast, a forged link), a stray `>`, a literal `**` outside code, an unescaped @channel."""
    assert not re.search(r"&(?!amp;|lt;|gt;)", text), text[:200]
    bare = _LINK.sub("", text)
    assert "<" not in bare, re.findall(r".{0,20}<.{0,20}", bare)[:3]
    assert not re.search(r"(?<!^)(?<!\n)>", bare), re.findall(r".{0,20}>.{0,20}", bare)[:3]  # only quote marks
    assert "**" not in _CODE.sub("", text), re.findall(r".{0,20}\*\*.{0,20}", _CODE.sub("", text))[:3]
    assert not re.search(r"@(channel|here|everyone)", text)


def sections(posts: list[dict]) -> list[str]:
    return [b["text"]["text"] for p in posts for b in p.get("blocks") or [] if b["type"] == "section"]


def section_chars(blocks) -> int:
    return sum(len(b["text"]["text"]) for b in blocks or [] if b["type"] == "section")


def refuse_long(method: str, data: dict):
    """What Slack answers for a message's blocks past about 13,000 characters."""
    if method in ("chat.update", "chat.postMessage") and section_chars(data.get("blocks")) > 13000:
        return "msg_blocks_too_long"
    return None


def assert_sources_and_buttons(blocks: list[dict], row: dict) -> None:
    sources = next(b for b in blocks if b.get("block_id") == "sources")["elements"][0]["text"]
    assert sources.startswith("*Sources*") and "[1]" in sources
    buttons = next(b for b in blocks if b["type"] == "actions")["elements"]
    assert [(b["action_id"], b["value"]) for b in buttons] == [("vote_up", row["id"]), ("vote_down", row["id"])]


# -- the conversion itself ------------------------------------------------------------

def test_markdown_becomes_mrkdwn_with_citations_literal_and_no_link_but_http():
    out = mrkdwn.to_mrkdwn(rich(1))
    assert_clean(out)
    assert "*靠近数据源*" in out and "_第二_" in out and "~old~" in out  # bold, italic, strike
    assert "*段0000 边缘计算的要点*" in out  # a heading is a bold line (Slack has no headings)
    assert "•" in out and "1." in out  # lists
    assert "<https://example.com/edge?a=1&amp;b=2|文档>" in out  # a link, its & escaped
    assert "[1](见下)" in out and "降低延迟[2]" in out and "数据源*的地方[1]" in out  # citations stay literal
    assert "[x](!channel)" in out  # no target other than http(s)/mailto becomes a <…>
    assert "a&amp;amp;b" in out and "R&amp;D 团队说 &lt;低延迟&gt;" in out  # shown as written
    assert "```\nprint(a**2 &amp; b &lt; c)" in out  # code keeps its ** and is escaped


@pytest.mark.parametrize("hostile", ["<!here> <!channel|x> <@U123>", "[a](<!here>)", "[a](https://x.y>b|c)",
                                     "![i](javascript:alert(1))", "[a](javascript:alert(1))", "<https://x.y>"])
def test_nothing_a_model_writes_becomes_a_mention_or_a_broken_link(hostile):
    assert_clean(mrkdwn.to_mrkdwn(hostile))


def test_streamed_partial_markdown_renders_at_every_prefix():
    text = rich(2)
    for n in range(0, len(text), 7):  # every few characters: half a `**`, half an entity, half a link or fence
        frame = slack_render.streaming_text(text[:n])
        assert frame.endswith(" ▍") and not re.search(r"&(?!amp;|lt;|gt;)", frame)
        assert not re.search(r"<(?!https?:)", _LINK.sub("", frame))


def test_pieces_cut_no_entity_link_or_fence_and_lose_nothing():
    text = mrkdwn.to_mrkdwn(rich(40) + "\n\n" + "研发 R&D <原型> & 迭代；" * 900 + "\n\n```\n" + "x&y<z\n" * 2000 + "```")
    parts = mrkdwn.pieces(text, slack_render.SECTION_CHARS)
    assert len(parts) > 10 and all(len(p) <= slack_render.SECTION_CHARS for p in parts)
    for p in parts:
        assert_clean(p)
        assert sum(line.startswith("```") for line in p.split("\n")) % 2 == 0  # each piece closes its fences
    reopened = "".join(parts).replace("\n```\n```\n", "\n").replace("\n``````\n", "\n")
    assert reopened.replace("\n", "") == text.replace("\n", "")


# -- Slack, through the real bolt app -----------------------------------------------------

@pytest.mark.asyncio
async def test_slack_streams_and_finishes_a_markdown_rich_answer_as_clean_mrkdwn(kb_db):
    cmds = make_commands(kb_db, ScriptedGenerator(rich(12), piece=300, delay=0.02))
    async with slack_served(cmds, update_every_s=0.05) as slack:
        assert (await slack.command("/ask", QUESTION))[0] == 200
        (final,) = await slack.wait_finals(1)
        (row,) = slack.answers()
        frames = [u for u in slack.recorder.of("chat.update") if not u.get("blocks")]
        assert len(frames) >= 2
        for frame in frames:  # partial Markdown never broke a frame
            assert frame["text"].endswith(" ▍") and not re.search(r"&(?!amp;|lt;|gt;)", frame["text"])
        shown = sections([final])
        assert all(len(s) <= slack_render.SECTION_CHARS for s in shown)
        for s in shown:
            assert_clean(s)
        assert MARKS.findall("".join(shown)) == MARKS.findall(mrkdwn.to_mrkdwn(row["answer"]))
        assert_sources_and_buttons(final["blocks"], row)
        assert "▍" not in final["text"] and slack.recorder.count("files.completeUploadExternal") == 0


@pytest.mark.asyncio
async def test_slack_refused_final_update_posts_the_whole_answer_below_with_sources_and_buttons(kb_db):
    cmds = make_commands(kb_db, ScriptedGenerator(rich(50), piece=2000))  # about 20,000 characters
    async with slack_served(cmds) as slack:
        slack.recorder.refuse = refuse_long
        assert (await slack.command("/ask", QUESTION))[0] == 200
        below = slack_render.escape(messages.ANSWER_BELOW)
        await slack.recorder.wait_for(lambda r: any(u.get("text") == below for u in r.of("chat.update")), 30)
        (row,) = slack.answers()
        posts = [c for c in slack.recorder.calls if c.method == "chat.postMessage" and c.data.get("blocks")]
        assert len(posts) >= 3 and all(p.reply["ok"] for p in posts)  # every part was taken
        shown = sections([p.data for p in posts])
        for s in shown:
            assert_clean(s)
        assert MARKS.findall("".join(shown)) == MARKS.findall(row["answer"])  # nothing cut
        assert_sources_and_buttons(posts[-1].data["blocks"], row)
        placeholder = slack.recorder.of("chat.update")[-1]
        assert placeholder["text"] == below  # the cursor is gone
        assert slack.recorder.count("files.completeUploadExternal") == 0  # in parts, no file needed


@pytest.mark.asyncio
async def test_slack_answer_past_45_sections_is_uploaded_whole_and_posted_with_a_visible_note(kb_db):
    cmds = make_commands(kb_db, ScriptedGenerator(rich(400), piece=None))  # about 170,000 characters
    async with slack_served(cmds) as slack:
        slack.recorder.refuse = refuse_long
        assert (await slack.command("/ask", QUESTION))[0] == 200
        below = slack_render.escape(messages.ANSWER_BELOW)
        await slack.recorder.wait_for(lambda r: any(u.get("text") == below for u in r.of("chat.update")), 60)
        (row,) = slack.answers()
        calls = slack.recorder.calls
        placeholder = next(c for c in calls if c.method == "chat.postMessage" and c.data.get("text") == slack_render.THINKING)
        thread = placeholder.data["thread_ts"]
        (upload,) = slack.recorder.of("upload")
        whole = upload["bytes"].decode()
        assert whole.startswith(row["answer"].strip()) and "来源\n[1] " in whole  # the answer whole, and its sources
        (done_i,) = [i for i, c in enumerate(calls) if c.method == "files.completeUploadExternal"]
        assert calls[done_i].data["thread_ts"] == thread and calls[done_i].data["channel_id"] == placeholder.data["channel"]
        posts = [(i, c) for i, c in enumerate(calls) if c.method == "chat.postMessage" and c.data.get("blocks")]
        assert posts and all(i > done_i for i, _ in posts)  # below the file the note points at
        assert all(c.reply["ok"] and c.data["thread_ts"] == thread for _, c in posts)
        shown = sections([c.data for _, c in posts])
        assert len(shown) == slack_render.MAX_SECTIONS + 1
        for s in shown:
            assert_clean(s)
        assert shown[-1] == f"_{messages.CONTINUED_ABOVE_ZH}_"  # the cut says so, in the answer's language
        marks = MARKS.findall("".join(shown))
        assert marks == MARKS.findall(row["answer"])[:len(marks)] and len(set(marks)) < 400
        assert_sources_and_buttons(posts[-1][1].data["blocks"], row)
        assert calls[-1].method == "chat.update" and calls[-1].data["text"] == below


@pytest.mark.asyncio
async def test_slack_long_answer_whose_upload_fails_is_posted_whole_in_parts(kb_db):
    cmds = make_commands(kb_db, ScriptedGenerator(rich(400), piece=None))
    async with slack_served(cmds) as slack:
        slack.recorder.refuse = lambda method, data: "missing_scope" if method == "files.getUploadURLExternal" \
            else refuse_long(method, data)
        assert (await slack.command("/ask", QUESTION))[0] == 200
        below = slack_render.escape(messages.ANSWER_BELOW)
        await slack.recorder.wait_for(lambda r: any(u.get("text") == below for u in r.of("chat.update")), 60)
        (row,) = slack.answers()
        posts = [p for p in slack.recorder.of("chat.postMessage") if p.get("blocks")]
        shown = sections(posts)
        assert len(shown) > slack_render.MAX_SECTIONS
        assert MARKS.findall("".join(shown)) == MARKS.findall(row["answer"])  # no file, so nothing cut
        assert messages.CONTINUED_ABOVE_ZH not in "".join(shown)
        assert_sources_and_buttons(posts[-1]["blocks"], row)


def test_where_no_file_can_be_posted_a_long_answer_says_it_was_cut():
    answer = answering.Answer("a1", "Edge computing & <latency>. " * 6000, [], "llm", None, None, 0.0)
    blocks = slack_render.answer_blocks(answer, uploaded=False)
    assert len(blocks) <= 50 and blocks[slack_render.MAX_SECTIONS]["text"]["text"] == f"_{messages.CUT_SHORT_EN}_"


# -- Discord, through discord.py and the recorder ------------------------------------------

@pytest.mark.asyncio
async def test_discord_posts_markdown_as_written_with_fences_closed_at_each_cut(kb_db, monkeypatch):
    async with discord_served(make_commands(kb_db, ScriptedGenerator(rich(8))), monkeypatch) as (rec, client):
        payload = discord_slash("ask", [opt("question", QUESTION)])
        deliver(client, payload)
        await rec.wait_for(lambda: any(f.json.get("components") for f in rec.followups(payload["token"])))
        (row,) = list(client.kb.db.query("select * from answers"))
        followups = [f for f in rec.followups(payload["token"])]
        contents = [f.json["content"] for f in followups]
        assert 2 <= len(contents) <= discord_render.MAX_MESSAGES and all(len(c) <= 2000 for c in contents)
        assert not any(f.files for f in followups)  # fits in messages: no file
        for c in contents:
            assert sum(line.lstrip().startswith("```") for line in c.split("\n")) % 2 == 0
            assert not re.search(r"\[\d*$", c) and not re.match(r"^\d*\]", c)
        assert "**靠近数据源**" in contents[0]  # Discord reads Markdown: nothing converted
        assert MARKS.findall("".join(contents)) == MARKS.findall(row["answer"])
        assert "**来源**\n[1] " in contents[-1] and followups[-1].json.get("components")


@pytest.mark.asyncio
async def test_discord_answer_past_its_messages_ends_with_a_note_and_the_whole_answer_attached(kb_db, monkeypatch):
    async with discord_served(make_commands(kb_db, ScriptedGenerator(rich(60))), monkeypatch) as (rec, client):
        payload = discord_slash("ask", [opt("question", QUESTION)])
        deliver(client, payload)
        await rec.wait_for(lambda: any(f.json.get("components") for f in rec.followups(payload["token"])), 20)
        (row,) = list(client.kb.db.query("select * from answers"))
        followups = [f for f in rec.followups(payload["token"])]
        contents = [f.json["content"] for f in followups]
        assert len(contents) == discord_render.MAX_MESSAGES and all(len(c) <= 2000 for c in contents)
        last = followups[-1]
        assert contents[-1].startswith(f"*{messages.CONTINUED_ATTACHED_ZH}*") and "**来源**\n[1] " in contents[-1]
        assert last.json.get("components") and list(last.files) == [f"answer-{row['id']}.md"]
        whole = last.files[f"answer-{row['id']}.md"].decode()
        assert whole.startswith(discord_render.defuse(row["answer"].strip())) and "**来源**" in whole
        assert MARKS.findall(whole) == MARKS.findall(row["answer"]) and len(set(MARKS.findall("".join(contents)))) < 60


@pytest.mark.asyncio
async def test_a_final_update_handed_to_the_outbox_is_converted_once_not_escaped_twice(kb_db):
    from bot import store
    from bot.chat.slack.send import slack_sender

    cmds = make_commands(kb_db, ScriptedGenerator(rich(2), piece=None))
    async with slack_served(cmds) as slack:
        # Rate-limited: a failure the outbox retries (not a refusal), so the answer is handed to it.
        slack.recorder.refuse = lambda method, data: "ratelimited" if method == "chat.update" and data.get("blocks") \
            else None
        assert (await slack.command("/ask", QUESTION))[0] == 200
        await slack.recorder.wait_for(lambda r: any(u.get("blocks") for u in r.of("chat.update")), 15)
        for _ in range(200):  # the hand-off is written just after Slack's answer
            if store.outbox(slack.db):
                break
            await asyncio.sleep(0.05)
        (row,) = slack.answers()
        (handed,) = store.outbox(slack.db)
        assert handed["text"] == row["answer"]  # as written: the sender converts it
        slack.recorder.refuse = None
        await slack_sender(slack.app.client)(handed)
        sent = slack.recorder.of("chat.update")[-1]["text"]
        assert_clean(sent)
        assert "a&amp;amp;b" in sent and "&amp;amp;D" not in sent and "*靠近数据源*" in sent
