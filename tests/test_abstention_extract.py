"""Abstention (bot/answering/abstention.py), the extract (extract.py) and the model's abstention marker.

Real texts and real tokenisation (jieba, Snowball); the corpus is a few passages written here, so the
IDF weights are the ones these tests reason about. The bundled knowledge base runs through the whole
pipeline in test_answering.py and through `eval-answers` below.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bot.answering import abstention, extract, prompts
from bot.answering.prompts import Passage

ROOT = Path(__file__).resolve().parent.parent
ROWS = [
    {"doc": "platform-advantage.md", "heading": "技术安全风险 > 对策",
     "text": "硬件故障会导致服务中断。建立硬件备份系统，确保在硬件故障时能够快速恢复服务。定期演练恢复流程。"},
    {"doc": "user-advantage.md", "heading": "隐私保护",
     "text": "**差分隐私**：\n采用差分隐私技术，减少单个数据点对模型训练结果的影响，保护用户隐私。"},
    {"doc": "future-user-needs.md", "heading": "工具 > 框架",
     "text": "FairScale 是一个分布式训练框架，能够显著提高模型训练效率。J.P. Morgan开发了自动化风险管理工具。"},
    {"doc": "management-advantage.md", "heading": "团队",
     "text": "团队管理需要明确分工。项目进度用协作工具跟踪。"},
]
LEXICON = {"backup": [("备份", 1.0)], "hardwar": [("硬件", 1.0)], "privaci": [("隐私", 1.0)]}


def judge(**kw):
    return abstention.Judge(ROWS, LEXICON, **kw)


def passages(*idx):
    return [Passage(ROWS[i]["doc"], ROWS[i]["heading"], ROWS[i]["text"]) for i in idx]


# --- abstention ---------------------------------------------------------------------------------

def test_a_question_the_passages_cover_is_answered_one_they_never_mention_is_not():
    j = judge()
    covered = j.verdict("硬件故障时怎样快速恢复服务？", passages(0, 1))
    assert not covered.abstain and covered.best == 0 and covered.coverage > 0.9
    never = j.verdict("公司的年假政策是怎样的？", passages(0, 1))
    assert never.abstain and "年假" in never.missing
    # A near-miss: its topic word (恢复) matches, the thing asked about (碳排放) is nowhere.
    near = j.verdict("恢复服务会产生多少碳排放？", passages(0))
    assert near.abstain and "排放" in near.missing


def test_english_words_count_through_their_chinese_renderings():
    j = judge()
    assert not j.verdict("How is hardware backup done?", passages(0)).abstain
    assert j.verdict("What is the office Wi-Fi password?", passages(0, 1, 2)).abstain


def test_a_word_the_corpus_never_uses_is_found_through_a_synonym_it_does():
    rows = ROWS + [{"doc": "x.md", "heading": "风险", "text": "硬件故障造成的损失要有预案。"}]
    shown = [Passage("x.md", "风险", rows[-1]["text"])]
    # 损坏 is in no passage; CC-CEDICT gives it the sense "damage", which the corpus writes 损失.
    with_synonym = abstention.Judge(rows, {"damag": [("损失", 1.0)]}).verdict("硬件损坏怎么办？", shown)
    without = abstention.Judge(rows, {}).verdict("硬件损坏怎么办？", shown)
    assert not with_synonym.abstain and without.abstain


def test_rare_terms_weigh_more_than_common_ones():
    j = judge()
    weights = dict((t.key, w) for t, w in j.weighted_terms("模型的差分隐私"))
    assert weights["差分"] > weights["模型"]  # in one passage against two


def test_nothing_retrieved_or_no_content_word_abstains():
    j = judge()
    assert j.verdict("硬件故障怎么办？", []).abstain
    for junk in ("", "？？？", "。，、；", "the of and", "\u200b\u200b", "ＡＢ？"):
        v = j.verdict(junk, passages(0))
        assert isinstance(v.abstain, bool) and 0.0 <= v.coverage <= 1.0


def test_full_width_and_zero_width_text_is_matched_as_written_normally():
    j = judge()
    plain = j.verdict("FairScale 是什么框架？", passages(2))
    odd = j.verdict("Ｆａｉｒ\u200bＳｃａｌｅ 是什么框架？", passages(2))
    assert not odd.abstain and abs(odd.coverage - plain.coverage) < 1e-9


def test_the_threshold_is_the_setting_the_judge_applies():
    q, shown = "硬件故障时怎样快速恢复服务？", passages(0)
    assert judge(min_coverage=1.01).verdict(q, shown).abstain
    assert not judge(min_coverage=0.0).verdict(q, shown).abstain


# --- the extract ---------------------------------------------------------------------------------

def test_the_extract_quotes_the_sentence_that_answers_with_its_number():
    chosen = extract.select("硬件故障时怎样快速恢复服务？", passages(1, 0), judge())
    assert {c.n for c in chosen} == {2}  # the passage on privacy has nothing to quote
    lead = extract.lead(chosen)
    assert "「建立硬件备份系统，确保在硬件故障时能够快速恢复服务。」[2]" in lead
    # Read in the passage's order: the sentence before it is on the question too, so it is context.
    assert lead.index("「硬件故障会导致服务中断。」[2]") < lead.index("建立硬件备份系统")
    assert sum(len(c.text) for c in chosen) <= extract.EXTRACT_CHARS and len(chosen) <= extract.MAX_SENTENCES


def test_a_label_line_joins_the_sentence_it_labels_and_names_with_initials_stay_whole():
    assert extract.sentences(ROWS[1]["text"])[0].startswith("差分隐私：采用差分隐私技术")
    assert "J.P. Morgan开发了自动化风险管理工具。" in extract.sentences(ROWS[2]["text"])


def test_sentences_split_at_chinese_and_english_punctuation_and_drop_line_marks():
    text = "- 第一句！第二句？\n1. Third one. Version 3.8 stays whole; 最后一句；\n\n  ## 标题\n"
    assert extract.sentences(text) == ["第一句！", "第二句？", "Third one.", "Version 3.8 stays whole;", "最后一句；", "标题"]


def test_hostile_passages_give_a_bounded_extract_or_none():
    j = judge()
    assert extract.select("硬件故障？", [], j) == []
    assert extract.select("硬件故障？", [Passage("a.md", "h", "")], j) == []
    assert extract.select("硬件故障？", [Passage("a.md", "h", "。。。！！\n\n——")], j) == []
    # One 2,000-character sentence: cut to its best clauses, within the budget, marked as cut.
    long = "，".join(["无关的内容重复出现"] * 100 + ["硬件故障时快速恢复服务"] + ["其他内容"] * 100) + "。"
    chosen = extract.select("硬件故障时怎样快速恢复服务？", [Passage("a.md", "h", long)], j)
    assert len(chosen) == 1 and len(chosen[0].text) <= extract.EXTRACT_CHARS
    assert "硬件故障时快速恢复服务" in chosen[0].text and chosen[0].text.endswith("…")
    # No clause boundary at all (a run of characters): cut at the budget.
    run = extract.select("硬件", [Passage("a.md", "h", "硬件" * 500)], j)
    assert len(run[0].text) == extract.EXTRACT_CHARS
    # Zero-width and full-width characters in a passage still match, and are shown as written.
    zw = extract.select("硬件故障", [Passage("a.md", "h", "无关。硬\u200b件故障要备份。")], j)
    assert zw[0].text == "硬\u200b件故障要备份。"


def test_short_headings_keep_the_last_two_levels_each_trimmed():
    h = "附录 > 第一部分：AI大模型概述与未来用户需求分析的一个非常长的标题 > 第1章 AI大模型概述 > 1.1 概念"
    assert extract.short_heading(h) == "第1章 AI大模型概述 › 1.1 概念"
    assert len(extract.short_heading("甲" * 100)) == extract.HEADING_LEVEL_CHARS
    assert extract.short_heading("") == "" and extract.short_heading("一 › 二") == "一 › 二"


# --- the model's abstention marker ---------------------------------------------------------------

def test_the_system_prompts_ask_for_the_marker_the_pipeline_detects():
    assert prompts.ABSTAIN_ZH in prompts.SYSTEM_ZH and prompts.ABSTAIN_EN in prompts.SYSTEM_EN
    for said in ("资料中没有相关信息。", "「资料中 没有相关信息」", "the passages do NOT contain the answer!",
                 "The passages do not\ncontain the answer.", "资料中没有\u200b相关信息"):
        assert prompts.is_abstention(said), said
    for said in ("FairScale 是分布式训练框架[1]。", "", "资料中有相关信息[1]", "The passages contain the answer [2]."):
        assert not prompts.is_abstention(said), said


# --- the figures command -------------------------------------------------------------------------

def test_eval_answers_reports_abstention_and_extract_figures(tmp_path):
    answerable = tmp_path / "a.jsonl"
    answerable.write_text(json.dumps({"id": "A1", "question": "卷积神经网络里的池化层起什么作用？", "lang": "zh",
                                      "doc": "future-user-needs.md", "evidence": "池化层进行下采样"},
                                     ensure_ascii=False) + "\n", encoding="utf-8")
    unanswerable = tmp_path / "u.jsonl"
    unanswerable.write_text("\n".join(json.dumps({"id": f"U{i}", "question": q, "lang": "zh"}, ensure_ascii=False)
                                      for i, q in enumerate(["公司的年假政策是怎样的？", "办公室的 Wi-Fi 密码是多少？"])),
                            encoding="utf-8")
    env = {"BOT_DB": str(tmp_path / "bot.db"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "bot", "eval-answers", str(answerable), "--unanswerable",
                          str(unanswerable), "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["sets"]["u.jsonl"] == {"n": 2, "abstained": 2, "abstention_rate": 1.0}
    assert report["sets"]["a.jsonl"]["abstained"] == 0 and report["sets"]["a.jsonl"]["evidence_in_extract"] == 1.0
    assert report["abstention_precision"] == 1.0 and report["abstention_recall"] == 1.0
    missing = subprocess.run([sys.executable, "-m", "bot", "eval-answers", str(tmp_path / "nope.jsonl")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_the_unanswerable_set_asks_about_what_the_documents_never_mention():
    docs = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "knowledge/docs").glob("*.md")).lower()
    rows = [json.loads(line) for line in (ROOT / "knowledge/eval/unanswerable.jsonl").read_text().splitlines()]
    assert len(rows) >= 30 and {r["lang"] for r in rows} == {"zh", "en"}
    assert sum(r["kind"] == "near-miss" for r in rows) >= len(rows) // 2
    for r in rows:
        assert not r.get("doc") and r["absent"], r["id"]
        assert not [w for w in r["absent"] if w.lower() in docs], r["id"]
