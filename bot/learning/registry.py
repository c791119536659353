"""Adapter versions on disk, the pointer to the one in service, promotion and rollback.

A version is an immutable folder `adapters/<version>/` with peft's files and,
once the training loop writes it, a `card.json` (parent, data hash, metrics,
verdict). Promotion and rollback only move the pointer and record the move,
so the serving process picks the change up on its next request and rollback
knows where to return. The database's promotions log is the truth (every
replica reads the same, and promote/rollback work out the previous version
from it); the file `adapters/current` (replaced atomically) is still written
after each move for the in-process model, which follows it.
"""
from __future__ import annotations

import json
from pathlib import Path

from bot import store
from bot.llm.hotswap import AdapterError, check_folder, check_name, read_pointer, set_pointer


class RegistryError(Exception):
    """A promotion or rollback that cannot be done; the message says why."""


def versions(adapters_dir: Path) -> list[str]:
    root = Path(adapters_dir)
    if not root.is_dir():
        return []
    # `.tmp-vNNNN` is a run still being written (or a crashed one): never a version.
    return sorted(p.name for p in root.iterdir()
                  if not p.name.startswith(".") and p.is_dir() and (p / "adapter_config.json").is_file())


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def weights(folder: Path) -> list[Path]:
    """The weight files in a version folder ([] once forgetting deleted them)."""
    return [p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]


def card(adapters_dir: Path, version: str) -> dict:
    try:
        return json.loads((Path(adapters_dir) / version / "card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def listing(adapters_dir: Path) -> dict:
    """`{"in_service": V or None, "versions": [{"version", "verdict", "metrics", "forgotten", "weights"}]}`
    (the `adapters list --json` shape). `forgotten`: the card's marks, [] for a clean version;
    `weights`: False once they were deleted for it."""
    out = []
    for v in versions(adapters_dir):
        c = card(adapters_dir, v)
        out.append({"version": v, "verdict": c.get("verdict"), "metrics": c.get("metrics", {}),
                    "forgotten": c.get("forgotten", []), "weights": bool(weights(Path(adapters_dir) / v))})
    return {"in_service": read_pointer(Path(adapters_dir)) if Path(adapters_dir).is_dir() else None, "versions": out}


def in_service(db, adapters_dir: Path) -> str | None:
    """The version in service as the database records it (every replica reads the same), else the file
    pointer of a folder from before the database held it."""
    recorded, version = store.in_service(db)
    return version if recorded else read_pointer(Path(adapters_dir))


def adopt_file_pointer(db, adapters_dir: Path) -> str | None:
    """At start: a folder whose pointer file names a version that no promotion record knows (data from
    before the pointer moved into the database) has it recorded, once. Returns the version in service."""
    recorded, version = store.in_service(db)
    if recorded:
        return version
    version = read_pointer(Path(adapters_dir)) if Path(adapters_dir).is_dir() else None
    if version is not None:
        store.record_promotion(db, version, None, "adopt", "migration: adapters/current")
    return version


def serving_base(model: str, cache_dir: Path) -> tuple | None:
    """The base model the serving process loads (preset `model`, BOT_MODEL): (id, revision, architecture);
    None if it cannot be told."""
    from bot.llm import generation

    try:
        return generation.identity(model, cache_dir)
    except Exception:  # a bad setting is the serving process's to report; the folder checks still run
        return None


def promote(db, adapters_dir: Path, version: str, by: str, *, base: tuple | None) -> str:
    """Put `version` in service. `base`: the serving base model (`serving_base`), which the version must
    have been trained on; None when it cannot be told (the folder's own checks still run)."""
    try:
        check_name(version)
        check_folder(Path(adapters_dir) / version, base)
    except AdapterError as e:
        raise RegistryError(f"cannot promote {version!r}: {e}") from None
    # The database, not the file: a file moved by hand (or left by a replica on another host) is not the truth.
    previous = adopt_file_pointer(db, adapters_dir)
    if previous == version:
        raise RegistryError(f"{version} is already in service")
    # Recorded first: a process killed between the two still leaves `rollback` a way back (a record
    # of a move that never happened is harmless: rollback only reads the records of the version in service).
    try:
        store.record_promotion(db, version, previous, "promote", by, check=True)
    except store.ServiceMoved as e:
        raise RegistryError(f"cannot promote {version}: {e}; look at `adapters list` and try again") from None
    set_pointer(Path(adapters_dir), version)
    return version


def rollback(db, adapters_dir: Path, by: str, *, base: tuple | None) -> str | None:
    """Point back at the version served before the current one (checked against `base`, as `promote`)."""
    current = adopt_file_pointer(db, adapters_dir)
    history = [p for p in store.promotions(db) if p["version"] == current and p["action"] == "promote"]
    if not history:
        raise RegistryError("nothing to roll back to: the version in service was not promoted here")
    previous = history[-1]["previous"]
    if previous is not None:
        try:
            check_folder(Path(adapters_dir) / previous, base)
        except AdapterError as e:
            raise RegistryError(f"cannot roll back to {previous}: {e}") from None
    try:  # recorded first, as `promote` does
        store.record_promotion(db, previous, current, "rollback", by, check=True)
    except store.ServiceMoved as e:
        raise RegistryError(f"cannot roll back: {e}; look at `adapters list` and try again") from None
    set_pointer(Path(adapters_dir), previous)
    return previous
