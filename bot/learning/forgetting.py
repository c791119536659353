"""Forgetting reaches every copy: the database, the files training jobs wrote, and the weights.

`forget` (CLI and `/forget me`) and the retention purge delete rows from the
database; training jobs had already copied those rows into version folders
(train/heldout/negatives.jsonl, evaluation.json) and into the weights. So a
deletion goes in three steps:

1. `collect_person` / `collect_before`, before the rows go: the answer and
   correction ids, and the texts those rows held (raw and as `privacy.scrub`
   wrote them into a snapshot), kept in memory only.
2. `erase`: every version folder is rewritten without them (atomically, temp
   file + os.replace): JSONL rows whose `answer_id`/`correction_id` match are
   dropped (a training set must not keep a placeholder it could learn); JSON
   files with no ids (evaluation.json) have the matching rows' question,
   reference and answer replaced by `<FORGOTTEN>`, scores kept. A version
   whose train.jsonl lost rows was trained on the data: its card gets a
   `forgotten` entry (when, why, how many rows; never text or who), and so does
   every version trained from it (its weights started from the marked ones).
   Marked weights out of service are deleted at once; when the one in service
   is marked, a retrain is queued whatever BOT_RETRAIN_MIN_FEEDBACK says.
3. `after_job` (jobs.execute calls it after every job): once a clean version is
   in service, the marked versions' weights are deleted (card, config and a
   note stay, so the history reads). When nothing is left to train on, the
   pointer goes back to the newest clean ancestor, or the base model.

A job training while the forget ran built its snapshot before and writes its
version after: the deleted ids (ids only, never text) are kept for a few days
(store `forgotten`), and `after_job` cleans and marks that version by them.
Each step writes an audit row with ids and counts.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bot.llm import hotswap
from bot.learning import registry
from bot.learning.registry import weights
from bot import store
from bot.learning.privacy import scrub
from bot.learning.snapshot import clean

# Queues a retrain job for `by` ("platform:user") and returns its id. The caller hands it in
# (learning.jobs.retrainer): jobs runs `after_job` after every job, so importing jobs here would be a cycle.
Retrain = Callable[[str], int]

log = logging.getLogger(__name__)
REDACTED = "<FORGOTTEN>"
NOTE = "WEIGHTS-DELETED.txt"
# How long forgotten ids are kept for a job that was training when they were deleted: past any job's run.
KEEP_IDS_S = 3 * 86400.0
TEXT_KEYS = ("question", "reference", "answer", "target", "rejected")


@dataclass
class Trace:
    """What is being deleted, as ids and as the exact texts files may hold; memory only, never written."""

    answer_ids: set[str] = field(default_factory=set)
    correction_ids: set[int] = field(default_factory=set)
    # Texts as read; their scrubbed forms are made only when a file is searched (`texts`): scrub takes
    # about 8 ms a text, hours for a purge of hundreds of thousands of answers with no folder to search.
    raw: list[str] = field(default_factory=list)
    _texts: set[str] = field(default_factory=set)

    def add_text(self, *texts: str | None) -> None:
        self.raw.extend(t for t in texts if t and t.strip())

    @property
    def texts(self) -> set[str]:
        while self.raw:
            t = self.raw.pop()
            # As written, as scrubbed, and as a snapshot writes it (scrubbed, control tokens defused).
            self._texts.update({t, t.strip(), scrub(t), scrub(t.strip()), clean(t), clean(t.strip())})
        return self._texts

    def __bool__(self) -> bool:
        return bool(self.answer_ids or self.correction_ids)


def _trace(db, answers_sql: str, answers_args: list, corrections_sql: str, corrections_args: list) -> Trace:
    trace = Trace()
    for row in db.execute(answers_sql, answers_args).fetchall():
        trace.answer_ids.add(row[0])
        trace.add_text(row[1], row[2])
    for row in db.execute(corrections_sql, corrections_args).fetchall():
        trace.correction_ids.add(row[0])
        trace.add_text(row[1])
    return trace


def collect_person(db, platform: str, user: str) -> Trace:
    """What `store.forget_user` is about to delete: their questions (with the answers they got) and
    every correction by them or on their questions. Their votes on other people's answers carry no
    text of theirs and are not traced."""
    mine = "select id from answers where platform = ? and user = ?"
    return _trace(db, "select id, question, answer from answers where platform = ? and user = ?", [platform, user],
                  f"select id, text from corrections where (platform = ? and user = ?) or answer_id in ({mine})",
                  [platform, user, platform, user])


def collect_before(db, cutoff: float) -> Trace:
    """What `store.purge_before` is about to delete: answers older than `cutoff`, with the corrections on them."""
    return _trace(db, "select id, question, answer from answers where created_at < ?", [cutoff],
                  "select id, text from corrections where answer_id in (select id from answers where created_at < ?)",
                  [cutoff])


# -- files ---------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _matches(row: dict, trace: Trace) -> bool:
    return (row.get("answer_id") in trace.answer_ids or row.get("correction_id") in trace.correction_ids
            or any(row.get(k) in trace.texts for k in TEXT_KEYS if isinstance(row.get(k), str)))


def _redact_jsonl(path: Path, trace: Trace) -> int:
    """Drop the rows of `trace` from a JSONL file; their texts join the trace (evaluation.json has no ids)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    kept, gone = [], 0
    for line in lines:
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            row = None
        if isinstance(row, dict) and _matches(row, trace):
            gone += 1
            trace.add_text(*(row.get(k) for k in TEXT_KEYS if isinstance(row.get(k), str)))
        elif line.strip():
            kept.append(line)
    if gone:
        _write_atomic(path, "".join(x + "\n" for x in kept))
    return gone


def _redact_value(value, trace: Trace) -> tuple[object, int]:
    if isinstance(value, str):
        return (REDACTED, 1) if value in trace.texts else (value, 0)
    if isinstance(value, list):
        out, n = [], 0
        for v in value:
            v, k = _redact_value(v, trace)
            out.append(v)
            n += k
        return out, n
    if isinstance(value, dict):
        # An evaluation row: its answer is the model's reply to the forgotten question, so it goes with it.
        if _matches(value, trace):
            value = {k: (REDACTED if k in TEXT_KEYS and isinstance(v, str) else v) for k, v in value.items()}
            n = 1
        else:
            n = 0
        out = {}
        for k, v in value.items():
            out[k], m = _redact_value(v, trace)
            n += m
        return out, n
    return value, 0


def _redact_json(path: Path, trace: Trace) -> int:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    data, n = _redact_value(data, trace)
    if n:
        _write_atomic(path, json.dumps(data, ensure_ascii=False, indent=1))
    return n


def version_dirs(adapters_dir: Path) -> list[Path]:
    root = Path(adapters_dir)
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def card(folder: Path) -> dict:
    return registry.card(folder.parent, folder.name)


def clean_ancestor(adapters_dir: Path, version: str | None) -> str | None:
    """The newest version in `version`'s parent chain that is not marked and still has weights; None: the base."""
    seen = set()
    while version and version not in seen:
        seen.add(version)
        folder = Path(adapters_dir) / version
        c = card(folder)
        if folder.is_dir() and not c.get("forgotten") and weights(folder):
            return version
        version = c.get("parent")
    return None


def _redact(dirs: list[Path], trace: Trace) -> tuple[int, int, dict[str, int]]:
    """(files rewritten, rows redacted, {version: train.jsonl rows dropped}) over these version folders."""
    changed: set[Path] = set()
    rows, trained = 0, {}
    for folder in dirs:  # first the files with ids: their rows' texts find the rows of the files without
        for f in sorted(folder.glob("*.jsonl")):
            if n := _redact_jsonl(f, trace):
                changed.add(f)
                rows += n
                if f.name == "train.jsonl":
                    trained[folder.name] = n
    for folder in dirs:
        for f in sorted(folder.glob("*.json")):
            if n := _redact_json(f, trace):
                changed.add(f)
                rows += n
    return len(changed), rows, trained


def _update_card(folder: Path, **changes) -> None:
    c = card(folder)
    for key, value in changes.items():
        if key == "forgotten":
            c["forgotten"] = c.get("forgotten", []) + [value]
        else:
            c[key] = value
    _write_atomic(folder / "card.json", json.dumps(c, ensure_ascii=False, indent=1))


def _delete_weights(folder: Path, why: str) -> bool:
    files = weights(folder)
    for f in files:
        f.unlink(missing_ok=True)
    # The card and adapter_config.json stay (no personal text, and the history must still read);
    # without weights, promote/rollback/load refuse the folder with "no weights".
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    (folder / NOTE).write_text(f"The weights of {folder.name} were deleted {when} UTC: it was trained on data "
                               f"that was forgotten ({why}). See card.json.\n", encoding="utf-8")
    _update_card(folder, weights_deleted={"at": time.time(), "why": why, "files": [f.name for f in files]})
    return bool(files)


def _drop_weights(dirs: list[Path], every: set[str], current: str | None, why: str) -> list[str]:
    """Delete the weights of the marked versions out of service (none serves, none is trained from); their names."""
    return [d.name for d in dirs if d.name in every and d.name != current and weights(d) and _delete_weights(d, why)]


def marked(adapters_dir: Path) -> set[str]:
    return {d.name for d in version_dirs(adapters_dir) if card(d).get("forgotten")}


def erase(db, adapters_dir: Path, trace: Trace, delete: Callable[[], dict], *, why: str, by: tuple[str, str],
          target: str, retrain: Retrain) -> dict:
    """Rewrite every version folder without `trace`, then `delete` the database rows, mark the versions
    trained on them, delete marked weights out of service, and queue a retrain when the one in service
    is marked: `delete`'s counts plus `{"adapters": {...}}`, each step audited.

    Files first: a crash in between leaves the rows in the database and the forget can be run again,
    where the other order would lose the texts that find the rows in the files. The retrain is queued
    last: its snapshot must not see the rows."""
    out = {"files": 0, "rows": 0, "marked": [], "weights_deleted": [], "retrain_job": None}

    def delete_rows() -> dict:
        counts = delete()
        # Ids only: a job already past its snapshot finds these rows in its version by them (after_job).
        store.record_forgotten(db, trace.answer_ids, trace.correction_ids, why)
        return counts

    if adapters_dir is None:  # no adapter folder here (a test's commands, a database-only purge)
        return {**delete_rows(), "adapters": out}
    adapters_dir = Path(adapters_dir)
    dirs = version_dirs(adapters_dir)
    if not trace or not dirs:
        return {**delete_rows(), "adapters": out}
    out["files"], out["rows"], trained = _redact(dirs, trace)
    counts = delete_rows()
    now = time.time()
    for folder in dirs:  # oldest first: a parent is marked before the versions trained from it
        parent = card(folder).get("parent")
        if folder.name in trained:
            _update_card(folder, forgotten={"at": now, "why": why, "rows": trained[folder.name]})
        elif parent in trained:
            trained[folder.name] = 0
            _update_card(folder, forgotten={"at": now, "why": why, "rows": 0, "inherited_from": parent})
    out["marked"] = sorted(trained)
    store.audit(db, *by, "forget redact", target, detail=f"files={out['files']} rows={out['rows']}")
    if out["marked"]:
        store.audit(db, *by, "forget mark", target, detail="versions=" + ",".join(out["marked"]))
    current = hotswap.read_pointer(adapters_dir)
    every = marked(adapters_dir)
    # Out of service, a marked version serves nobody and a retrain never starts from it: its weights go now.
    out["weights_deleted"] = _drop_weights(dirs, every, current, why)
    if out["weights_deleted"]:
        store.audit(db, *by, "forget weights", target, detail="versions=" + ",".join(out["weights_deleted"]))
    if current in every:
        out["retrain_job"] = queue_retrain(db, by, target, retrain)
    return {**counts, "adapters": out}


def forget_person(db, adapters_dir: Path, platform: str, user: str, *, by: tuple[str, str],
                  retrain: Retrain, delivery: str | None = None) -> dict:
    """`forget`: a person's rows out of the database and of every version folder, opted out of training:
    `{"answers", "votes", "corrections", "adapters": {"files", "rows", "marked", "weights_deleted", "retrain_job"}}`."""
    trace = collect_person(db, platform, user)

    def delete() -> dict:
        # One commit: the rows, the opt-out and the chat delivery's key (acknowledged means stored).
        return store.forget_user(db, platform, user, delivery=delivery, opt_out=True)

    return erase(db, adapters_dir, trace, delete, why="forget", by=by, target=f"{platform}:{user}", retrain=retrain)


def queue_retrain(db, by: tuple[str, str], target: str, retrain: Retrain) -> int:
    """A retrain without the forgotten data, whatever BOT_RETRAIN_MIN_FEEDBACK says; a job still queued
    builds its snapshot when it starts, after the deletion, so it serves and no second one is queued."""
    waiting = store.list_jobs(db, limit=1, states=("queued",))
    job_id = waiting[0]["id"] if waiting else retrain(f"{by[0]}:{by[1]}")
    store.audit(db, *by, "forget retrain", f"#{job_id}",
                detail=f"for {target}" + (" (already queued)" if waiting else ""))
    return job_id


def after_job(db, adapters_dir: Path, result: dict, retrain: Retrain, by: str = "forget") -> dict:
    """Called after every training job: once the version in service is clean, the marked weights go.

    A marked version in service is replaced by its newest clean ancestor (or the base model) when nothing
    is left to train on, or when the clean candidate was rejected: that candidate was gated against the
    same ancestor (retrain starts and judges from it), so the ancestor is the best clean version there
    is, and serving what a forgotten person taught is worse than serving less. A job that skipped with data
    left changes nothing (a failed or cancelled one does not get here): the marked version serves, marked,
    until a job ends cleanly."""
    adapters_dir = Path(adapters_dir)
    who = ("system", by)
    out = {"fallback": None, "weights_deleted": [], "late": None}
    version = result.get("version")
    if version and (adapters_dir / version).is_dir():
        answer_ids, correction_ids = store.forgotten_ids(db, KEEP_IDS_S)
        if answer_ids or correction_ids:
            out["late"] = _late(db, adapters_dir / version, Trace(answer_ids, correction_ids), who, retrain)
    every = marked(adapters_dir)
    if not every:
        return out
    current = hotswap.read_pointer(adapters_dir)
    verdict = result.get("verdict")
    empty = verdict == "skipped" and not (result.get("counts") or {}).get("train")
    if current in every and (empty or verdict == "rejected"):
        fallback = clean_ancestor(adapters_dir, current)
        why = "nothing left to train on" if empty else f"the clean candidate {version or ''} was rejected against it"
        store.record_promotion(db, fallback, current, "forget", by)
        hotswap.set_pointer(adapters_dir, fallback)
        store.audit(db, *who, "forget fallback", fallback or "base", detail=f"{current} -> {fallback or 'base'}: {why}")
        out["fallback"], current = fallback or "base", fallback
    elif current in every:
        store.audit(db, *who, "forget retrain", f"#{result.get('job')}", result="error: not clean yet",
                    detail=f"{result.get('verdict')} {result.get('version') or ''}: {current} stays in service, marked")
        return out
    out["weights_deleted"] = _drop_weights(version_dirs(adapters_dir), every, current, "forget")
    if out["weights_deleted"]:
        store.audit(db, *who, "forget weights", current or "base",
                    detail=f"job #{result.get('job')} versions=" + ",".join(out["weights_deleted"]))
    return out


def _late(db, folder: Path, trace: Trace, who: tuple[str, str], retrain: Retrain) -> dict | None:
    """A version whose job built its snapshot before a forget or purge ran: cleaned by the ids kept."""
    files, rows, trained = _redact([folder], trace)
    if not files:
        return None
    store.audit(db, *who, "forget redact", folder.name, detail=f"files={files} rows={rows} (snapshot built before)")
    if trained:
        _update_card(folder, forgotten={"at": time.time(), "why": "forgotten while it trained",
                                        "rows": trained[folder.name]})
        store.audit(db, *who, "forget mark", folder.name, detail=f"versions={folder.name}")
        if hotswap.read_pointer(folder.parent) == folder.name:
            queue_retrain(db, who, folder.name, retrain)
    return {"files": files, "rows": rows, "marked": sorted(trained)}


def restarting(adapters_dir: Path) -> bool:
    """Whether the version in service is marked, so the next training run starts from a clean ancestor."""
    current = hotswap.read_pointer(Path(adapters_dir))
    return bool(current) and bool(card(Path(adapters_dir) / current).get("forgotten"))
