"""Every client lists an answer's `sources` (all passages the model was given, cited ones first),
so an answer that cites nothing still shows what it was built from (issue 12)."""
from __future__ import annotations

from bot.answering.pipeline import Answer, Citation
from bot.chat import console
from bot.chat.discord.render import answer_text
from bot.chat.slack.render import sources_text

GIVEN = [Citation(2, "platform-advantage.md", "技术安全风险", "建立硬件备份系统"),
         Citation(1, "user-advantage.md", "数据安全 › 隐私 & <保护>", "差分隐私")]


def _answer(citations, sources):
    return Answer("a1", "资料中没有相关信息。", list(citations), "llm", "m", None, 0.0, sources=list(sources))


def test_an_answer_citing_nothing_still_lists_the_passages_it_was_given():
    ans = _answer([], GIVEN)
    slack = sources_text(ans)
    assert slack.index("[2] platform-advantage.md") < slack.index("[1] user-advantage.md")
    assert "&amp; &lt;保护&gt;" in slack  # still escaped for mrkdwn
    discord = answer_text(ans)
    assert "**来源**\n[2] platform-advantage.md › 技术安全风险\n[1] user-advantage.md" in discord
    assert "[2] platform-advantage.md" in console.render_answer(ans)


def test_an_answer_built_without_sources_falls_back_to_its_citations():
    ans = _answer(GIVEN[:1], [])
    assert "[2] platform-advantage.md" in sources_text(ans) and "[2] platform-advantage.md" in answer_text(ans)
    assert sources_text(_answer([], [])).startswith("_No passage")
