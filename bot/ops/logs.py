"""Logging for the long-running processes (`serve`, `worker`): JSON lines by default, plain text on request.

A log collector (Loki, CloudWatch, `jq`) reads one JSON object per line with
`time` (UTC, ISO 8601), `level`, `logger`, `message`, any fields given with
`extra=` (a job id, a count), and `exc_info` for a traceback. BOT_LOG_FORMAT=text
gives the old human lines for a terminal.

Chat text (questions, answers, corrections, job messages) never goes into a
log call: log ids, counts and states instead. The formatter cannot tell chat
text from other text, so this is a rule for every `log.*` call, not a filter.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from bot import config

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("json", "text")

# Every attribute a plain LogRecord carries; whatever else a record has came from `extra=`.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the `extra=` fields, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        # default=str: an extra field that JSON cannot hold (a Path, an exception) still logs, as text.
        return json.dumps(out, ensure_ascii=False, default=str)


def setup(fmt: str, level: int = logging.INFO, stream=None) -> logging.Handler:
    """Send every logger's records to `stream` (stderr) in `fmt` (the caller's BOT_LOG_FORMAT); the handler.

    Replaces the root logger's handlers, so calling it again (a test, a
    re-exec) never prints a line twice."""
    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise config.SettingError(f"setting BOT_LOG_FORMAT={fmt!r} is not one of: {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn from libraries: log records too, so JSON lines stay JSON
    return handler
