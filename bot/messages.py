"""What the bot says to people, where Slack, Discord and the command layer say the same thing.

One catalogue so the platforms cannot drift apart: an apology, an unknown
button, an admin-only refusal read the same wherever they are shown. Strings
a single module owns (a command's own reply, the answering pipeline's
notices) stay beside the code that decides them. Plain text: each transport
escapes it for its own markup.
"""
from __future__ import annotations

# A command, a click or a form failed on our side (a bug, the database): logged for the operator.
SORRY = "Sorry, that failed on my side; it is logged for the operator. Please try again later."
# The same, said by Discord (its interactions have no operator-facing wording): tests hold it to "went wrong".
TRY_AGAIN = "Sorry, something went wrong on my side; please try again."
# An answer failed after its placeholder was posted: the placeholder is replaced with this.
ANSWER_FAILED = "Sorry, something went wrong while answering. Please try again."
# A process was restarted while answering: the retrieval-only answer follows (bot/answering/inflight.py).
RESTARTED_EN = "Sorry, I was restarted while answering this, so here is what the knowledge base says instead."
RESTARTED_ZH = "抱歉，回答时我被重新启动了，以下是知识库中最相关的内容。"

# Slack refused the finished answer in its placeholder (too long for one message): it follows as new messages.
ANSWER_BELOW = "The answer is too long for one message; it follows below."
# The last line of an answer too long for a chat message: the whole answer is the file posted above it
# (Slack) or attached to it (Discord). In the answer's language.
CONTINUED_ABOVE_EN = "(continued in the file above)"
CONTINUED_ABOVE_ZH = "（下文见上方的文件）"
CONTINUED_ATTACHED_EN = "(continued in the attached file)"
CONTINUED_ATTACHED_ZH = "（下文见附件）"
# Where no file can be posted (Slack's response URL: the bot is not in the channel), the cut is said so.
CUT_SHORT_EN = "(cut short: the answer is too long for one message here; ask in a channel I am in for all of it)"
CUT_SHORT_ZH = "（回答过长，此处只显示前半部分；请在我所在的频道提问以获得全文）"

ALREADY = "Already saved: this was sent twice, and it counts once."
NOBODY = "I can't tell who sent that, so nothing was recorded."
NO_USER = "Sorry, that command arrived without a user, so I can't run it."
NO_USER_OR_CHANNEL = "Sorry, that command arrived without a user or channel, so I can't answer it."

UNKNOWN_BUTTON = "That button is not one I know (it may be from an older version of me); nothing was recorded."
UNKNOWN_FORM = "This form is not one I know (it may be from an older version of me); nothing was recorded."

CORRECT_TITLE = "Correct this answer"  # the correction form's title (a Slack modal, a Discord modal)


def not_added(what: str, why: str) -> str:
    """A /kb add upload the transport could not fetch (`what`: the file's name; `why`: what happened)."""
    return f"Could not add {what}: {why}. Nothing was added."


def admins_only(what: str) -> str:
    """The refusal of a privileged command (`what`: "/train", "cancelling someone else's job", ...)."""
    return f"Sorry, {what} is for admins only. Ask an admin of this workspace to run it."


def unknown_command(command: str | None) -> str:
    return f"Sorry, I don't know {command or 'that command'}. `/help` lists what I can do."
