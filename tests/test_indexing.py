"""Incremental indexing with ingest.index_paths on real files and a real SQLite file."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot import cli, store
from bot.knowledge import ingest, retrieval

DOC_NAMES = [
    "future-user-needs.md",
    "management-advantage.md",
    "platform-advantage.md",
    "sustainable-business-models.md",
    "user-advantage.md",
]


def index(db, kb: Path, paths=None):
    reports = ingest.index_paths(db, paths or [kb], kb, progress=False)
    return reports, {r.doc: r for r in reports}


def table(db, sql: str) -> list[tuple]:
    return [tuple(r) for r in db.execute(sql).fetchall()]


def passages_of(db, doc: str) -> list[str]:
    return [t for (t,) in db.execute(
        "select p.text from passages p join occurrences o on o.passage_id = p.id where o.doc = ?", [doc])]


def test_second_run_and_touch_change_nothing(db, kb_dir):
    reports, by_doc = index(db, kb_dir)
    assert sorted(by_doc) == DOC_NAMES
    assert all(r.status == "indexed" and r.chunks > 0 and r.new_passages for r in reports)
    passages = table(db, "select id, hash, text, tokens from passages order by id")
    occurrences = table(db, "select doc, ord, heading, passage_id from occurrences order by doc, ord")
    assert len(passages) == store.passage_count(db) > 100

    reports, by_doc = index(db, kb_dir)
    assert {r.status for r in reports} == {"unchanged"}
    assert sorted(by_doc) == DOC_NAMES
    assert all(r.chunks > 0 and not r.new_passages for r in reports)
    assert table(db, "select id, hash, text, tokens from passages order by id") == passages
    assert table(db, "select doc, ord, heading, passage_id from occurrences order by doc, ord") == occurrences

    # touched (new mtime), same content: unchanged, and the new mtime is remembered
    target = kb_dir / "platform-advantage.md"
    later = target.stat().st_mtime + 1000
    os.utime(target, (later, later))
    reports, by_doc = index(db, kb_dir)
    assert {r.status for r in reports} == {"unchanged"}
    assert store.document(db, "platform-advantage.md")["mtime"] == target.stat().st_mtime
    assert table(db, "select id, hash, text, tokens from passages order by id") == passages


def test_changed_file_is_reindexed_alone_and_deleted_file_removed(db, kb_dir):
    index(db, kb_dir)
    before = retrieval.Searcher(db)
    assert any("FairScale" in h.text for h in before.search("FairScale 分布式训练框架", 5))
    assert any(h.doc == "user-advantage.md" for h in before.search("用户优势", 5))
    user_ids = {pid for (pid,) in db.execute("select passage_id from occurrences where doc = 'user-advantage.md'")}

    target = kb_dir / "platform-advantage.md"
    text = target.read_text(encoding="utf-8")
    assert text.count("FairScale") == 2
    target.write_text(text.replace("FairScale", "Zorblaxium") + "\n\n## 新增一节\n\n独角兽斑马计划是我们的新流程。\n",
                      encoding="utf-8")
    (kb_dir / "user-advantage.md").unlink()

    reports, by_doc = index(db, kb_dir)
    assert {d: r.status for d, r in by_doc.items()} == {
        "future-user-needs.md": "unchanged",
        "management-advantage.md": "unchanged",
        "platform-advantage.md": "indexed",
        "sustainable-business-models.md": "unchanged",
        "user-advantage.md": "removed",
    }
    assert by_doc["user-advantage.md"].message
    assert by_doc["platform-advantage.md"].new_passages

    # the database no longer holds the old text or the deleted document
    assert not any("FairScale" in t for (t,) in db.execute("select text from passages"))
    assert store.document(db, "user-advantage.md") is None
    assert passages_of(db, "user-advantage.md") == []
    remaining = {pid for (pid,) in db.execute("select id from passages")}
    assert not (user_ids & remaining)

    after = retrieval.Searcher(db)
    hits = after.search("Zorblaxium", 5)
    assert hits and hits[0].doc == "platform-advantage.md" and "Zorblaxium" in hits[0].text
    hits = after.search("独角兽斑马计划", 3)
    assert hits[0].heading.endswith("新增一节") and "独角兽斑马计划" in hits[0].text
    assert not any("FairScale" in h.text for h in after.search("FairScale 分布式训练框架", 20))
    assert not any(h.doc == "user-advantage.md" for h in after.search("用户优势 个性化推荐 用户体验", 50))


SHARED = "本段落在两份文件里一字不差地出现：部署前务必备份数据库。"


def test_repeated_passage_is_stored_once(db, tmp_path):
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "a.md").write_text(f"# Alpha\n\n## 备份\n\n{SHARED}\n\n## 其他\n\nonly in alpha\n", encoding="utf-8")
    (kb / "b.md").write_text(f"# Beta\n\n{SHARED}\n\n## 别的\n\nonly in beta\n", encoding="utf-8")
    reports, by_doc = index(db, kb)
    assert {d: r.status for d, r in by_doc.items()} == {"a.md": "indexed", "b.md": "indexed"}

    rows = table(db, f"select id from passages where text = '{SHARED}'")
    assert len(rows) == 1
    (pid,) = rows[0]
    occ = table(db, f"select doc, heading from occurrences where passage_id = {pid} order by doc")
    assert occ == [("a.md", "Alpha > 备份"), ("b.md", "Beta")]
    assert store.passage_count(db) == 3
    assert [r["doc"] for r in store.passages(db) if r["id"] == pid] == ["a.md"]

    (kb / "a.md").unlink()
    reports, by_doc = index(db, kb)
    assert by_doc["a.md"].status == "removed"
    assert table(db, f"select id from passages where text = '{SHARED}'") == [(pid,)]
    assert table(db, f"select doc, heading from occurrences where passage_id = {pid}") == [("b.md", "Beta")]
    assert [(r["doc"], r["heading"]) for r in store.passages(db) if r["id"] == pid] == [("b.md", "Beta")]
    assert not any("alpha" in t for (t,) in db.execute("select text from passages"))
    hits = retrieval.Searcher(db).search("部署前务必备份数据库", 3)
    assert hits[0].text == SHARED and hits[0].doc == "b.md"


def write_bad_files(kb: Path, outside: Path) -> dict[str, str]:
    """Bad inputs, each with a word its message must contain."""
    (kb / "empty.md").write_bytes(b"")
    (kb / "blank.md").write_text("  \n\n\t\n", encoding="utf-8")
    (kb / "binary.md").write_bytes(b"# looks like markdown\x00\x01\x02\xff" * 10)
    gbk = "平台优势体现在数据资源、计算能力和开发工具三个方面。".encode("gbk")
    with pytest.raises(UnicodeDecodeError):
        gbk.decode("utf-8")
    (kb / "gbk.md").write_bytes(gbk)
    (kb / "utf16.txt").write_bytes("用户优势与平台优势".encode("utf-16"))  # b'\xff\xfe' + UTF-16-LE, no NUL
    (kb / "tokens-only.md").write_text("<|im_start|>\n<|im_end|>\n", encoding="utf-8")
    os.symlink(outside / "does-not-exist.md", kb / "x.md")  # a broken link: unreadable even as root
    return {
        "empty.md": "empty",
        "blank.md": "empty",
        "binary.md": "binary",
        "gbk.md": "UTF-8",
        "utf16.txt": "UTF-8",
        "tokens-only.md": "empty",
        "x.md": "unreadable",
    }


def test_bad_files_are_reported_by_name_and_good_ones_still_indexed(db, tmp_path):
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "good.md").write_text("# 好文件\n\n这是一份正常的文档。\n", encoding="utf-8")
    (kb / "also-good.txt").write_text("Plain notes that index fine.\n", encoding="utf-8")
    expected = write_bad_files(kb, tmp_path)
    missing = tmp_path / "nowhere" / "missing.md"

    reports, by_doc = index(db, kb, [kb, missing])
    assert by_doc["good.md"].status == "indexed"
    assert by_doc["also-good.txt"].status == "indexed"
    for name, word in expected.items():
        r = by_doc[name]
        assert r.status in ("skipped", "error"), name
        assert word.lower() in r.message.lower(), (name, r.message)
    miss = [r for r in reports if r.doc.endswith("missing.md")]
    assert len(miss) == 1 and miss[0].status == "error" and "missing" in miss[0].message
    assert str(missing) in miss[0].doc

    assert [d["doc"] for d in store.documents(db)] == ["also-good.txt", "good.md"]
    assert store.passage_count(db) == 2
    # a plain-text file without headings is headed by its file name
    assert [(r["heading"], r["text"]) for r in store.passages(db) if r["doc"] == "also-good.txt"] == [
        ("also-good", "Plain notes that index fine.")]
    assert retrieval.Searcher(db).search("正常的文档", 1)[0].doc == "good.md"


def test_index_command_names_each_bad_file_and_exits_1(env, capsys):
    for name in DOC_NAMES[1:]:  # one real document is enough here, and faster
        (env.kb_dir / name).unlink()
    expected = write_bad_files(env.kb_dir, env.tmp)
    assert cli.main(["index"]) == 1
    out, err = capsys.readouterr()
    for name, word in expected.items():
        line = next((ln for ln in err.splitlines() if ln.startswith(f"{name}: ")), None)
        assert line, f"{name} not reported on stderr:\n{err}"
        assert word.lower() in line.lower()
    assert f"{DOC_NAMES[0]}: " in out and "passages" in out
    assert "1 indexed, 7 skipped" in out


def test_file_that_turns_bad_loses_its_passages(db, tmp_path):
    kb = tmp_path / "kb"
    kb.mkdir()
    names = ["binary.md", "empty.md", "gbk.md", "link.md", "keep.md"]
    for n in names:
        (kb / n).write_text(f"# {n}\n\n文件{n}的独特内容 unique-{n[:-3]} text.\n", encoding="utf-8")
    solo = tmp_path / "solo.md"  # indexed as an explicit file, from outside the folder
    solo.write_text("# Solo\n\n单独索引的文件。\n", encoding="utf-8")
    reports, by_doc = index(db, kb, [kb, solo])
    assert {r.status for r in reports} == {"indexed"} and len(reports) == 6
    assert store.passage_count(db) == 6
    assert by_doc[str(solo)].status == "indexed"

    (kb / "binary.md").write_bytes(b"\x00\x01binary now\x00")
    (kb / "empty.md").write_bytes(b"")
    (kb / "gbk.md").write_bytes("现在是GBK编码的文本内容。".encode("gbk"))
    (kb / "link.md").unlink()
    os.symlink(tmp_path / "gone.md", kb / "link.md")
    solo.unlink()

    reports, by_doc = index(db, kb, [kb, solo])
    assert by_doc["keep.md"].status == "unchanged"
    assert [r.status for r in reports if r.doc == str(solo)] == ["error", "removed"]  # missing now; its passages go
    assert store.document(db, str(solo)) is None
    for n in ["binary.md", "empty.md", "gbk.md", "link.md"]:
        assert by_doc[n].status == "skipped" and by_doc[n].message, n
        assert store.document(db, n) is None, f"{n} still listed after it turned bad"
        assert passages_of(db, n) == [], f"{n} still has passages after it turned bad"
    assert [d["doc"] for d in store.documents(db)] == ["keep.md"]
    assert store.passage_count(db) == 1
    hits = retrieval.Searcher(db).search("unique-binary unique-empty unique-gbk unique-link unique-keep", 5)
    assert [h.doc for h in hits] == ["keep.md"]
