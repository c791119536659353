"""Slack's slash-command text, parsed into typed calls of the command layer.

Slack hands a command its arguments as one string (`/jobs cancel 7`);
Discord hands them typed, so the parsing is Slack's alone and lives here, and
so do the usage messages for text that names no verb the command has. What
an argument is worth (an id in range, a question that may be asked, who may
do what) is still decided by bot.commands, alike for every platform.
Pure functions of (commands, caller, text): no SDK, no I/O of their own.
"""
from __future__ import annotations

from bot.commands import Caller, Commands, Reply, parse_id


def _words(text: str) -> list[str]:
    return (text or "").split()


KB_USAGE = "Use `/kb search <query>`, `/kb reindex`, `/kb add`, `/kb list` or `/kb remove <name>`."


def kb(commands: Commands, caller: Caller, text: str) -> Reply:
    """`/kb search <query>` | `/kb reindex` | `/kb list` | `/kb remove <name>` (`/kb add` fetches a file
    first: the listener runs it, see `is_kb_add`)"""
    verb, _, rest = (text or "").partition(" ")
    if verb == "search":
        return commands.kb_search(caller, rest.strip())
    if verb == "reindex":
        return commands.kb_reindex(caller)
    if verb == "list":
        return commands.kb_list(caller)
    if verb == "remove":
        return commands.kb_remove(caller, rest.strip())
    return Reply(KB_USAGE, ok=False, private=True)


def is_kb_add(text: str) -> bool:
    """`/kb add`, or a mention saying `add` (`@kb add`, `@kb /kb add`): add the file shared there."""
    words = (text or "").lower().split()
    return words in (["add"], ["/kb", "add"], ["kb", "add"])


def feedback(commands: Commands, caller: Caller, text: str, delivery: str | None = None) -> Reply:
    """`/feedback [optout|optin|review [accept|reject <id>]]`: one chat command, several verbs."""
    words = _words(text)
    if not words:
        return commands.feedback_list(caller)
    verb = words[0].lower()
    if verb == "optout":
        return commands.opt_out(caller, delivery=delivery)
    if verb == "optin":
        return commands.opt_in(caller, delivery=delivery)
    if verb == "review":
        # The action goes on as typed (lower-cased): the command layer refuses non-admins before it
        # judges the action, so an unknown one is answered there, after the admin check, as ever.
        action = words[1].lower() if len(words) > 1 else None
        correction_id = parse_id(words[2]) if len(words) > 2 else None
        return commands.review(caller, action, correction_id, delivery=delivery)
    return Reply("Use `/feedback`, `/feedback optout`, `/feedback optin` or "
                 "`/feedback review [accept|reject <id>]`.", ok=False, private=True)


def forget(commands: Commands, caller: Caller, text: str, delivery: str | None = None) -> Reply:
    """`/forget me`: it only ever applies to the caller, and says so for anything else."""
    if (text or "").strip().lower() != "me":
        return Reply("`/forget me` deletes what you asked, rated and corrected. "
                     "It only ever applies to you.", ok=False, private=True)
    return commands.forget(caller, delivery=delivery)


def jobs(commands: Commands, caller: Caller, text: str) -> Reply:
    """`/jobs` | `/jobs cancel <id>`"""
    words = _words(text)
    if not words:
        return commands.jobs(caller)
    if words[0].lower() != "cancel":
        return Reply("Use `/jobs` or `/jobs cancel <id>`.", ok=False, private=True)
    return commands.cancel_job(caller, parse_id(words[1]) if len(words) > 1 else None)


def adapter(commands: Commands, caller: Caller, text: str) -> Reply:
    """`/adapter [list]` | `/adapter chart` | `/adapter promote <version>` | `/adapter rollback`"""
    words = _words(text)
    action, version = (words[0] if words else "list"), (words[1] if len(words) > 1 else None)
    if action == "list":
        return commands.adapter_list(caller)
    if action == "chart":
        return commands.adapter_chart(caller)
    if action == "promote":
        return commands.adapter_promote(caller, version)
    if action == "rollback":
        return commands.adapter_rollback(caller)
    return Reply("Use `/adapter list`, `/adapter chart`, `/adapter promote <version>` or `/adapter rollback`.",
                 ok=False, private=True)
