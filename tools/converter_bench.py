"""markitdown against docling, measured on the generated fixtures: `python -m tools.converter_bench`.

Each converter is installed in a scratch virtualenv of its own (docling brings torch and its
models; neither belongs in the project's venv to be measured):

    python -m venv /tmp/conv-venvs/md && /tmp/conv-venvs/md/bin/pip install 'markitdown[pdf,docx,pptx,xlsx]'
    python -m venv /tmp/conv-venvs/dl && /tmp/conv-venvs/dl/bin/pip install docling
    python -m venv /tmp/conv-venvs/base        # an empty venv: the baseline for sizes
    python -m tools.converter_bench --markitdown-python /tmp/conv-venvs/md/bin/python \\
        --docling-python /tmp/conv-venvs/dl/bin/python --base-python /tmp/conv-venvs/base/bin/python

It prints, per converter and format: seconds per MB (on tools/format_fixtures.py's set scaled up
`--scale` times, so that a file's fixed cost does not dominate), heading fidelity (the share of
the fixtures' headings, slide titles and sheet names that come out as Markdown heading lines),
the import time, and the install size (site-packages beside an empty venv's, and what it adds to
this project's dependencies without a converter, which already bring numpy, torch, lxml...). Then the same for this project's
own path (bot.knowledge.convert: markitdown, PDFs page by page with pdfminer) and the time of a
whole `index` of one file per format into a fresh database, per MB.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from tools import format_fixtures as ff

# Run inside each converter's venv: convert the files, time each, list the installed distributions.
WORKER = r'''
import json, sys, time
from importlib import metadata
job = json.load(sys.stdin)
t0 = time.perf_counter()
if job["converter"] == "markitdown":
    from markitdown import MarkItDown
    md = MarkItDown()
    convert = lambda p: md.convert(p).text_content
else:
    from docling.document_converter import DocumentConverter
    dc = DocumentConverter()
    convert = lambda p: dc.convert(p).document.export_to_markdown()
out = {"import_s": time.perf_counter() - t0, "files": {}, "dists": {}}
for path in job["files"]:
    t = time.perf_counter()
    try:
        text = convert(path)
        out["files"][path] = {"seconds": time.perf_counter() - t, "markdown": text}
    except Exception as e:
        out["files"][path] = {"error": (type(e).__name__ + ": " + str(e))[:200]}
for d in metadata.distributions():
    size = 0
    for f in d.files or []:
        try:
            size += f.locate().stat().st_size
        except OSError:
            pass
    out["dists"][d.metadata["Name"].lower().replace("_", "-")] = size
print(json.dumps(out))
'''

HEADINGS = {  # what each fixture states as a heading, title or sheet name
    "pdf": [t for en, zh, _ in ff.PDF_PAGES for t in (en, zh)],
    "docx": [h for _, h, _ in ff.DOCX],
    "pptx": [t for t, _ in ff.SLIDES],
    "xlsx": list(ff.SHEETS),
    "html": re.findall(r"<h\d>(.*?)</h\d>", ff.HTML),
}
FORMATS = ["pdf", "docx", "pptx", "xlsx", "html"]


def fidelity(markdown: str, expected: list[str]) -> float:
    lines = {" ".join(m.group(1).split()) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", markdown, re.M)}
    return sum(" ".join(h.split()) in lines for h in expected) / len(expected)


def _site_mb(python: str) -> float:
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return int(subprocess.run(["du", "-sk", site], capture_output=True, text=True, check=True).stdout.split()[0]) / 1024


def _closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements pull in, as installed in this venv (markers evaluated)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [(Requirement(r), ()) for r in requirements]
    while todo:
        req, _ = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for r in dist.requires or []:
            sub = Requirement(r)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append((sub, ()))
    return seen


def _project_without_converter() -> set[str]:
    """What the project installs without a document converter: its dependencies but markitdown."""
    import tomllib

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    return _closure([d for d in deps if not d.lower().startswith("markitdown")]) | {"pip", "setuptools", "wheel"}


def _run(python: str, converter: str, files: list[Path]) -> dict:
    proc = subprocess.run([python, "-c", WORKER], input=json.dumps({"converter": converter, "files": [str(f) for f in files]}),
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode:
        raise SystemExit(f"{converter}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _own(small: dict[str, Path], big: dict[str, Path], tmp: Path) -> dict:
    """This project's path: ingest.read_document + document_chunks (converting), and a whole index."""
    from bot import store
    from bot.knowledge import convert, ingest

    t0 = time.perf_counter()
    import markitdown.converters  # noqa: F401 - what the first converted file pays for, once

    out = {"import_s": time.perf_counter() - t0, "formats": {}}
    for fmt in FORMATS + ["zip"]:
        parts = convert.convert(small[fmt].name, small[fmt].read_bytes()).parts
        row = {"fidelity": fidelity("\n\n".join(p.markdown for p in parts), HEADINGS[fmt]) if fmt in HEADINGS else None}
        mb = big[fmt].stat().st_size / 2**20
        t = time.perf_counter()
        _, content = ingest.read_document(big[fmt])
        chunks, _ = ingest.document_chunks(big[fmt], content, 600)
        row["convert_s_per_mb"] = (time.perf_counter() - t) / mb
        db = store.connect(tmp / f"{fmt}.db")
        t = time.perf_counter()
        reports = ingest.index_paths(db, [big[fmt]], big[fmt].parent, progress=False)
        assert reports[0].status == "indexed", reports
        row["index_s_per_mb"] = (time.perf_counter() - t) / mb
        row["mb"], row["passages"] = mb, len(chunks)
        out["formats"][fmt] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--markitdown-python", default="/tmp/conv-venvs/md/bin/python")
    ap.add_argument("--docling-python", default="/tmp/conv-venvs/dl/bin/python")
    ap.add_argument("--base-python", default="/tmp/conv-venvs/base/bin/python")
    ap.add_argument("--scale", type=int, default=100, help="repeat the fixtures' content this many times for timing")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small, big = ff.write_fixtures(tmp / "small"), ff.write_fixtures(tmp / "big", args.scale)
        files = [small[f] for f in FORMATS] + [big[f] for f in FORMATS]
        base_mb = _site_mb(args.base_python)
        here = _project_without_converter()
        result: dict = {"scale": args.scale, "mb": {f: round(big[f].stat().st_size / 2**20, 3) for f in FORMATS}}
        for name, python in (("markitdown", args.markitdown_python), ("docling", args.docling_python)):
            r = _run(python, name, files)
            row = {"import_s": round(r["import_s"], 2), "install_mb": round(_site_mb(python) - base_mb),
                   "adds_to_this_venv_mb": round(sum(s for d, s in r["dists"].items() if d not in here) / 2**20),
                   "formats": {}}
            for f in FORMATS:
                s, b = r["files"][str(small[f])], r["files"][str(big[f])]
                row["formats"][f] = {
                    "fidelity": round(fidelity(s["markdown"], HEADINGS[f]), 2) if "markdown" in s else None,
                    "s_per_mb": round(b["seconds"] / (big[f].stat().st_size / 2**20), 3) if "seconds" in b else None,
                    **({"error": b.get("error") or s.get("error")} if "error" in b or "error" in s else {})}
            result[name] = row
        own = _own(small, big, tmp)
        result["this project (bot.knowledge.convert)"] = {
            "import_s": round(own["import_s"], 2),
            "formats": {f: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
                        for f, row in own["formats"].items()}}
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(f"fixtures scaled x{args.scale}: " + ", ".join(f"{f} {mb} MB" for f, mb in result["mb"].items()))
    for name in ("markitdown", "docling"):
        r = result[name]
        print(f"\n{name}: import {r['import_s']} s; install {r['install_mb']} MB (empty venv = 0), "
              f"{r['adds_to_this_venv_mb']} MB beyond this project's other dependencies")
        print(f"  {'format':6} {'s/MB':>8} {'headings':>9}")
        for f, row in r["formats"].items():
            s = "failed" if row["s_per_mb"] is None else f"{row['s_per_mb']:.3f}"
            h = "-" if row["fidelity"] is None else f"{row['fidelity']:.0%}"
            print(f"  {f:6} {s:>8} {h:>9}" + (f"   ({row['error']})" if row.get("error") else ""))
    r = result["this project (bot.knowledge.convert)"]
    print(f"\nthis project (markitdown, PDF pages by pdfminer; zip walked): converter import {r['import_s']} s")
    print(f"  {'format':6} {'MB':>6} {'convert s/MB':>13} {'index s/MB':>11} {'headings':>9} {'passages':>9}")
    for f, row in r["formats"].items():
        h = "-" if row["fidelity"] is None else f"{row['fidelity']:.0%}"
        print(f"  {f:6} {row['mb']:>6.2f} {row['convert_s_per_mb']:>13.3f} {row['index_s_per_mb']:>11.2f} {h:>9} "
              f"{row['passages']:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
