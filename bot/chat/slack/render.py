"""Slack's side of an answer, as Block Kit: text, sources, 👍/👎 buttons, the correction modal.

Pure functions over `answering.Answer` and `commands.Reply`, no SDK and no
I/O, so `slack_app` stays about transport. Slack's payloads arrive with
`&`, `<` and `>` escaped, and anything we post is read as mrkdwn, where
`<...>` is a link or a mention: text from users, passages or the model is
escaped on the way out so it can never ping `@channel` or forge a link.
Plain `@channel`/`@here`/`@everyone` get a zero-width space after the `@`
too: they are not broadcasts without `link_names`, but a client or a
future flag that links them must still find nothing to ping.

An answer is Markdown (the model's, or passages'): it goes out as mrkdwn,
converted and escaped in one step by bot/chat/slack/mrkdwn.py, then split at
Slack's limits in a way that cuts no entity, link or code fence. An answer too
long for one message's blocks is never cut silently: its first part ends with a
visible note and the whole answer is uploaded to the thread as a file
(`answer_file`, posted by the listeners before the answer).
"""
from __future__ import annotations

import re

from bot import messages
from bot.chat.slack import mrkdwn
from bot.commands import MAX_CORRECTION_CHARS, Reply

VOTE_UP, VOTE_DOWN = "vote_up", "vote_down"  # action_ids of the buttons
CORRECTION = "correction"  # the modal's callback_id, and the block_id of its input (errors name it)
CORRECTION_INPUT = "text"  # action_id of the modal's text input
THINKING = "_Thinking…_"
SECTION_CHARS = 3000  # Block Kit: a section's text is at most 3000 characters
INPUT_CHARS = min(3000, MAX_CORRECTION_CHARS)  # Block Kit: plain_text_input max_length is at most 3000
_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")
UNKNOWN_ACTION = messages.UNKNOWN_BUTTON  # Slack calls a button's click an action
UNKNOWN_FORM = messages.UNKNOWN_FORM


escape = mrkdwn.escape  # plain text (ours, a user's) as mrkdwn that shows it as written


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def question_from_event(text: str) -> str:
    """The question in a mention or DM: user mentions (the bot's own included) removed, entities decoded."""
    return unescape(_MENTION.sub(" ", text if isinstance(text, str) else "")).strip()


def streaming_text(partial: str) -> str:
    """The placeholder's text while tokens arrive: what we have so far as mrkdwn, and a cursor. A
    half-written `**bo` is shown as written until it closes (valid Markdown either way)."""
    return mrkdwn.cut(mrkdwn.to_mrkdwn(partial), 40000 - 2) + " ▍"


# Block Kit allows 50 blocks a message: 45 sections of text leave room for the note that the rest is in
# the file, the sources, the notice and the buttons.
MAX_SECTIONS = 45


def answer_sections(answer) -> list[str]:
    """The answer as mrkdwn sections of at most SECTION_CHARS each, all of them (no limit on how many)."""
    return mrkdwn.pieces(mrkdwn.to_mrkdwn(answer.answer), SECTION_CHARS)


def is_long(answer) -> bool:
    """Whether the answer has more sections than one message holds: it is then posted cut, with a note,
    and uploaded whole as a file (`answer_file`)."""
    return len(answer_sections(answer)) > MAX_SECTIONS


def continued_note(answer, uploaded: bool = True) -> str:
    """The visible last line of a cut answer, in the answer's language."""
    if uploaded:
        return messages.CONTINUED_ABOVE_EN if answer.in_english else messages.CONTINUED_ABOVE_ZH
    return messages.CUT_SHORT_EN if answer.in_english else messages.CUT_SHORT_ZH


def answer_file(answer) -> dict:
    """The whole answer, for files_upload_v2: its Markdown as written, and its sources."""
    lines = [answer.answer.strip()]
    if answer.citations:
        lines.append("\n" + ("Sources" if answer.in_english else "来源"))
        lines += [f"[{c.n}] {c.doc} › {c.heading}" for c in answer.citations]
    title = "Answer (full text)" if answer.in_english else "完整回答"
    return {"content": "\n".join(lines) + "\n", "filename": f"answer-{answer.id}.md", "title": title}


def sources_text(answer) -> str:
    sources = answer.sources or answer.citations  # every passage the model was given, cited ones first
    if not sources:
        return "_No passage from the knowledge base is cited._"
    return "*Sources*\n" + "\n".join(f"[{c.n}] {escape(c.doc)} › {escape(c.heading)}" for c in sources)


def notice_text(answer) -> str:
    if answer.mode == "retrieval-only":
        return f":warning: Retrieval-only answer: {escape(answer.notice or 'the language model was not used')}"
    return f":information_source: {escape(answer.notice)}" if answer.notice else ""


def answer_blocks(answer, uploaded: bool | None = True) -> list[dict]:
    """The final message: the answer, its sources (and notice), and the 👍/👎 buttons carrying the answer id.

    Past MAX_SECTIONS the text stops with a visible note: that the rest is in the file above (`uploaded`,
    the listeners post `answer_file` first), or (False) that it was cut, where no file can be posted.
    None: every section, for `answer_messages` to post in parts when the file could not be uploaded."""
    pieces = answer_sections(answer) or ["_(no answer)_"]
    if len(pieces) > MAX_SECTIONS and uploaded is not None:
        pieces = pieces[:MAX_SECTIONS] + [f"_{escape(continued_note(answer, uploaded))}_"]
    blocks: list[dict] = [{"type": "section", "text": {"type": "mrkdwn", "text": piece}} for piece in pieces]
    blocks.append({"type": "context", "block_id": "sources",
                   "elements": [{"type": "mrkdwn", "text": sources_text(answer)[:SECTION_CHARS]}]})
    notice = notice_text(answer)
    if notice:
        blocks.append({"type": "context", "block_id": "notice",
                       "elements": [{"type": "mrkdwn", "text": notice[:SECTION_CHARS]}]})
    blocks.append({"type": "actions", "block_id": "feedback", "elements": [
        _button(VOTE_UP, "👍 Helpful", answer.id),
        _button(VOTE_DOWN, "👎 Wrong or unclear", answer.id),
    ]})
    return blocks


# Slack refuses a message's blocks past about 13,000 characters (msg_blocks_too_long): at most three
# full sections per message when an answer has to be posted in parts.
SECTIONS_PER_MESSAGE = 3


def answer_messages(answer, uploaded: bool | None = True) -> list[dict]:
    """The final answer as several thread messages, for when Slack refuses it as one: the text in parts
    of at most SECTIONS_PER_MESSAGE sections, then the sources, the notice and the 👍/👎 buttons."""
    blocks = answer_blocks(answer, uploaded)
    sections = [b for b in blocks if b["type"] == "section"]
    rest = [b for b in blocks if b["type"] != "section"]
    parts = [sections[i:i + SECTIONS_PER_MESSAGE] for i in range(0, len(sections), SECTIONS_PER_MESSAGE)]
    out = [{"text": mrkdwn.cut(part[0]["text"]["text"], 3900), "blocks": part} for part in parts]
    return out + [{"text": sources_text(answer)[:3900], "blocks": rest}]


def answer_fallback(answer) -> str:
    """The message's `text`: what notifications and screen readers show instead of the blocks."""
    return mrkdwn.cut(mrkdwn.to_mrkdwn(answer.answer), 3900) or "(no answer)"


def _button(action_id: str, label: str, value: str) -> dict:
    return {"type": "button", "action_id": action_id, "value": value,
            "text": {"type": "plain_text", "text": label, "emoji": True}}


def correction_modal(answer_id: str) -> dict:
    """The modal 👎 opens; `private_metadata` carries the answer id back with the submission."""
    return {
        "type": "modal",
        "callback_id": CORRECTION,
        "private_metadata": answer_id,
        "title": {"type": "plain_text", "text": messages.CORRECT_TITLE},
        "submit": {"type": "plain_text", "text": "Save"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": (
                "Your 👎 is recorded. What should the answer have said? Corrections are reviewed "
                "before they are used to train the assistant; leave out personal data.")}},
            {"type": "input", "block_id": CORRECTION,
             "label": {"type": "plain_text", "text": "Correct answer"},
             "element": {"type": "plain_text_input", "action_id": CORRECTION_INPUT, "multiline": True,
                         "max_length": INPUT_CHARS}},
        ],
    }


def correction_text(view: dict) -> str:
    value = view.get("state", {}).get("values", {}).get(CORRECTION, {}).get(CORRECTION_INPUT, {}).get("value")
    return value or ""


def thanks_modal(reply: Reply) -> dict:
    """Shown in place of the modal after a correction is saved (`response_action: update`)."""
    return notice_modal("Thank you", reply.text)


def notice_modal(title: str, text: str) -> dict:
    """A modal that only says something (`response_action: update`): thanks, or why a form was not taken."""
    return {"type": "modal", "title": {"type": "plain_text", "text": title[:24]},
            "close": {"type": "plain_text", "text": "Done"},
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": escape(text)[:SECTION_CHARS]}}]}


def field_error(text: str, limit: int = 150) -> str:
    """A message short enough for a modal's field error: cut at a word, with an ellipsis, when too long."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit - 1)
    return text[:cut if cut > limit // 2 else limit - 1] + "…"


def reply_message(reply: Reply) -> dict:
    """A command's reply as a response_url message: private replies are ephemeral, the rest in the channel."""
    return {"text": escape(reply.text)[:3900], "response_type": "ephemeral" if reply.private else "in_channel",
            "replace_original": False}
