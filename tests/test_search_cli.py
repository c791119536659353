"""The command line, run in-process through bot.cli.main with real files and databases."""
from __future__ import annotations

import io
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.answering import pipeline
from bot import cli, store
from bot.chat import console
from bot.knowledge import retrieval
from bot.knowledge.ingest import CHAT_TOKEN_RE

ROOT = Path(__file__).resolve().parent.parent
HIT_KEYS = {"doc", "heading", "text", "score"}
ZH_QUESTION = "为防止设备损坏造成业务停摆，技术安全风险部分提出了什么对策？"
ZH_EVIDENCE = "建立硬件备份系统，确保在硬件故障时能够快速恢复服务"


@pytest.fixture
def indexed_env(env, indexed_kb, monkeypatch):
    """CLI settings pointing at a private copy of the session's indexed database."""
    env.db_path.parent.mkdir(parents=True, exist_ok=True)
    copy = sqlite3.connect(env.db_path)
    indexed_kb.db.conn.backup(copy)  # milliseconds, against seconds to index again
    copy.close()
    monkeypatch.setenv("BOT_KNOWLEDGE_DIR", str(indexed_kb.kb_dir))
    env.kb_dir = indexed_kb.kb_dir
    return env


def run_json(capsys, argv) -> tuple[int, list[dict], str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


def normalise_blank_lines(text: str) -> str:
    return re.sub(r"\n(?:[ \t]*\n)+", "\n\n", text)


def source_without_tokens(kb_dir: Path, doc: str) -> str:
    """The document with chat tokens removed and runs of blank lines as one (passages join blocks so)."""
    return normalise_blank_lines(CHAT_TOKEN_RE.sub("", (kb_dir / doc).read_text(encoding="utf-8")))


def checkout_db_state():
    path = ROOT / "data" / "bot.db"
    return path.stat().st_mtime_ns if path.exists() else None


def test_index_then_search_json(env, capsys):
    checkout_db = checkout_db_state()
    code, [report], _ = run_json(capsys, ["index", "--json"])
    assert code == 0
    assert sorted((f["doc"], f["status"]) for f in report["files"]) == [
        (p.name, "indexed") for p in sorted(env.kb_dir.glob("*.md"))]
    assert report["passages"] > 100
    assert env.db_path.is_file()
    assert checkout_db_state() == checkout_db  # the checkout's data/ was not touched

    code, [result], err = run_json(capsys, ["search", ZH_QUESTION, "--json"])
    assert code == 0 and "indexing" not in err  # already indexed: no second pass
    hits = result["hits"]
    assert 1 <= len(hits) <= 5
    assert all(set(h) == HIT_KEYS for h in hits)
    assert all(isinstance(h["score"], float) for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert any(h["doc"] == "platform-advantage.md" and ZH_EVIDENCE in h["text"] for h in hits)

    code, [again], _ = run_json(capsys, ["index", "--json"])
    assert code == 0 and {f["status"] for f in again["files"]} == {"unchanged"}


def test_search_text_output(indexed_env, capsys):
    assert cli.main(["search", ZH_QUESTION, "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[1] ") and "[2] " in out and "[3] " not in out
    assert "platform-advantage.md" in out


def test_search_without_question_is_a_usage_error(indexed_env, capsys):
    assert cli.main(["search"]) == 2
    assert "question" in capsys.readouterr().err
    assert cli.main(["search", "x", "--k", "0"]) == 2
    assert "--k" in capsys.readouterr().err


def test_batch_search_prints_one_json_line_per_question(indexed_env, tmp_path, capsys):
    questions = [
        {"id": "q1", "question": ZH_QUESTION},
        {"id": 2, "question": "What is FairScale described as?"},
        {"id": "q3", "question": "用户画像"},
        {"id": "q4", "question": "盈利模式中，按服务项目收费的定制化服务举了哪些例子？"},
    ]
    lines = [json.dumps(questions[0], ensure_ascii=False),
             "{not json",
             json.dumps(questions[1]),
             "",
             json.dumps({"id": "no-question"}),
             json.dumps(questions[2], ensure_ascii=False),
             json.dumps({"id": "q5", "question": "   "}),
             json.dumps(questions[3], ensure_ascii=False)]
    batch = tmp_path / "questions.jsonl"
    batch.write_text("\n".join(lines) + "\n", encoding="utf-8")

    code, rows, err = run_json(capsys, ["search", "--batch", str(batch), "--k", "5", "--json"])
    assert code == 1  # some lines were bad
    assert [r["id"] for r in rows] == ["q1", 2, "q3", "q4"]
    for bad_line in (2, 5, 7):
        assert f"{batch}:{bad_line}:" in err
    assert f"{batch}:1:" not in err and f"{batch}:4:" not in err

    sources = {p.name: source_without_tokens(indexed_env.kb_dir, p.name) for p in indexed_env.kb_dir.glob("*.md")}
    for row in rows:
        assert set(row) == {"id", "ms", "hits"}
        assert isinstance(row["ms"], float) and row["ms"] >= 0
        assert 1 <= len(row["hits"]) <= 5
        for h in row["hits"]:
            assert set(h) == HIT_KEYS
            assert h["doc"] in sources  # the file name under the knowledge dir
            assert normalise_blank_lines(h["text"]) in sources[h["doc"]]  # verbatim source text
    assert any(ZH_EVIDENCE in h["text"] for h in rows[0]["hits"])
    assert "platform-advantage.md" in [h["doc"] for h in rows[1]["hits"]]


def test_batch_k_limits_hits_and_reads_stdin(indexed_env, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"id": 7, "question": "平台优势"}) + "\n"))
    code, rows, _ = run_json(capsys, ["search", "--batch", "-", "--k", "2", "--json"])
    assert code == 0
    assert len(rows) == 1 and rows[0]["id"] == 7 and len(rows[0]["hits"]) == 2


def test_batch_missing_file_is_reported(indexed_env, tmp_path, capsys):
    assert cli.main(["search", "--batch", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_eval_retrieval_json(indexed_env, tmp_path, capsys):
    rows = [json.loads(line) for line in (ROOT / "knowledge/eval/dev.jsonl").read_text(encoding="utf-8").splitlines()]
    small = [r for r in rows if r["lang"] == "zh" and r["doc"]][:4] + [r for r in rows if r["lang"] == "en" and r["doc"]][:3]
    small.append(next(r for r in rows if not r["doc"]))  # an unanswerable one counts only towards latency
    qfile = tmp_path / "small.jsonl"
    qfile.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in small) + "\n", encoding="utf-8")

    code, [result], _ = run_json(capsys, ["eval-retrieval", str(qfile), "--json"])
    assert code == 0
    assert set(result["by_lang"]) == {"zh", "en"}
    assert result["by_lang"]["zh"]["n"] == 4 and result["by_lang"]["en"]["n"] == 3
    for stats in result["by_lang"].values():
        for key in ("recall@1", "recall@5", "mrr"):
            assert 0.0 <= stats[key] <= 1.0
        assert stats["recall@1"] <= stats["mrr"] <= stats["recall@5"]
    assert result["by_lang"]["zh"]["recall@5"] > 0
    lat = result["latency_ms"]
    assert lat["n"] == len(small)
    assert 0 < lat["p50"] <= lat["p95"]


def test_eval_retrieval_rejects_bad_question_file(indexed_env, tmp_path, capsys):
    qfile = tmp_path / "bad.jsonl"
    qfile.write_text('{"question": "ok"}\n{broken\n', encoding="utf-8")
    assert cli.main(["eval-retrieval", str(qfile)]) == 2
    assert re.search(r"bad\.jsonl:2: not valid JSON", capsys.readouterr().err)
    # eval-answers reads the same files: told the same, before any model or index is built.
    assert cli.main(["eval-answers", str(qfile)]) == 2
    assert re.search(r"bad\.jsonl:2: not valid JSON", capsys.readouterr().err)


def test_search_on_empty_database_indexes_the_knowledge_dir_first(env, capsys):
    assert not env.db_path.exists()
    code, [result], err = run_json(capsys, ["search", "FairScale", "--json"])
    assert code == 0
    assert "index is empty" in err and str(env.kb_dir) in err
    assert result["hits"] and result["hits"][0]["doc"] == "platform-advantage.md"
    assert "FairScale" in result["hits"][0]["text"]
    from bot import store

    assert [d["doc"] for d in store.documents(store.connect(env.db_path))] == sorted(
        p.name for p in env.kb_dir.glob("*.md"))


def test_english_question_finds_the_chinese_doc(indexed_env, capsys):
    code, [result], _ = run_json(capsys, ["search", "What is FairScale described as?", "--k", "5", "--json"])
    assert code == 0
    assert "platform-advantage.md" in [h["doc"] for h in result["hits"]]


@pytest.mark.parametrize("question", [
    "How should a startup back up its hardware to avoid downtime?",
    "What is FairScale described as in the platform-advantage article?",
])
def test_english_questions_reach_the_evidence(indexed_kb, question):
    hits = retrieval.Searcher(indexed_kb.db).search(question, 5)
    assert any(h.doc == "platform-advantage.md" for h in hits)


LEXICON = {"manag": [("管理", 1.0)], "advantag": [("优势", 1.0)], "user": [("用户", 1.0)],
           "futur": [("未来", 1.0)], "need": [("需求", 1.0)]}


def test_a_question_naming_a_document_is_recognised():
    from bot.knowledge import crosslingual

    aliases = {d: crosslingual.doc_aliases(d, LEXICON)
               for d in ("management-advantage.md", "user-advantage.md", "future-user-needs.md")}
    named, rest = crosslingual.doc_mentions("管理优势一文总结的未来挑战有哪些？", aliases)
    assert named == {"management-advantage.md"}
    assert "管理优势" not in rest and "未来挑战" in rest  # the name is not matched against passages
    named, _ = crosslingual.doc_mentions("In the user-advantage article, what is recall?", aliases)
    assert named == {"user-advantage.md"}
    # a topic, not a document: no word for "article" follows
    assert crosslingual.doc_mentions("用户需求有哪些变化？", aliases)[0] == set()


def test_naming_the_document_prefers_its_passages():
    docs = ["management-advantage.md", "platform-advantage.md", "user-advantage.md"]
    toks = [["未来", "挑战", "其他", "内容"], ["未来", "挑战"], ["别的"]]
    lex = retrieval.LexicalRetriever(toks, LEXICON, docs=docs, order=[0, 0, 0])
    assert lex.rank("未来挑战", 2)[0][0] == 1  # the shorter passage, all else equal
    assert lex.rank("管理优势一文说的未来挑战", 2)[0][0] == 0


def test_chat_answers_with_sources_and_quits(indexed_kb, db):
    # the answer log goes to a fresh database; the session's index stays untouched
    answerer = pipeline.Answerer(db, retrieval.Searcher(indexed_kb.db), None, k=3)
    stdin = io.StringIO(f"\n{ZH_QUESTION}\n/quit\n平台优势\n")
    stdout = io.StringIO()
    assert console.run(answerer, stdin=stdin, stdout=stdout) == 0
    out = stdout.getvalue()
    assert out.startswith(console.BANNER)
    assert "answering without a model" in out
    assert out.count("[1] ") == 1  # one answer: nothing after /quit was read
    assert "[3] " in out and "[4] " not in out
    first = next(line for line in out.splitlines() if line.startswith("[1] "))
    m = re.fullmatch(r"\[1\] (\S+) › (.+)", first)  # a compact source: `[n] doc › heading`
    assert m and (indexed_kb.kb_dir / m.group(1)).is_file(), first
    assert "platform-advantage.md › " in out
    assert stdin.readline() == "平台优势\n"
    assert db.execute("select count(*) from answers").fetchone()[0] == 1


def test_chat_command_reads_stdin_until_eof(indexed_env, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("FairScale 是什么？\n"))
    assert cli.main(["chat"]) == 0
    out = capsys.readouterr().out
    assert "[1] " in out and "platform-advantage.md › " in out
    rows = list(store.connect(indexed_env.db_path).query("select question, mode from answers"))
    assert rows == [{"question": "FairScale 是什么？", "mode": "retrieval-only"}]


def test_settings_json_shows_the_env_values(env, capsys):
    code, [rows], _ = run_json(capsys, ["settings", "--json"])
    assert code == 0
    values = {r["name"]: r["value"] for r in rows}
    assert values["BOT_DB"] == str(env.db_path)
    assert values["BOT_KNOWLEDGE_DIR"] == str(env.kb_dir)
    assert values["BOT_CHUNK_CHARS"] == "600"


def test_importing_bot_and_cli_does_not_import_torch():
    code = "import bot, sys; import bot.cli; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
