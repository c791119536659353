"""chunk_markdown: heading paths, code fences, chat tokens, verbatim text, size limits."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bot.knowledge import ingest
from bot.knowledge.ingest import CHAT_TOKEN_RE, chunk_markdown

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "knowledge" / "docs"
EVAL_DIR = ROOT / "knowledge" / "eval"

TOKENS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>", "</s>")


def by_heading(chunks) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for c in chunks:
        out.setdefault(c.heading, []).append(c.text)
    return {h: "\n\n".join(t) for h, t in out.items()}


def normalise_blank_lines(text: str) -> str:
    """Runs of blank (or whitespace-only) lines become one empty line."""
    return re.sub(r"\n(?:[ \t]*\n)+", "\n\n", text)


def squash(text: str) -> str:
    return "".join(text.split())


# --- heading hierarchy ------------------------------------------------------


def test_heading_path_follows_hierarchy_and_siblings_pop():
    text = "\n".join([
        "preamble before any heading",
        "# A", "a text",
        "## B", "b text",
        "### C", "c text",
        "## D ##", "d text",          # closing #'s are not part of the title
        "#### E", "e text",           # a skipped level still nests under D
        "## F", "f text",             # pops both E and D
        "# G", "g text",              # a new top level pops everything
        "#NoSpace is not a heading",
    ])
    sections = by_heading(chunk_markdown(text, title="doc"))
    assert list(sections) == ["doc", "A", "A > B", "A > B > C", "A > D", "A > D > E", "A > F", "G"]
    assert sections["doc"] == "preamble before any heading"
    assert sections["A > B > C"] == "c text"
    assert sections["A > D"] == "d text"
    assert sections["A > F"] == "f text"
    assert sections["G"] == "g text\n#NoSpace is not a heading"


def test_heading_lines_are_not_in_chunk_text():
    chunks = chunk_markdown("# Title\n\nbody one\n\n## Sub\n\nbody two\n")
    assert [c.text for c in chunks] == ["body one", "body two"]
    assert all("#" not in c.text for c in chunks)


def test_empty_sections_make_no_chunks():
    chunks = chunk_markdown("# A\n\n## B\n\n\n## C\ncontent\n")
    assert [(c.heading, c.text) for c in chunks] == [("A > C", "content")]


# --- code fences ------------------------------------------------------------


@pytest.mark.parametrize("fence", ["```", "~~~", "````"])
def test_hash_lines_inside_fences_are_code_not_headings(fence):
    text = (
        "# Guide\n\n## Setup\n\nRun this:\n\n"
        f"{fence}python\n# install the package\n## not a heading either\nimport bot\n{fence}\n\n"
        "after the code\n\n## Next\n\nnext text\n"
    )
    chunks = chunk_markdown(text)
    sections = by_heading(chunks)
    assert list(sections) == ["Guide > Setup", "Guide > Next"]
    setup = sections["Guide > Setup"]
    assert "# install the package" in setup
    assert "## not a heading either" in setup
    assert f"{fence}python\n# install the package\n## not a heading either\nimport bot\n{fence}" in setup
    assert "after the code" in setup
    assert not any("install" in c.heading for c in chunks)


def test_a_tilde_fence_is_not_closed_by_backticks():
    text = "# A\n\n~~~\n```\n# still code\n```\n~~~\n\n## B\n\nb\n"
    sections = by_heading(chunk_markdown(text))
    assert list(sections) == ["A", "A > B"]
    assert "# still code" in sections["A"]


def test_unclosed_fence_runs_to_the_end():
    text = "# A\n\n```\n# comment\n## also code\n"
    chunks = chunk_markdown(text)
    assert {c.heading for c in chunks} == {"A"}
    assert "## also code" in chunks[0].text


def test_code_block_with_blank_lines_is_one_block():
    code = "```\nline one\n\n\n# after two blank lines\n```"
    chunks = chunk_markdown(f"# A\n\nintro\n\n{code}\n", limit=10)
    assert code in [c.text for c in chunks]


# --- chat-template tokens ---------------------------------------------------


def test_chat_tokens_are_stripped_from_chunks_and_headings():
    text = (
        "<|im_start|>system\n# Title<|im_end|>\n\nFirst paragraph.<|im_end|>\n"
        "<|im_start|>assistant\nSecond paragraph <|endoftext|>\n\nThird </s>\n"
    )
    chunks = chunk_markdown(text)
    assert chunks
    for c in chunks:
        for tok in TOKENS:
            assert tok not in c.text
            assert tok not in c.heading
        assert not CHAT_TOKEN_RE.search(c.text)
    joined = "\n".join(c.text for c in chunks)
    for words in ("First paragraph.", "Second paragraph", "Third"):
        assert words in joined


def test_heading_glued_after_a_chat_token_starts_a_new_section():
    text = "## Part one\n\nThe end of part one.<|im_end|>### Part two\n\nPart two text.\n"
    chunks = chunk_markdown(text)
    assert [(c.heading, c.text) for c in chunks] == [
        ("Part one", "The end of part one."),
        ("Part one > Part two", "Part two text."),
    ]


def test_chat_token_mid_line_is_a_line_break_and_loses_no_text():
    # Deliberate in ingest._lines: a token is a hard break (an end of turn).
    chunks = chunk_markdown("# A\n\nbefore<|im_start|>after\n")
    assert [c.text for c in chunks] == ["before\nafter"]


def test_file_of_only_chat_tokens_is_rejected(tmp_path):
    p = tmp_path / "tokens.md"
    p.write_text("<|im_start|>\n<|im_end|>\n", encoding="utf-8")
    with pytest.raises(ingest.BadFile, match="empty"):
        ingest.read_text(p)


# --- verbatim text ------------------------------------------------------------


VERBATIM_SOURCE = """# 手册<|im_end|>

第一段：平台优势体现在数据资源、计算能力和开发工具三个方面。

第二段，仍在同一节。It mixes English and 中文 text.


第三段前有两个空行。<|im_end|>
## 小节 A

- 列表项一
- 列表项二

```python
# 代码里的井号
print("hi")
```

结尾段落 with trailing text.<|im_end|>### 小节 B

Final paragraph of the document.
"""


# Blocks (paragraphs, fenced code) are joined by one blank line, so the
# source separates them by blank lines; runs of blank lines are compared as one.
@pytest.mark.parametrize("limit", [40, 120, 600])
def test_chunk_text_is_verbatim_source(limit):
    source = normalise_blank_lines(CHAT_TOKEN_RE.sub("", VERBATIM_SOURCE))
    chunks = chunk_markdown(VERBATIM_SOURCE, limit=limit)
    assert {c.heading for c in chunks} == {"手册", "手册 > 小节 A", "手册 > 小节 A > 小节 B"}
    for c in chunks:
        assert normalise_blank_lines(c.text) in source, c.text
        assert c.text == c.text.strip()


def test_chunks_keep_every_character_of_the_body():
    chunks = chunk_markdown(VERBATIM_SOURCE, limit=40)
    body = CHAT_TOKEN_RE.sub("\n", VERBATIM_SOURCE)
    headings = {"# 手册", "## 小节 A", "### 小节 B"}
    body = "\n".join(line for line in body.splitlines() if line not in headings)
    assert "# 代码里的井号" in body
    assert squash("".join(c.text for c in chunks)) == squash(body)


# --- size limits --------------------------------------------------------------


def test_long_chinese_paragraph_splits_at_sentence_ends():
    sentences = [f"这是第{i}个句子，讲的是平台优势和数据资源。" for i in range(60)]
    paragraph = "".join(sentences)
    chunks = chunk_markdown("# T\n\n" + paragraph, limit=200)
    assert len(chunks) > 5
    assert all(len(c.text) <= 200 for c in chunks)
    assert all(c.text.endswith("。") for c in chunks)
    assert all(len(c.text) >= 200 - len(max(sentences, key=len)) for c in chunks[:-1])  # filled near the limit
    assert "".join(c.text for c in chunks) == paragraph


def test_long_english_paragraph_splits_at_sentence_ends():
    sentences = [f"This is sentence number {i} about platforms and data." for i in range(60)]
    paragraph = " ".join(sentences)
    chunks = chunk_markdown("# T\n\n" + paragraph, limit=200)
    assert len(chunks) > 5
    assert all(len(c.text) <= 200 for c in chunks)
    assert all(c.text.endswith(".") for c in chunks)
    assert squash("".join(c.text for c in chunks)) == squash(paragraph)
    # a decimal point is not a sentence end
    chunks = chunk_markdown("# T\n\n" + " ".join(["Pi is 3.14159 and e is 2.71828."] * 40), limit=100)
    assert all(not c.text.startswith(("14159", "71828")) for c in chunks)


def test_many_paragraphs_are_grouped_up_to_the_limit():
    paragraphs = [f"第{i}段。" + "数据资源很重要。" * (3 + i % 5) for i in range(40)]
    chunks = chunk_markdown("# T\n\n" + "\n\n".join(paragraphs), limit=150)
    assert len(chunks) > 3
    seen = []
    for c in chunks:
        parts = c.text.split("\n\n")
        assert all(p in paragraphs for p in parts), "a paragraph was cut"
        if len(parts) > 1:
            assert sum(map(len, parts)) <= 150
        seen.extend(parts)
    assert seen == paragraphs


def test_paragraph_under_twice_the_limit_stays_whole():
    paragraph = "一句话。" * 60  # 240 characters, limit 150: kept whole rather than cut
    chunks = chunk_markdown("# T\n\nshort\n\n" + paragraph + "\n\ntail", limit=150)
    assert paragraph in [c.text for c in chunks]


# --- plain text ---------------------------------------------------------------


def test_plain_text_without_headings_takes_the_title():
    chunks = chunk_markdown("Just some notes.\n\nAnother line.\n", title="notes")
    assert [c.heading for c in chunks] == ["notes"]
    assert chunks[0].text == "Just some notes.\n\nAnother line."


# --- the bundled documents ----------------------------------------------------


@pytest.mark.parametrize("path", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_bundled_doc_chunks_are_clean_and_verbatim(path):
    raw = path.read_text(encoding="utf-8")
    source = normalise_blank_lines(CHAT_TOKEN_RE.sub("", raw))
    chunks = chunk_markdown(raw, title=path.stem)
    assert chunks
    for c in chunks:
        assert "<|im_end|>" not in c.text and "<|im_end|>" not in c.heading
        assert normalise_blank_lines(c.text) in source


def test_glued_headings_in_bundled_doc_become_sections(indexed_kb):
    headings = {r[0] for r in indexed_kb.db.execute(
        "select heading from occurrences where doc = 'sustainable-business-models.md'")}
    assert any(h.endswith("附录B: AI大模型创业案例解析") for h in headings)
    assert not any("<|" in h for h in headings)


def test_no_indexed_passage_contains_chat_tokens(indexed_kb):
    texts = [r[0] for r in indexed_kb.db.execute("select text from passages")]
    assert len(texts) > 100
    assert not [t for t in texts if "<|im_end|>" in t or CHAT_TOKEN_RE.search(t)]


@pytest.mark.parametrize("name", ["dev.jsonl", "test.jsonl"])
def test_every_eval_evidence_is_inside_a_passage_of_its_doc(indexed_kb, name):
    rows = [json.loads(line) for line in (EVAL_DIR / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r.get("evidence")]
    assert rows
    missing = []
    for r in rows:
        texts = [t for (t,) in indexed_kb.db.execute(
            "select p.text from passages p join occurrences o on o.passage_id = p.id where o.doc = ?", [r["doc"]])]
        assert texts, f"{r['id']}: no passages for {r['doc']}"
        if not any(r["evidence"] in t for t in texts):
            missing.append(r["id"])
    assert not missing, f"evidence not found verbatim in any passage: {missing}"


# --- tables of contents and numbered headings ---------------------------------


def test_table_of_contents_is_not_the_parent_of_the_body():
    # The shape of platform-advantage.md: an H2 table of contents whose entries
    # are headings with bullet bodies, then the body at deeper Markdown levels.
    text = "\n".join([
        "# Title", "## 摘要：", "summary prose.",
        "## 目录大纲：", "",
        "### 第一部分：基础", "#### 第1章：概述", "- 1.1 历程", "  - 1.1.1 起源",
        "### 第二部分：实践", "#### 第2章：案例", "- 2.1 案例一",
        "---",
        "### 第一部分：基础", "#### 第1章：概述", "##### 1.1 历程", "body of one point one.",
        "##### 1.2 特点", "body of one point two.",
    ])
    sections = by_heading(chunk_markdown(text))
    body = [h for h in sections if "body" in sections[h]]
    assert body == ["Title > 第一部分：基础 > 第1章：概述 > 1.1 历程", "Title > 第一部分：基础 > 第1章：概述 > 1.2 特点"]
    # The bullets themselves stay searchable, labelled as the table of contents.
    toc = [h for h in sections if h.startswith("Title > 目录大纲：")]
    assert toc and all(sections[h].lstrip().startswith("-") for h in toc)


def test_a_list_of_anchor_links_is_a_table_of_contents_whatever_its_title():
    text = "## Overview\n- [Setup](#setup)\n- [Usage](#usage)\n### Setup\nInstall it.\n"
    assert [c.heading for c in chunk_markdown(text) if "Install" in c.text] == ["Setup"]
    # An ordinary bullet list under an ordinary heading keeps its children.
    text = "## Risks\n- money\n- people\n### Money\nCash runs out.\n"
    assert [c.heading for c in chunk_markdown(text) if "Cash" in c.text] == ["Risks > Money"]


def test_numbered_headings_close_their_equals_whatever_the_markdown_level():
    # From the bundled documents: "### 1.3" then "#### 第3章" and "#### 第二部分" under "### 第一部分".
    text = "\n".join([
        "### 第一部分: 基础", "#### 第1章: 概述", "### 1.3 场景", "text a.",
        "#### 第3章：实践", "text b.", "##### 3.2 挑战", "text c.",
        "#### 第二部分: 构建", "text d.",
    ])
    sections = by_heading(chunk_markdown(text))
    assert list(sections) == ["1.3 场景", "第3章：实践", "第3章：实践 > 3.2 挑战", "第二部分: 构建"]


@pytest.mark.parametrize("title, rank", [("第二部分：实践", 0), ("附录", 0), ("第3章 风险", 1), ("附录 A：指南", 1),
                                         ("9. 附录", 1), ("2.1 商业模式", 2), ("A.1 环境", 2), ("3.2.1 流程", 3),
                                         ("Part one", None), ("关键词", None), ("2024年展望", None)])
def test_numbered_rank(title, rank):
    assert ingest.numbered_rank(title) == rank


def test_bundled_documents_have_short_paths_and_no_toc_parent():
    for path in sorted(DOCS.glob("*.md")):
        chunks = chunk_markdown(path.read_text(encoding="utf-8"), title=path.stem)
        prose = [c for c in chunks if not c.text.lstrip().startswith("-")]
        assert not any("目录" in c.heading for c in prose), path.name
        assert max(len(c.heading) for c in chunks) <= 100, path.name
