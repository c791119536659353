"""The Slack sender of the outbox poster (bot.chat.outbox): one outbox row, posted with slack_sdk."""
from __future__ import annotations

from bot.chat.outbox import OutboxRow, Send, Undeliverable

SLACK_TEXT_CHARS = 39000  # Slack truncates a message past 40,000 characters

# Errors no retry can fix: the row is dropped (the poster logs why), not offered again forever.
SLACK_UNDELIVERABLE = {"channel_not_found", "not_in_channel", "is_archived", "restricted_action",
                       "msg_too_long", "no_text", "invalid_thread_ts", "thread_reply_not_allowed"}


SLACK_GONE = {"message_not_found", "cant_update_message", "edit_window_closed"}


def slack_sender(client) -> Send:
    """`send(row)` for Slack: chat.postMessage to the row's channel, in its thread when it has one; a row
    that names a message (a placeholder left by a killed process) replaces it with chat.update instead."""
    from slack_sdk.errors import SlackApiError

    from bot.chat.slack import mrkdwn

    async def send(row: OutboxRow) -> None:
        # Answers in the outbox are Markdown as written; the cut (a visible "…") breaks no entity or link.
        text = mrkdwn.cut(mrkdwn.to_mrkdwn(row["text"]), SLACK_TEXT_CHARS)
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
