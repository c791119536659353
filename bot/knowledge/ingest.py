"""Turning files into passages: reading, chunking by headings, and incremental indexing.

Run it as `python -m bot index [PATH ...]`.

A passage is verbatim source text (chat-template tokens removed), so a
citation can quote it; it knows its document and heading path. Sections are
split at blank lines into passages of about `BOT_CHUNK_CHARS` characters,
because a heading section can run to thousands of characters and both the
lexical ranker and the model's context budget do better with paragraphs.
A table of contents is not the parent of the body it lists (`is_toc`).
Indexing ends by re-deriving the English lexicon and re-training the
search re-ranker when anything changed.

Files other than Markdown and text (SUPPORTED_SUFFIXES: PDF, DOCX, PPTX,
XLSX, HTML, zip exports) are converted to Markdown parts first
(bot.knowledge.convert), and each passage keeps its part's location (`p. 12`,
`slide 3`, `sheet Revenue`, a file inside a zip) for citations. A chat upload
is indexed with `index_paths` on the saved file and removed with
`remove_document`.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from bot.knowledge import convert, crosslingual, retrieval, textproc
from bot.knowledge.convert import BadFile  # raised here too; callers catch it as ingest.BadFile
from bot import store

TEXT_SUFFIXES = {".md", ".markdown", ".txt"}
# What `index` accepts: text as it is, the rest converted to Markdown first (bot.knowledge.convert).
CONVERTED_SUFFIXES = {".pdf", ".docx", ".pptx", ".xlsx", ".html", ".htm", ".zip"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | CONVERTED_SUFFIXES
CHUNKER_VERSION = 2  # bump when chunk_markdown's or textproc.tokens' output changes

# Chat-template control tokens (ChatML, Llama, generic). They must never reach
# a prompt or a training set, where they would end a turn early.
CHAT_TOKEN_RE = re.compile(r"<\|[A-Za-z_]{2,20}\|>|</?s>(?=\s|$|#)")
HEADING_RE = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
FENCE_RE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})")
# English sentences end with ". " (a period before whitespace, so 3.14 and e.g.x stay whole).
SENTENCE_END_RE = re.compile(r"(?<=[。！？；!?;])|(?<=\.)(?=\s)")


@dataclass
class Chunk:
    heading: str  # heading path, outermost first, joined by " > "
    text: str
    location: str = ""  # where in a converted file: "p. 12", "slide 3", "sheet Revenue", a file in a zip


@dataclass
class FileReport:
    doc: str
    status: str  # indexed | unchanged | skipped | removed | error
    message: str = ""
    chunks: int = 0
    new_passages: list[int] = field(default_factory=list)


def strip_chat_tokens(text: str) -> str:
    return CHAT_TOKEN_RE.sub("", text)


def read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadFile("unreadable: the file vanished or is a broken link") from None
    except IsADirectoryError:
        raise BadFile("unreadable: it is a directory") from None
    except OSError as e:
        raise BadFile(f"unreadable: {e.strerror or e}") from None
    if not data.strip():
        raise BadFile("empty file")
    if b"\x00" in data[:8192]:
        raise BadFile("binary file (contains NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadFile(f"not UTF-8 text (invalid byte at offset {e.start}); convert it to UTF-8") from None
    if not strip_chat_tokens(text).strip():
        raise BadFile("empty file (nothing left after removing chat-template tokens)")
    return text


def training_texts(docs_dir: Path) -> list[tuple[str, str]]:
    """`(file name, text)` of each .md/.markdown/.txt file under `docs_dir`, sorted, chat tokens removed:
    the documents as text to train on (bot.llm.tinymodel's pre-training, through bot.wiring)."""
    files = sorted(p for p in docs_dir.rglob("*") if p.suffix.lower() in (".md", ".markdown", ".txt") and p.is_file())
    if not files:
        raise FileNotFoundError(f"no .md/.txt documents under {docs_dir} to build the tiny model from")
    # Chat tokens must never reach training text.
    return [(p.name, strip_chat_tokens(p.read_text(encoding="utf-8", errors="replace"))) for p in files]


def _lines(text: str) -> list[str]:
    # A chat token is a hard break: in the bundled docs `<|im_end|>### Heading`
    # glues a heading onto the end of a paragraph.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return CHAT_TOKEN_RE.sub("\n", text).split("\n")


def _blocks(lines: list[str]) -> list[tuple[int, int, bool]]:
    """(start, end, is_code) line ranges separated by blank lines; a fenced block is one block."""
    blocks, i, n = [], 0, len(lines)
    while i < n:
        if not lines[i].strip():
            i += 1
            continue
        m = FENCE_RE.match(lines[i])
        if m:
            fence, j = m.group(1), i + 1
            while j < n and not lines[j].lstrip().startswith(fence):
                j += 1
            blocks.append((i, min(j + 1, n), True))
            i = j + 1
            continue
        j = i
        while j < n and lines[j].strip() and not FENCE_RE.match(lines[j]):
            j += 1
        blocks.append((i, j, False))
        i = j
    return blocks


def _split_long(text: str, limit: int) -> list[str]:
    """Split an over-long paragraph at sentence ends, keeping every character."""
    pieces, current = [], ""
    for sentence in SENTENCE_END_RE.split(text):
        if current and len(current) + len(sentence) > limit:
            pieces.append(current)
            current = ""
        current += sentence
    if current:
        pieces.append(current)
    return pieces


def _section_chunks(lines: list[str], heading: str, limit: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    group: list[str] = []
    size = 0

    def flush():
        nonlocal group, size
        if group:
            chunks.append(Chunk(heading, "\n\n".join(group)))
        group, size = [], 0

    for start, end, is_code in _blocks(lines):
        block = "\n".join(lines[start:end]).strip("\n")
        if not block.strip():
            continue
        if not is_code and len(block) > 2 * limit:
            flush()
            chunks.extend(Chunk(heading, p.strip()) for p in _split_long(block, limit) if p.strip())
            continue
        if group and size + len(block) > limit:
            flush()
        group.append(block)
        size += len(block)
    flush()
    return chunks


# A table of contents: a heading named like one whose body is only bullets
# (or empty), or any heading whose body is only a list of links to anchors.
TOC_TITLE_RE = re.compile(r"^(目录|目錄|目次|大纲|目录大纲|table of contents|contents|toc|outline)[：:]?$", re.I)
BULLET_RE = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
ANCHOR_LINK_RE = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\[[^\]]*\]\(#[^)]*\)\s*$")
# Numbered headings, by rank: 第一部分 / 附录 (0) > 第1章, "9." (1) > 1.2, A.1 (2) > 1.2.3 (3).
# The bundled documents skip and mix Markdown levels ("### 1.3" then "#### 第3章"),
# so a numbered heading also closes every open numbered heading of its rank or deeper.
_NUMBERED = [
    (re.compile(r"^(第[一二三四五六七八九十百零\d]+部分|附录(?![\s]*[A-Za-z\d])|appendix$|part\s+(\d+|[ivx]+)\b)", re.I), 0),
    (re.compile(r"^(第[一二三四五六七八九十百零\d]+章|附录\s*[A-Za-z\d]|appendix\s+\w\b|chapter\s+(\d+|[ivx]+)\b)", re.I), 1),
    (re.compile(r"^\d+(\.\d+){3,}"), 4),
    (re.compile(r"^(\d+|[A-Z])\.\d+\.\d+(?!\.\d)"), 3),
    (re.compile(r"^(\d+|[A-Z])\.\d+(?![.\d])"), 2),
    (re.compile(r"^\d+(?:[.、．]|\s)(?!\d)"), 1),
]


def numbered_rank(title: str) -> int | None:
    """How deep a numbered heading sits (0 = part, 1 = chapter, 2 = section ...), or None."""
    for pattern, rank in _NUMBERED:
        if pattern.match(title.strip()):
            return rank
    return None


def _is_list_only(lines: list[str], links: bool = False) -> bool:
    """Whether a section body is empty or only bullets (only anchor links when `links`)."""
    content = [ln for ln in lines if ln.strip() and not re.fullmatch(r"\s*(-{3,}|\*{3,}|_{3,})\s*", ln)]
    if links:
        return bool(content) and all(ANCHOR_LINK_RE.match(ln) for ln in content)
    return all(BULLET_RE.match(ln) for ln in content)


def is_toc(title: str, body: list[str]) -> bool:
    """A table of contents: it must not become the parent of the document's body."""
    return (bool(TOC_TITLE_RE.match(title.strip())) and _is_list_only(body)) or _is_list_only(body, links=True)


def _sections(lines: list[str]) -> list[tuple[int, str, list[str]]]:
    """(level, title, body lines) per heading, level 0 for text before the first one.

    Lines starting with `#` inside fenced code blocks are code comments, not headings."""
    out: list[tuple[int, str, list[str]]] = [(0, "", [])]
    in_fence: str | None = None
    for line in lines:
        fence = FENCE_RE.match(line)
        if in_fence:
            if line.lstrip().startswith(in_fence):
                in_fence = None
        elif fence:
            in_fence = fence.group(1)
        else:
            m = HEADING_RE.match(line)
            if m:
                out.append((len(m.group(1)), m.group(2).strip(), []))
                continue
        out[-1][2].append(line)
    return out


def chunk_markdown(text: str, title: str = "", limit: int = 600) -> list[Chunk]:
    """Passages of a Markdown (or plain-text) document, each with its heading path.

    A table of contents (see `is_toc`) stays out of the path of what follows
    it: its entries, headings whose bodies are only bullets or empty, belong
    to it until the first heading with prose, which closes it. Numbered
    headings close open ones of the same or deeper rank (`numbered_rank`).
    """
    path: list[tuple[int, str, int | None]] = []
    chunks: list[Chunk] = []
    toc: str | None = None  # the open table of contents' title, while its entries run

    def heading_path() -> str:
        return " > ".join(h for _, h, _ in path) or title

    for level, name, body in _sections(_lines(text)):
        if level:
            if toc is not None and not _is_list_only(body):
                path[:] = [p for p in path if p[1] != toc]  # prose: the table of contents is over
                toc = None
            while path and path[-1][0] >= level:
                path.pop()
            rank = numbered_rank(name)
            if rank is not None:
                while path and path[-1][2] is not None and path[-1][2] >= rank:
                    path.pop()
            path.append((level, name, rank))
            if toc is None and is_toc(name, body):
                toc = name
        chunks.extend(_section_chunks(body, heading_path(), limit))
    return chunks


def passage_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:32]


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _discover(paths: list[Path]) -> tuple[list[Path], list[Path], list[FileReport]]:
    """Files to index, directories walked (for deletions), and reports for missing paths."""
    files, roots, reports = [], [], []
    for p in paths:
        if p.is_dir():
            roots.append(p)
            # `~$report.docx` is Office's lock file beside an open document: not a document.
            files.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in SUPPORTED_SUFFIXES and not f.is_dir()
                                and not f.name.startswith("~$")))
        elif p.exists() or p.is_symlink():
            files.append(p)
        else:
            reports.append(FileReport(str(p), "error", "missing path: no such file or directory"))
    return files, roots, reports


def doc_name(path: Path, knowledge_dir: Path) -> str:
    try:
        return path.absolute().relative_to(knowledge_dir.absolute()).as_posix()
    except ValueError:
        return str(path.absolute())


MAX_FILE_MB = 50.0  # the default of BOT_MAX_FILE_MB


def read_document(path: Path, max_file_mb: float = MAX_FILE_MB) -> tuple[str, bytes | str]:
    """(content hash, what to chunk): the text of a text file, or the bytes of a file to convert.

    The hash is of the original's bytes for a converted file (of its text for a text file, as
    before): an unchanged file is not converted again."""
    suffix = path.suffix.lower()
    if path.is_file() and suffix not in SUPPORTED_SUFFIXES:
        raise BadFile(f"unsupported type {suffix or '(no suffix)'}: index takes "
                      + " ".join(sorted(SUPPORTED_SUFFIXES - {".markdown"})))
    size = path.stat().st_size if path.is_file() else 0
    if size > max_file_mb * 1024 * 1024:
        raise BadFile(f"too large: {size / 2**20:.1f} MB is over the {max_file_mb:g} MB limit (BOT_MAX_FILE_MB)")
    if suffix in CONVERTED_SUFFIXES:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BadFile(f"unreadable: {e.strerror or e}") from None
        if not data.strip():
            raise BadFile("empty file")
        return file_digest(data), data
    text = read_text(path)
    return file_digest(text.encode()), text


def document_chunks(path: Path, content: bytes | str, limit: int, max_file_mb: float = MAX_FILE_MB
                    ) -> tuple[list[Chunk], list[str]]:
    """The passages of one file, each with its location, and what was skipped inside a zip."""
    if isinstance(content, str):
        return chunk_markdown(content, title=path.stem, limit=limit), []
    limits = convert.Limits(max_file_bytes=int(max_file_mb * 2**20), max_zip_bytes=int(4 * max_file_mb * 2**20),
                            table_chars=limit)
    converted = convert.convert(path.name, content, limits)
    chunks: list[Chunk] = []
    last = ""
    for part in converted.parts:
        # A converted file's names (a file inside a zip, a sheet) are shown and prompted like its text.
        title = _clean(part.title) or path.stem
        for c in chunk_markdown(_clean(part.markdown), title=title, limit=limit):
            if not any(ch.isalnum() for ch in c.text):
                continue  # an empty sheet's bare table rule is no passage
            # A PDF page that starts mid-section belongs to the heading the last page ended under.
            heading = last if part.continues and last and c.heading == title else c.heading
            chunks.append(Chunk(heading, c.text, _clean(part.location)))
        if chunks:
            last = chunks[-1].heading
    if not chunks:
        raise BadFile("empty document: no text after conversion")
    return chunks, converted.skipped


# Invisible characters that web pages (Notion, Confluence) put inside words: zero-width space, word
# joiner, BOM, soft hyphen. Left in, `报\u200b销` is two tokens and no query for 报销 finds it.
# (ZWJ and ZWNJ stay: they change how emoji and some scripts read.)
_INVISIBLE_RE = re.compile("[\u200b\u2060\ufeff\u00ad]")


def _clean(text: str) -> str:
    return _INVISIBLE_RE.sub("", strip_chat_tokens(text))


def index_paths(db, paths: list[Path], knowledge_dir: Path, limit: int = 600, progress: bool = True,
                max_file_mb: float = MAX_FILE_MB) -> list[FileReport]:
    """Index files and folders incrementally: unchanged files are skipped by size, mtime and hash.

    Any file in SUPPORTED_SUFFIXES: Markdown and text as they are, the others converted
    (bot.knowledge.convert). A file that cannot be indexed gets a report saying why, by name,
    and the rest are still indexed."""
    from tqdm import tqdm

    files, roots, reports = _discover(paths)
    seen: set[str] = set()
    changed = False
    # A different chunker or chunk size makes every stored passage stale.
    signature = f"{CHUNKER_VERSION}:{convert.fingerprint()}:{limit}"  # a converter upgrade reads everything again
    rechunk = store.get_meta(db, "chunker") not in (None, signature)
    stored_as: dict[Path, str] = {}
    if rechunk:
        known = {f.absolute() for f in files}
        # Re-read under the name each already has: a chat upload (`uploads/NAME`) or a file indexed
        # from elsewhere is not under knowledge_dir, and doc_name would give it a second name.
        stored_as = {Path(d["source"]): d["doc"] for d in store.documents(db) if Path(d["source"]) not in known}
        files += list(stored_as)
    bar = tqdm(files, desc="indexing", unit="file", disable=not progress or len(files) < 2, leave=False)
    for path in bar:
        doc = stored_as.get(path) or doc_name(path, knowledge_dir)
        seen.add(doc)
        bar.set_postfix_str(doc[-40:])
        old = store.document(db, doc)
        try:
            st = path.stat()
            if old and not rechunk and old["size"] == st.st_size and old["mtime"] == st.st_mtime:
                reports.append(FileReport(doc, "unchanged", chunks=old["chunks"]))
                continue
            digest, content = read_document(path, max_file_mb)
        except BadFile as e:
            reports.append(FileReport(doc, "skipped", str(e)))
            if old:  # it was good once; what is there now must not be served
                store.remove_document(db, doc)
                changed = True
            continue
        except OSError as e:  # stat failed: e.g. a file now replaced by a broken link
            reports.append(FileReport(doc, "skipped", f"unreadable: {e.strerror or e}"))
            if old:
                store.remove_document(db, doc)
                changed = True
            continue
        record = {"doc": doc, "source": str(path.absolute()), "sha256": digest, "size": st.st_size,
                  "mtime": st.st_mtime, "indexed_at": time.time()}
        if old and not rechunk and old["sha256"] == digest:  # touched but not changed
            store.replace_document_meta(db, record)
            reports.append(FileReport(doc, "unchanged", chunks=old["chunks"]))
            continue
        try:
            chunks, inner_skipped = document_chunks(path, content, limit, max_file_mb)
        except BadFile as e:
            reports.append(FileReport(doc, "skipped", str(e)))
            if old:
                store.remove_document(db, doc)
                changed = True
            continue
        # Every passage also carries its document's name, so "the platform-advantage
        # article" or "用户优势一文" can prefer the right document.
        title = f"{path.stem.replace('-', ' ').replace('_', ' ')} {chunks[0].heading.split(' > ')[0] if chunks else ''}"
        rows = [(c.heading, c.text, passage_hash(c.text), " ".join(textproc.tokens(f"{title}\n{c.heading}\n{c.text}")),
                 c.location) for c in chunks]
        new = store.replace_document(db, record, rows)
        note = f"skipped inside: {'; '.join(inner_skipped)}" if inner_skipped else ""
        reports.append(FileReport(doc, "indexed", note, chunks=len(rows), new_passages=new))
        changed = True
    for root in roots:
        prefix = str(root.absolute()).rstrip("/") + "/"
        for d in store.documents(db):
            if d["source"].startswith(prefix) and d["doc"] not in seen and not Path(d["source"]).exists():
                store.remove_document(db, d["doc"])
                reports.append(FileReport(d["doc"], "removed", "file deleted: its passages were removed"))
                changed = True
    for p in paths:  # a single file that was indexed before and is gone now
        if not p.exists() and not p.is_symlink():
            doc = doc_name(p, knowledge_dir)
            if store.document(db, doc):
                store.remove_document(db, doc)
                reports.append(FileReport(doc, "removed", "file deleted: its passages were removed"))
                changed = True
    store.set_meta(db, "chunker", signature)
    if changed or store.get_meta(db, "lexicon_built") is None:
        rebuild_lexicon(db)
    if changed or retrieval.ranker_stale(db):
        retrieval.train_ranker(db)  # the re-ranker learns from the passages as they now are
    return reports


def remove_document(db, doc: str) -> int:
    """Forget one indexed document by name; returns how many passages it had (0: no such document).

    `doc` is the name `index` gave it (`doc_name`: relative to the knowledge folder, e.g.
    `uploads/report.pdf`), or its file name when exactly one document has that file name;
    a file name that several documents share raises LookupError naming them. The original
    file is left where it is: a caller that saved it (a chat upload) deletes it, or the
    next `index` of that folder adds it again. The lexicon and the re-ranker are rebuilt and
    the index generation bumped, so running replicas stop serving its passages."""
    row = store.document(db, doc)
    if row is None:
        same = [d for d in store.documents(db) if Path(d["doc"]).name == doc]
        if len(same) > 1:
            raise LookupError(f"{doc!r} names {len(same)} documents: " + ", ".join(d["doc"] for d in same))
        row = same[0] if same else None
    if row is None:
        return 0
    store.remove_document(db, row["doc"])
    rebuild_lexicon(db)
    retrieval.train_ranker(db)
    store.bump_index_generation(db)
    return int(row["chunks"] or 0)


def rebuild_lexicon(db) -> None:
    """Re-derive the English->Chinese query lexicon from the corpus vocabulary."""
    vocab = {t for r in store.passages(db) for t in (r["tokens"] or "").split(" ")
             if t and not t.startswith("~") and textproc.CJK_RE.fullmatch(t)}
    store.save_lexicon(db, crosslingual.build(vocab))
    store.set_meta(db, "lexicon_built", str(len(vocab)))
