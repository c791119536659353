"""The Discord sender of the outbox poster (bot.chat.outbox): one outbox row, posted with discord.py."""
from __future__ import annotations

import logging

from bot.chat.outbox import OutboxRow, Send, Undeliverable

log = logging.getLogger("bot.chat.discord.send")


def discord_sender(client) -> Send:
    """`send(row)` for Discord: to the row's thread (or channel), split at Discord's 2000 characters.

    A channel the client has not cached (no gateway yet, a DM) is reached by
    id alone (a partial messageable): no extra request, no read permission."""
    import discord

    from bot.chat.discord.app import LIMIT
    from bot.chat.discord.render import split_message

    async def send(row: OutboxRow) -> None:
        if row.get("interaction") and await _edit_interaction(client, row):
            return
        try:
            target = int(row["thread"] or row["channel"])
        except (TypeError, ValueError):
            raise Undeliverable(f"not a Discord channel id: {row['thread'] or row['channel']!r}") from None
        channel = client.get_channel(target) or client.get_partial_messageable(target)
        try:
            # Plain text, no buttons: the app's own posting helper is not needed, only its split.
            for chunk in split_message(row["text"], LIMIT) or ["(nothing to show)"]:
                await channel.send(chunk)
        except (discord.NotFound, discord.Forbidden) as e:
            raise Undeliverable(f"Discord answered {e.status} {e.text or ''}".strip()) from e
    return send


async def _edit_interaction(client, row: OutboxRow) -> bool:
    """Put the row's text in place of a deferred interaction's "thinking…" reply; False when the
    interaction can no longer be edited (its token lasts 15 minutes), so the text is posted instead."""
    import discord

    from bot.chat.discord.app import LIMIT
    from bot.chat.discord.render import split_message

    app_id, _, token = row["interaction"].partition("/")
    first, *rest = split_message(row["text"], LIMIT) or ["…"]
    try:
        hook = discord.Webhook.partial(int(app_id), token, client=client)
        # A process restarted since the deferral has no Interaction object, only its stored token, and
        # discord.py has no public call for "edit the original response" from a token alone. The public
        # Webhook.edit_message with Discord's documented "@original" message id is that call (the route
        # discord.py's own Interaction.edit_original_response uses); it is typed `int`, hence the ignore.
        await hook.edit_message("@original", content=first)  # type: ignore[arg-type]
        for chunk in rest:
            await hook.send(chunk, allowed_mentions=discord.AllowedMentions.none())
    except (ValueError, discord.NotFound, discord.Forbidden) as e:
        log.info("outbox #%s: interaction reply not editable (%s): posting in the channel", row["id"],
                 type(e).__name__)
        return False
    return True
