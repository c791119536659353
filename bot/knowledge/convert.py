"""Documents that are not Markdown, converted to Markdown parts that know where they came from.

`convert(name, data, limits)` turns the bytes of a .pdf, .docx, .pptx, .xlsx, .html/.htm or .zip
into `Part`s: Markdown text plus its location (`p. 12`, `slide 3`, `sheet Suppliers`, a file
inside a zip). ingest.index_paths chunks each part with the heading-aware chunker and stores the
location with each passage, so a citation reads `report.pdf p. 12`.

Why markitdown (Microsoft) and not docling: measured by `python -m tools.converter_bench` on the
generated fixtures (tools/format_fixtures.py; table in README "Documents beyond Markdown").
markitdown[pdf,docx,pptx,xlsx] installs 333 MB (247 MB beyond this project's other dependencies)
against docling's 1,757 MB (409 MB beyond), imports in 3 s against 13 s, is faster on DOCX,
PPTX and HTML (9 against 41 s/MB for PPTX) and keeps sheet names as headings, which docling
drops; docling cannot convert a PDF at all without its layout model's weights, fetched from the
Hugging Face hub at first use, which a bot on a closed network cannot do. Both keep DOCX, PPTX
and HTML headings as Markdown headings. For PDF, markitdown gives plain text with neither
headings nor page numbers, so PDFs are read here page by page with pdfminer.six (the library
markitdown itself uses for PDF, installed with it) and a line set in a larger font than the body
becomes a heading. markitdown's own zip converter merges every file into one text, so
zips are walked here, in memory, with limits (see `Limits`).

Nothing here is imported at start-up: markitdown (pandas, magika) is imported on the first
converted file, and Markdown and text files never need it.
"""
from __future__ import annotations

import io
import re
import statistics
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

# Bump when what `convert` makes of a file changes. With markitdown's version it is part of the index's
# signature (ingest.index_paths): after an upgrade every document is read again, since the stored hash is
# the original file's, which an upgrade does not change.
VERSION = 2
MARKITDOWN_SUFFIXES = {".docx", ".pptx", ".xlsx", ".html", ".htm"}
TEXT_IN_ZIP = {".md", ".markdown", ".txt"}
_SLIDE_RE = re.compile(r"^<!-- Slide number: (\d+) -->$", re.M)
_SHEET_RE = re.compile(r"^## (.+)$", re.M)
_NAN_CELL = re.compile(r"\| NaN (?=\|)")
_CJK_END = re.compile(r"[\u2e80-\u9fff\uff00-\uffef]$")


def fingerprint() -> str:
    """This converter's version and the installed markitdown's (read from its metadata, not imported)."""
    from importlib import metadata

    try:
        return f"{VERSION}+markitdown-{metadata.version('markitdown')}"
    except metadata.PackageNotFoundError:
        return f"{VERSION}+no-markitdown"


class BadFile(Exception):
    """A file that cannot be indexed; the message names why, for the user (ingest.BadFile is this class)."""


class _OverBudget(BadFile):
    """A zip inside a zip took the upload over its limits: the whole upload is refused, as a bomb is."""


@dataclass(frozen=True)
class Limits:
    """Guards for one file: its size, and for a zip what it may expand to."""

    max_file_bytes: int = 50 * 1024 * 1024
    max_zip_bytes: int = 200 * 1024 * 1024  # total uncompressed size of the entries read
    max_zip_entries: int = 5000
    max_ratio: float = 100.0  # uncompressed / compressed: text compresses ~5:1, a bomb 1000:1
    max_depth: int = 2  # a zip inside a zip (Notion's large exports) is opened; deeper is not
    table_chars: int = 600  # a longer Markdown table is cut into tables of about this size (BOT_CHUNK_CHARS)


@dataclass
class Part:
    location: str  # "" for a whole document
    markdown: str
    title: str = ""  # the chunker's heading when the part has no heading of its own
    continues: bool = False  # carries on the previous part's section (a PDF page)


@dataclass
class Converted:
    parts: list[Part]
    skipped: list[str] = field(default_factory=list)  # "inner/name: why", for files inside a zip


def convert(name: str, data: bytes, limits: Limits = Limits()) -> Converted:
    """The Markdown parts of one file; raises BadFile with the reason the user sees."""
    suffix = PurePosixPath(name).suffix.lower()
    out = _zip(name, data, limits, depth=1, budget=_Budget(limits.max_zip_bytes, limits.max_zip_entries)) \
        if suffix == ".zip" else Converted(_one(name, data))
    if not any(p.markdown.strip() for p in out.parts):
        raise BadFile("empty document: no text after conversion")
    if suffix == ".pdf":  # a partly scanned PDF: its text pages are indexed, the others named
        blank = [p.location for p in out.parts if not p.markdown.strip()]
        if blank:
            out.skipped.append(f"{', '.join(blank[:10])}{' …' if len(blank) > 10 else ''}: no text layer: needs OCR")
    for p in out.parts:
        p.markdown = split_tables(p.markdown, limits.table_chars)
    return out


_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_RULE = re.compile(r"^\s*\|(\s*:?-{3,}:?\s*\|)+\s*$")


def split_tables(md: str, limit: int) -> str:
    """Cut each Markdown table longer than `limit` characters into tables of rows that fit, each under
    the header row again: the chunker splits at blank lines, and a sheet of 2,000 rows must not be one
    passage, nor a row lose the header that says what its cells are."""
    lines, out, i = md.split("\n"), [], 0
    while i < len(lines):
        if i + 1 < len(lines) and _TABLE_ROW.match(lines[i]) and _TABLE_RULE.match(lines[i + 1]):
            j = i + 2
            while j < len(lines) and _TABLE_ROW.match(lines[j]):
                j += 1
            head, rows = lines[i:i + 2], lines[i + 2:j]
            size, group = 0, []
            for row in rows:
                if group and size + len(row) > limit:
                    out += head + group + [""]
                    size, group = 0, []
                group.append(row)
                size += len(row) + 1
            out += head + group
            i = j
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out)


def _one(name: str, data: bytes) -> list[Part]:
    suffix = PurePosixPath(name).suffix.lower()
    stem = PurePosixPath(name).stem
    if suffix == ".pdf":
        return _pdf(data, stem)
    if suffix in MARKITDOWN_SUFFIXES:
        md = _markitdown(data, suffix)
        if suffix == ".pptx":
            return _split(md, _SLIDE_RE, "slide ", stem)
        if suffix == ".xlsx":  # markitdown writes pandas' empty cell as `NaN`: in every gappy sheet
            return _split(_NAN_CELL.sub("|  ", md), _SHEET_RE, "sheet ", stem, keep=True)
        return [Part("", md, stem)]
    if suffix in TEXT_IN_ZIP:
        try:
            return [Part("", data.decode("utf-8-sig"), stem)]
        except UnicodeDecodeError as e:
            raise BadFile(f"not UTF-8 text (invalid byte at offset {e.start})") from None
    raise BadFile(f"unsupported type {suffix or '(no suffix)'}")


def _split(md: str, marker: re.Pattern, prefix: str, title: str, keep: bool = False) -> list[Part]:
    """Cut markitdown's output at its slide or sheet markers: one part per slide or sheet."""
    cuts = list(marker.finditer(md))
    if not cuts:
        return [Part("", md, title)]
    parts = []
    for m, nxt in zip(cuts, cuts[1:] + [None]):
        body = md[(m.start() if keep else m.end()):(nxt.start() if nxt else len(md))]
        parts.append(Part(prefix + m.group(1).strip(), body, title))
    return parts


def _markitdown(data: bytes, suffix: str) -> str:
    try:
        from markitdown import StreamInfo
        from markitdown.converters import DocxConverter, HtmlConverter, PptxConverter, XlsxConverter
    except ImportError:
        raise BadFile("converter not installed: pip install markitdown[docx,pptx,xlsx,pdf]") from None
    conv = {".docx": DocxConverter, ".pptx": PptxConverter, ".xlsx": XlsxConverter,
            ".html": HtmlConverter, ".htm": HtmlConverter}[suffix]()
    kind = suffix.lstrip(".").upper()
    try:
        # The converter classes directly: MarkItDown() would first guess the type with a model (magika).
        return conv.convert(io.BytesIO(data), StreamInfo(extension=suffix, charset="utf-8")).markdown
    except zipfile.BadZipFile:
        raise BadFile(f"corrupt {kind}: not a valid Office file (damaged or renamed)") from None
    except Exception as e:  # noqa: BLE001 - a converter can fail many ways; the user needs the name and why
        raise BadFile(f"could not convert {kind}: {type(e).__name__}: {str(e)[:200]}") from None


def _pdf(data: bytes, title: str) -> list[Part]:
    """One part per page, lines in a larger font than the body made headings."""
    try:
        from pdfminer.high_level import extract_pages
        from pdfminer.layout import LAParams, LTChar, LTFigure, LTTextContainer
        from pdfminer.pdfdocument import PDFEncryptionError, PDFPasswordIncorrect
    except ImportError:
        raise BadFile("converter not installed: pip install markitdown[docx,pptx,xlsx,pdf]") from None
    pages: list[list[tuple[float, str, bool]]] = []  # per page: (font size, text, starts a box)

    def boxes(item):
        # Text drawn inside a form XObject sits in an LTFigure: a page made that way is not a scan.
        for child in item:
            if isinstance(child, LTTextContainer):
                yield child
            elif isinstance(child, LTFigure):
                yield from boxes(child)

    try:
        for page in extract_pages(io.BytesIO(data), laparams=LAParams(all_texts=True)):
            lines = []
            for box in boxes(page):
                for i, line in enumerate(box):
                    text = line.get_text().strip() if hasattr(line, "get_text") else ""
                    sizes = [round(c.size, 1) for c in line if isinstance(c, LTChar)] if hasattr(line, "__iter__") else []
                    if text:
                        lines.append((statistics.median(sizes) if sizes else 0.0, text, i == 0))
            pages.append(lines)
    except (PDFPasswordIncorrect, PDFEncryptionError):
        raise BadFile("encrypted PDF: it needs a password; save a decrypted copy and index that") from None
    except Exception as e:  # noqa: BLE001 - pdfminer raises PSEOF, PDFSyntaxError, KeyError... on damage
        raise BadFile(f"corrupt PDF: {type(e).__name__}: {str(e)[:160] or 'unreadable structure'}") from None
    if not pages:
        raise BadFile("corrupt PDF: no pages")
    if not any(pages):
        raise BadFile(f"no text layer: needs OCR ({len(pages)} page{'s' * (len(pages) > 1)} of images only)")
    weights: dict[float, int] = {}
    for lines in pages:
        for size, text, _ in lines:
            weights[size] = weights.get(size, 0) + len(text)
    body = max(weights, key=weights.get)
    # Up to three heading levels, by size: the largest font is `#`.
    bigger = sorted({s for s in weights if s >= body * 1.15}, reverse=True)[:3]
    level = {s: "#" * (i + 1) for i, s in enumerate(bigger)}
    parts = []
    for n, lines in enumerate(pages, 1):
        out: list[str] = []
        for size, text, starts_box in lines:
            if size in level and len(text) <= 120:
                out.append(f"\n{level[size]} {text}\n")
            elif out and not starts_box and not out[-1].startswith("\n"):
                sep = "" if _CJK_END.search(out[-1]) else " "  # a wrapped line goes on its paragraph
                out[-1] += sep + text
            else:
                out.append(text)
        parts.append(Part(f"p. {n}", "\n\n".join(out), title, continues=n > 1))
    return parts


def _entry_name(info: zipfile.ZipInfo) -> str:
    """An entry's name as its maker wrote it: without the UTF-8 flag, zipfile reads the bytes as
    cp437, but a zip made on Chinese Windows holds GBK there (and some tools write UTF-8 unflagged)."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        raw = info.filename.encode("cp437")
    except UnicodeEncodeError:
        return info.filename
    for encoding in ("utf-8", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            pass
    return info.filename


def _safe_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return not (p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", name))


@dataclass
class _Budget:
    """What is left of the limits for one uploaded zip, shared by the zips inside it: were each inner zip
    checked on its own, 160 small zips that each expand to the limit would expand to 160 times it."""

    bytes_left: int
    entries_left: int


def _zip(name: str, data: bytes, limits: Limits, depth: int, budget: _Budget) -> Converted:
    """A zip walked like a folder, in memory: each supported file inside becomes parts located at
    its path. The whole archive is refused when it looks hostile (a bomb, a path out of it)."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in z.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as e:
        raise BadFile(f"corrupt zip: {e}") from None
    refuse = _OverBudget if depth > 1 else BadFile
    within = " with the zips inside it" if depth > 1 else ""
    if len(infos) > budget.entries_left:
        raise refuse(f"zip has {limits.max_zip_entries - budget.entries_left + len(infos)} files{within}, "
                     f"over the limit of {limits.max_zip_entries}")
    budget.entries_left -= len(infos)
    unsafe = [i.filename for i in infos if not _safe_name(i.filename)]
    if unsafe:
        raise BadFile(f"zip refused: {unsafe[0]!r} points outside the archive (path traversal)")
    for i in infos:
        if i.file_size > 1024 * 1024 and i.file_size > limits.max_ratio * max(i.compress_size, 1):
            raise BadFile(f"zip refused: {i.filename!r} expands {i.file_size / max(i.compress_size, 1):.0f}:1 "
                          f"(a zip bomb?)")
    total = sum(i.file_size for i in infos)
    if total > budget.bytes_left:
        # Declared sizes bound what is read: zipfile stops an entry at its declared size (more fails the CRC).
        expands = limits.max_zip_bytes - budget.bytes_left + total
        raise refuse(f"zip refused: it expands to {expands / 2**20:.0f} MB{within}, "
                     f"over the {limits.max_zip_bytes / 2**20:.0f} MB limit")
    budget.bytes_left -= total
    parts: list[Part] = []
    skipped: list[str] = []
    for i in sorted(infos, key=_entry_name):
        inner = _entry_name(i)
        suffix = PurePosixPath(inner).suffix.lower()
        base = PurePosixPath(inner).name
        if base.startswith(".") or inner.startswith("__MACOSX/"):
            continue  # macOS resource forks and hidden files are not documents
        if suffix not in TEXT_IN_ZIP | MARKITDOWN_SUFFIXES | {".pdf", ".zip"}:
            skipped.append(f"{inner}: unsupported type {suffix or '(no suffix)'}")
            continue
        if (i.external_attr >> 16) & 0o170000 == 0o120000:  # S_IFLNK: its bytes are a path, not a document
            skipped.append(f"{inner}: a symbolic link, not a file")
            continue
        if i.file_size > limits.max_file_bytes:
            skipped.append(f"{inner}: too large ({i.file_size / 2**20:.1f} MB)")
            continue
        try:
            # ZipExtFile stops at the declared size, which the checks above bounded (more fails the CRC).
            try:
                blob = z.read(i)
            except RuntimeError:  # zipfile's word for an encrypted entry
                raise BadFile("encrypted in the zip: it needs a password") from None
            except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, zlib.error) as e:
                raise BadFile(f"unreadable in the zip: {e}") from None
            if suffix == ".zip":
                if depth >= limits.max_depth:
                    raise BadFile("a zip nested too deep")
                sub = _zip(inner, blob, limits, depth + 1, budget)
                parts += [Part(f"{inner}/{p.location}" if p.location else inner, p.markdown, p.title, p.continues)
                          for p in sub.parts]
                skipped += [f"{inner}/{s}" for s in sub.skipped]
                continue
            inner_parts = _one(inner, blob)
        except _OverBudget as e:
            raise _OverBudget(f"{inner}: {e}") from None
        except BadFile as e:
            skipped.append(f"{inner}: {e}")
            continue
        parts += [Part(f"{inner} {p.location}".strip(), p.markdown, p.title, p.continues) for p in inner_parts]
    if not any(p.markdown.strip() for p in parts):
        raise BadFile("no documents in the zip" + (f" ({'; '.join(skipped[:3])})" if skipped else ""))
    return Converted(parts, skipped)
