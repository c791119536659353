"""The composition root: where the store, the searcher, the answerer and the command layer are built.

Every entry point (the CLI, `serve`, the tools) loads the `Settings` once and
builds its parts here, handing them in as each builder's first argument, instead of borrowing another entry point's private helpers, so
no entry point imports another. It also adapts the store to the
small protocols of the layers that must not import it (the outbox poster in
bot.chat). The heavy modules (the answering pipeline,
retrieval, the model) are imported inside each builder: importing this
module, as bot.cli does, loads neither torch nor a chat SDK.
"""
from __future__ import annotations

import sys
from pathlib import Path

from bot import config, store


def connect_db(settings: config.Settings):
    """The database at BOT_DB."""
    return store.connect(settings.db)


def build_searcher(settings: config.Settings, db, embedder: str | None = None):
    """The serving index, indexing the bundled knowledge base first on a fresh database."""
    from bot.knowledge import ingest, retrieval

    if not store.documents(db):
        kdir = settings.knowledge_dir
        print(f"(the index is empty: indexing {kdir} first)", file=sys.stderr)
        ingest.index_paths(db, [kdir], kdir, settings.chunk_chars, max_file_mb=settings.max_file_mb)
    return retrieval.Searcher(db, embedder or settings.embedder)


def build_answerer(settings: config.Settings, db, model: str | None = None):
    """The answering pipeline with the model loaded lazily, on first question."""
    from bot.answering import pipeline as answering

    searcher = build_searcher(settings, db)
    preset_name = model or settings.model
    if preset_name.lower() == "none":
        return answering.Answerer(db, searcher, None)
    if settings.llm_url.lower() not in ("", "none"):
        return build_remote_answerer(settings, db, searcher, preset_name)

    g, problem = _preset_generation(preset_name)

    def load():
        if problem:  # a bad preset: the answerer gives it as the reason for its fallback
            raise RuntimeError(problem)
        from bot.llm import generation

        # This process only serves: keep bitsandbytes' fast CPU inference layout.
        gen = generation.load(preset_name, cache_dir=settings.cache_dir,
                              adapters_dir=settings.adapters_dir, trainable=False)
        return generation.ModelWorker(gen)

    return answering.Answerer(db, searcher, load, k=settings.search_k,
                              timeout_s=settings.generation_timeout, **_budgets(g))


def _preset_generation(preset_name: str):
    """(the preset's generation settings, None) or (None, why it cannot be loaded)."""
    try:
        from bot.llm import presets

        return presets.load(preset_name).generation, None
    except Exception as e:
        return None, str(e)


def _budgets(g) -> dict:
    """The answerer's prompt and answer budgets from the preset; its own defaults without one."""
    return {"context_budget": g.context_budget_tokens, "max_new_tokens": g.max_new_tokens} if g else {}


def build_remote_answerer(settings: config.Settings, db, searcher, preset_name: str):
    """The answering pipeline over the OpenAI-compatible server at BOT_LLM_URL: no torch, no model here.

    The version in service is read from the database on every question (every replica follows a
    promotion at once); a pointer file from before that is recorded there first."""
    from bot.answering import pipeline as answering
    from bot.learning import registry

    registry.adopt_file_pointer(db, settings.adapters_dir)
    g, _ = _preset_generation(preset_name)  # no preset: the server's defaults and the answerer's budgets

    def load():
        from bot.llm import generation, remote

        source = settings.llm_tokenizer if settings.llm_tokenizer not in ("", "model") else (generation.identity(preset_name, settings.cache_dir) or [None])[0]
        if not source:
            raise remote.EngineUnavailable(f"no tokenizer to count tokens with: set BOT_LLM_TOKENIZER "
                                           f"(the preset {preset_name!r} does not name one that is here)")
        extra = {"temperature": g.temperature, "top_p": g.top_p, "max_new_tokens": g.max_new_tokens} if g else {}
        return remote.RemoteGenerator(
            settings.llm_url, tokenizer=remote.load_tokenizer(source),
            pointer=lambda: registry.in_service(db, settings.adapters_dir),
            server_adapters_dir=None if settings.llm_adapters_dir in ("", "resolver") else settings.llm_adapters_dir,
            total_timeout_s=settings.generation_timeout, **extra)

    return answering.Answerer(db, searcher, load, k=settings.search_k,
                              timeout_s=settings.generation_timeout, **_budgets(g))


def reindexer(settings: config.Settings, db, searcher):
    """`/kb reindex`: index BOT_KNOWLEDGE_DIR again and serve the new index at once; the text it says."""
    from bot.knowledge import ingest

    kdir = settings.knowledge_dir

    def reindex() -> str:
        reports = ingest.index_paths(db, [kdir], kdir, settings.chunk_chars, progress=False, max_file_mb=settings.max_file_mb)
        if any(r.status in ("indexed", "removed") for r in reports):
            store.bump_index_generation(db)  # every other replica's searcher reloads on its next question
        searcher.reload()  # serve the new index at once
        counts = {s: sum(r.status == s for r in reports) for s in ("indexed", "removed", "skipped", "error")}
        bad = [f"{r.doc}: {r.message}" for r in reports if r.status in ("skipped", "error")]
        text = "Re-indexed: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) if any(counts.values()) \
            else "Re-indexed: nothing changed."
        return text + ("\n" + "\n".join(bad) if bad else "")

    return reindex


def build_commands(settings: config.Settings, db=None, answerer=None):
    """The command layer wired to the database, the answerer and the settings (what `serve` runs)."""
    from bot import commands

    db = db or connect_db(settings)
    answerer = answerer or build_answerer(settings, db)
    return commands.Commands(
        db, answerer, reindex=reindexer(settings, db, answerer.searcher), adapters_dir=settings.adapters_dir,
        admins={"slack": list(settings.slack_admins), "discord": list(settings.discord_admins)},
        settings=settings)


def operator_commands(settings: config.Settings, db=None, *, enqueue: bool = True):
    """The command layer for the CLI's operator commands (review, forget, train, jobs, adapters): the
    same audit trail and messages as chat, and no answerer, since none of them asks the model."""
    from bot import commands

    return commands.Commands(db if db is not None else connect_db(settings), None,
                             adapters_dir=settings.adapters_dir, enqueue=enqueue, settings=settings)


class StoreOutbox:
    """The store's outbox table as the poster's `bot.chat.outbox.Outbox`: chat never imports the store,
    so the composition root hands the poster this adapter over the serving process's connection."""

    def __init__(self, db):
        self.db = db

    def claim(self, platform: str, claimer: str, limit: int, lease_s: float) -> list:
        return store.claim_outbox(self.db, platform, claimer, limit, lease_s)

    def sent(self, ids: list[int]) -> None:
        store.mark_outbox_sent(self.db, ids)

    def dropped(self, outbox_id: int, why: str) -> None:
        store.mark_outbox_dropped(self.db, outbox_id, why)


def build_tiny_model(cache_dir: Path, docs_dir: Path, *, force: bool = False, log=print) -> Path:
    """The offline tiny model (bot.llm.tinymodel) pre-trained on the documents under `docs_dir`.

    llm and knowledge never import each other: the documents are read here, by
    knowledge's reader (chat tokens stripped), and handed to the build, which
    reads them only when it has to build."""
    from bot.knowledge import ingest
    from bot.llm import tinymodel

    return tinymodel.build(cache_dir, lambda: ingest.training_texts(Path(docs_dir)), force=force, log=log)
