"""A small multi-format knowledge base, generated: `python -m tools.format_fixtures OUT_DIR`.

Six files (PDF, DOCX, PPTX, XLSX, HTML and a Notion-style zip export) about a fictional
company, Heronfield Robotics (鹭田机器人). Each file states facts, in Chinese and in English,
that no other file (and nothing in knowledge/docs) states, so a question about one of them has
one right document: knowledge/eval/formats.jsonl asks them, in both languages, with the
sentence each answer rests on as `evidence`. Generated rather than shipped so that a reader
can see every word that is in them, and the figures (index time per MB, recall@1) can be
reproduced from the shell:

    python -m tools.format_fixtures /tmp/formats
    BOT_DB=/tmp/formats.db python -m bot index knowledge/docs /tmp/formats
    BOT_DB=/tmp/formats.db python -m bot eval-retrieval knowledge/eval/formats.jsonl

The generators (reportlab, python-docx, python-pptx, openpyxl) are in the `dev` extra. The
bad-file corpus (`write_bad_files`) is here too: what each one is made to break.
"""
from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

# Every fact sits in one short paragraph, so that a PDF's line wrapping cannot split it.
PDF_PAGES = [
    ("Heronfield Robotics Annual Report 2025", "鹭田机器人2025年度报告",
     ["This report covers the fiscal year 2025 of Heronfield Robotics.", "本报告涵盖鹭田机器人2025财年。"]),
    ("Revenue", "营收",
     ["Heronfield Robotics reported revenue of 48.7 million yuan in the third quarter of 2025.",
      "鹭田机器人2025年第三季度营收为4870万元。"]),
    ("Offices", "办公室",
     ["The Chengdu office of Heronfield Robotics employs 137 engineers.",
      "鹭田机器人成都办公室共有工程师137名。"]),
]
DOCX = [
    (1, "Employee Handbook 员工手册", []),
    (2, "Annual leave 年假", ["Employees with more than two years of service receive 18 days of annual leave.",
                             "司龄满两年的员工每年享有18天年假。"]),
    (2, "Equipment 设备", ["Every new hire receives a laptop budget of 9,500 yuan.",
                          "每位新员工可获得9500元的笔记本电脑预算。"]),
]
SLIDES = [
    ("Product Roadmap 产品路线图", ["Heronfield Robotics, 2026"]),
    ("Project Kestrel 隼鸟项目", ["Project Kestrel launches on 14 March 2026.", "隼鸟项目将于2026年3月14日上线。"]),
    ("Battery 电池", ["The Kestrel battery lasts 11 hours per charge.", "隼鸟电池单次充电可续航11小时。"]),
]
SHEETS = {
    "Suppliers": [("Supplier 供应商", "City 城市", "Contract 合同"),
                  ("Qingshan Motors 青山电机", "Wuxi 无锡", "3.2 million yuan 320万元"),
                  ("Bluewater Sensors 蓝水传感", "Xiamen 厦门", "1.6 million yuan 160万元")],
    "Warehouses": [("Warehouse 仓库", "Capacity 容量"),
                   ("Hefei warehouse 合肥仓库", "6,400 pallets 6400个托盘")],
}
HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>On-call 值班</title></head>
<body>
<h1>On-call guide 值班指南</h1>
<h2>Rotation 轮换</h2>
<p>The on-call rotation at Heronfield Robotics changes every Tuesday at 10:00.</p>
<p>鹭田机器人的值班轮换在每周二上午10点交接。</p>
<h2>Escalation 升级</h2>
<p>An unanswered page escalates to the engineering director after 25 minutes.</p>
<p>无人响应的告警在25分钟后升级给工程总监。</p>
</body></html>
"""
ZIP_FILES = {
    "Heronfield Wiki/Engineering/Deploys.md": (
        "# Deploys 发布\n\n## Freeze 冻结\n\n"
        "Production deploys at Heronfield Robotics are frozen on Fridays after 15:00.\n\n"
        "鹭田机器人每周五15点之后冻结生产环境发布。\n"),
    "Heronfield Wiki/Sales/Pricing.html": (
        "<html><head><meta charset='utf-8'></head><body><h1>Pricing 定价</h1><h2>Enterprise 企业版</h2>"
        "<p>The Heronfield enterprise plan costs 2,400 yuan per seat per year.</p>"
        "<p>鹭田企业版的价格为每席位每年2400元。</p></body></html>"),
    "Heronfield Wiki/README.md": "# Heronfield Wiki\n\nExported from Notion.\n",
}


def _pdf(path: Path, pages=PDF_PAGES, image_only: bool = False) -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))  # ships with reportlab: no font file needed
    c = canvas.Canvas(str(path), pagesize=A4)
    c.setTitle(path.stem)
    for en, zh, lines in pages:
        if image_only:  # a scan: a picture of the page and no text layer
            from reportlab.lib.utils import ImageReader
            from PIL import Image, ImageDraw

            img = Image.new("L", (400, 120), 255)
            ImageDraw.Draw(img).text((10, 40), en, fill=0)
            c.drawImage(ImageReader(img), 72, 600, width=400, height=120)
        else:
            c.setFont("Helvetica-Bold", 20)
            c.drawString(72, 770, en)
            c.setFont("STSong-Light", 18)
            c.drawString(72, 745, zh)
            y = 710
            for line in lines:
                c.setFont("STSong-Light" if any(ord(ch) > 0x2e80 for ch in line) else "Helvetica", 11)
                c.drawString(72, y, line)
                y -= 24
        c.showPage()
    c.save()


def _docx(path: Path, sections=DOCX) -> None:
    import docx

    d = docx.Document()
    for level, heading, paras in sections:
        d.add_heading(heading, level=level)
        for p in paras:
            d.add_paragraph(p)
    d.save(str(path))


def _pptx(path: Path, slides=None) -> None:
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    for n, (title, lines) in enumerate(SLIDES if slides is None else slides):
        slide = deck.slides.add_slide(deck.slide_layouts[0 if n == 0 else 1])
        slide.shapes.title.text = title
        body = slide.placeholders[1]
        body.text = "\n".join(lines)
    deck.slide_width = Inches(10)
    deck.save(str(path))


def _xlsx(path: Path, sheets=SHEETS) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for name, rows in sheets.items():
        ws = wb.create_sheet(name)
        for row in rows:
            ws.append(list(row))
    wb.save(str(path))


def _zip(path: Path, files: dict[str, str | bytes] = ZIP_FILES) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)


def write_fixtures(out: Path, scale: int = 1) -> dict[str, Path]:
    """The six fixture files under `out` (created), by format. `scale` > 1 repeats every page,
    section, slide, row and wiki page that many times (numbered), for timing per MB."""
    if scale > 1:
        return _scaled(out, scale)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"pdf": out / "heronfield-report.pdf", "docx": out / "heronfield-handbook.docx",
             "pptx": out / "heronfield-roadmap.pptx", "xlsx": out / "heronfield-suppliers.xlsx",
             "html": out / "heronfield-oncall.html", "zip": out / "heronfield-wiki-export.zip"}
    _pdf(paths["pdf"])
    _docx(paths["docx"])
    _pptx(paths["pptx"])
    _xlsx(paths["xlsx"])
    paths["html"].write_text(HTML, encoding="utf-8")
    _zip(paths["zip"])
    return paths


def _scaled(out: Path, n: int) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"pdf": out / "report-x.pdf", "docx": out / "handbook-x.docx", "pptx": out / "roadmap-x.pptx",
             "xlsx": out / "suppliers-x.xlsx", "html": out / "oncall-x.html", "zip": out / "wiki-export-x.zip"}
    _pdf(paths["pdf"], [(f"{en} {i}", f"{zh} {i}", lines * 8) for i in range(n) for en, zh, lines in PDF_PAGES])
    _docx(paths["docx"], [(lvl, f"{h} {i}", paras * 4) for i in range(n) for lvl, h, paras in DOCX])
    _pptx(paths["pptx"], [(f"{t} {i}", body) for i in range(n) for t, body in SLIDES])
    _xlsx(paths["xlsx"], {name: rows[:1] + [tuple(f"{c} {i}" for c in r) for i in range(n * 10) for r in rows[1:]]
                          for name, rows in SHEETS.items()})
    body = HTML.split("<body>")[1].split("</body>")[0]
    paths["html"].write_text(HTML.replace(body, body * n * 4), encoding="utf-8")
    _zip(paths["zip"], {name.replace("/", f" {i}/", 1): text for i in range(n) for name, text in ZIP_FILES.items()})
    return paths


def write_bad_files(out: Path, max_file_mb: float = 1.0) -> dict[str, Path]:
    """One file per way a document can fail, under `out`: encrypted, corrupt and scanned PDFs,
    a file over `max_file_mb`, an unsupported type, a zip bomb and a zip with traversal paths,
    and one good file that must still be indexed beside them."""
    from pypdf import PdfReader, PdfWriter

    out.mkdir(parents=True, exist_ok=True)
    p = {name: out / name for name in (
        "encrypted.pdf", "corrupt.pdf", "scanned.pdf", "huge.txt", "photo.bmp", "bomb.zip", "traversal.zip",
        "good.md")}
    _pdf(out / "plain.pdf", PDF_PAGES[:1])
    writer = PdfWriter(clone_from=PdfReader(out / "plain.pdf"))
    writer.encrypt(user_password="secret", owner_password="owner")
    with open(p["encrypted.pdf"], "wb") as f:
        writer.write(f)
    (out / "plain.pdf").unlink()
    p["corrupt.pdf"].write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nthis is not a pdf body\n")
    _pdf(p["scanned.pdf"], PDF_PAGES[:2], image_only=True)
    with open(p["huge.txt"], "w", encoding="utf-8") as f:  # over the limit by a fifth
        line = "A line of text that makes the file large.\n"
        f.write(line * (int(max_file_mb * 1.2 * 2**20) // len(line)))
    p["photo.bmp"].write_bytes(b"BM" + bytes(64))
    # A bomb: a small archive that claims a huge expansion (zeros compress about 1000:1).
    with zipfile.ZipFile(p["bomb.zip"], "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.txt", b"0" * (8 * 1024 * 1024))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../../escaped.md", "# Escaped\n\nThis must never be written outside.\n")
        z.writestr("/etc/absolute.md", "# Absolute\n\nNor this.\n")
    p["traversal.zip"].write_bytes(buf.getvalue())
    p["good.md"].write_text("# Good\n\nThe good file beside the bad ones is still indexed.\n", encoding="utf-8")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tools.format_fixtures OUT_DIR", file=sys.stderr)
        return 2
    for fmt, path in write_fixtures(Path(argv[0])).items():
        print(f"{fmt}\t{path}\t{path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
