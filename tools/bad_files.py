"""The bad-file corpus and the message each file gets: `python -m tools.bad_files [DIR]`.

Writes tools/format_fixtures.write_bad_files' corpus (an encrypted, a corrupt and a scanned PDF,
a file over the size limit, an unsupported type, a zip bomb, a zip with traversal paths, and one
good file) to DIR (a temporary folder by default), indexes it into a fresh database with the
size limit (BOT_MAX_FILE_MB) at 1 MB, and prints each file with its status and message as the
README's table.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tools.format_fixtures import write_bad_files


def main(argv: list[str] | None = None) -> int:
    from bot import store
    from bot.knowledge import ingest

    argv = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(argv[0]) if argv else Path(tmp) / "bad"
        files = write_bad_files(folder, max_file_mb=1)
        db = store.connect(Path(tmp) / "bad.db")
        reports = ingest.index_paths(db, sorted(files.values()), folder, progress=False, max_file_mb=1)
        print("| file | size | status | message |\n|---|---|---|---|")
        for r in reports:
            size = (folder / r.doc).stat().st_size
            shown = f"{size / 2**20:.1f} MB" if size > 2**20 else f"{size / 1024:.1f} KB"
            print(f"| `{r.doc}` | {shown} | {r.status} | {r.message or f'{r.chunks} passage(s)'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
