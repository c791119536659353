"""Every setting, declared once (a field of `Settings`) with its default and help text.

`Settings.load()` builds one frozen object at an entry point; everything else
is handed what it needs. Values come from the environment, then from an optional `.env` file in the
working directory, then from the default here. Secrets (chat tokens) are read
only from the environment or `.env`, never written anywhere by the bot.
Relative paths in defaults resolve against the checkout, so `make run` works
from anywhere with nothing set; relative paths given by the user resolve
against the current directory, as a user would expect.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


PRESET = "preset"  # the default of a setting that overrides a model preset's value only when set


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str
    kind: str = "str"  # str | path | db (a path, or a postgresql:// URL) | int | float | list | secret


class SettingError(ValueError):
    """A setting's value cannot be used (e.g. `BOT_QUEUE_MAX=lots`); the entry point reports it and exits."""


def _setting(name: str, default: str, help: str, kind: str = "str"):
    # The dataclass field is the one declaration of a setting: its environment name, default and help
    # text ride in the metadata, so `settings`, the README check and the loader all read the same list.
    # Secrets stay out of repr(), so a logged Settings never shows a token.
    return field(metadata={"setting": Setting(name, default, help, kind)}, repr=kind != "secret")


@dataclass(frozen=True)
class Settings:
    """Every setting, typed. Built once by `Settings.load()` at an entry point (the CLI, `serve`, the
    worker's task) and passed in; library code never reads the environment itself."""

    db: Path | str = _setting('BOT_DB', "data/bot.db", "SQLite database file (answers, feedback, index, jobs), or a PostgreSQL URL `postgresql://user@host:port/name`.", 'db')
    knowledge_dir: Path = _setting('BOT_KNOWLEDGE_DIR', "knowledge/docs", "Folder of Markdown/text documents that `index` reads by default.", 'path')
    adapters_dir: Path = _setting('BOT_ADAPTERS_DIR', "adapters", "Folder holding trained LoRA adapter versions and the in-service pointer.", 'path')
    embedder: str = _setting('BOT_EMBEDDER', "none", "Dense embedder fused with the lexical index: `none`, `minilm` (English all-MiniLM-L6-v2 shipped "
        "in a package, offline), or any sentence-transformers model id or path (e.g. `BAAI/bge-m3` on a GPU host).")
    model: str = _setting('BOT_MODEL', "qwen2.5-0.5b-instruct", "Model preset (a file in models/): `qwen2.5-0.5b-instruct`, `qwen2.5-7b-instruct`, `tiny`, or `none` for retrieval-only answers.")
    cache_dir: Path = _setting('BOT_CACHE_DIR', ".cache/models", "Where offline-built models (the `tiny` preset) are kept; tests and demos share it.", 'path')
    generation_timeout: float = _setting('BOT_GENERATION_TIMEOUT', "300", "Seconds an answer may take before the user gets the retrieval-only answer instead.", 'float')
    rate_user: str = _setting('BOT_RATE_USER', "10/60", "Questions one person may ask: COUNT/SECONDS (10/60 is ten in any 60 s), or `off`. Past it they are told \"busy, try again in N s\".")
    rate_channel: str = _setting('BOT_RATE_CHANNEL', "30/60", "Questions one channel (or DM) may ask: COUNT/SECONDS, or `off`. Past it people there are told \"busy, try again in N s\".")
    queue_max: int = _setting('BOT_QUEUE_MAX', "32", "Most questions waiting for (or being answered by) the model at once; the next is told \"busy, try again in N s\" instead of timing out.", 'int')
    slack_admins: tuple[str, ...] = _setting('BOT_SLACK_ADMINS', "", "Comma-separated Slack user ids allowed to run admin commands (/train, /adapter promote|rollback, /kb reindex).", 'list')
    discord_admins: tuple[str, ...] = _setting('BOT_DISCORD_ADMINS', "", "Comma-separated Discord user or role ids allowed to run admin commands.", 'list')
    port: int = _setting('PORT', "3000", "HTTP port of `serve` (Slack events at /slack/events, health at /healthz).", 'int')
    slack_bot_token: str = _setting('SLACK_BOT_TOKEN', "", "Slack bot token (xoxb-...). Slack runs only when it is set.", 'secret')
    slack_signing_secret: str = _setting('SLACK_SIGNING_SECRET', "", "Slack signing secret: every HTTP request's signature is checked with it.", 'secret')
    slack_app_token: str = _setting('SLACK_APP_TOKEN', "", "Slack app-level token (xapp-...): when set, `serve` uses Socket Mode instead of HTTP.", 'secret')
    slack_api_url: str = _setting('SLACK_API_URL', "https://slack.com/api/", "Slack Web API base URL (tests point it at a local recorder).")
    discord_token: str = _setting('DISCORD_TOKEN', "", "Discord bot token. The Discord client runs only when it is set.", 'secret')
    trusted_reviewers: tuple[str, ...] = _setting('BOT_TRUSTED_REVIEWERS', "", "Comma-separated `platform:user` ids (e.g. `slack:U123,discord:456`) whose corrections are accepted at once; others wait for an admin's review. The CLI operator is always trusted.", 'list')
    golden_set: Path = _setting('BOT_GOLDEN_SET', "knowledge/eval/golden.jsonl", "Golden question set (JSON lines with `question` and reference `answer`) that every candidate adapter must not regress on.", 'path')
    train_steps: int = _setting('BOT_TRAIN_STEPS', "0", "Exact optimizer steps per training job, overriding the preset; 0 uses the preset's recipe (`[training]` in models/<preset>.toml: steps per example within a floor and a cap, stopping early once every example is learned).", 'int')
    gate_min_gain: float | None = _setting('BOT_GATE_MIN_GAIN', PRESET, "Promotion gate: the candidate must beat the adapter in service on the corrections it learned by this much character F1, or by this many nats of per-token NLL. `preset` (or empty) uses the preset's (`[gate] min_gain` in models/<preset>.toml).", 'float')
    gate_f1_tolerance: float | None = _setting('BOT_GATE_F1_TOLERANCE', PRESET, "Promotion gate: the most character F1 a candidate may lose on the replayed examples, the held-out feedback or the golden set. `preset` (or empty) uses the preset's (`[gate] f1_tolerance`).", 'float')
    gate_nll_tolerance: float | None = _setting('BOT_GATE_NLL_TOLERANCE', PRESET, "Promotion gate: the most per-token NLL (nats) a candidate may gain on the replayed examples, the held-out feedback or the golden set. `preset` (or empty) uses the preset's (`[gate] nll_tolerance`).", 'float')
    huey_db: Path = _setting('BOT_HUEY_DB', "data/huey.db", "SQLite file of the job queue (huey), used when BOT_REDIS_URL is not set.", 'path')
    redis_url: str = _setting('BOT_REDIS_URL', "", "Redis URL for the job queue (huey's RedisHuey) instead of the SQLite file, and for the rate limits shared by every `serve` replica, e.g. redis://localhost:6379/0.", 'secret')
    retrain_cron: str = _setting('BOT_RETRAIN_CRON', "0 3 * * *", "When the worker considers a retrain: five crontab fields (minute hour day month weekday), worker's local time.")
    retrain_min_feedback: int = _setting('BOT_RETRAIN_MIN_FEEDBACK', "5", "The scheduled retrain runs only when at least this many new accepted examples (corrections, upvoted answers) exist.", 'int')
    search_k: int = _setting('BOT_SEARCH_K', "5", "How many passages a search returns by default.", 'int')
    chunk_chars: int = _setting('BOT_CHUNK_CHARS', "600", "Target passage size in characters when a section is split into passages.", 'int')
    max_file_mb: float = _setting('BOT_MAX_FILE_MB', "50", "Largest file, in MB, that `index` reads (also each file inside a zip) or `/kb add` accepts; a larger one is refused by name (in chat before it is downloaded, when the platform tells the size). A zip may expand to at most four times this.", 'float')
    log_format: str = _setting('BOT_LOG_FORMAT', "json", "Log format of `serve` and `worker`: `json` (one object per line: time, level, logger, message and extra fields, for a log collector) or `text` (for a terminal).")
    llm_url: str = _setting('BOT_LLM_URL', "none", "OpenAI-compatible server (vLLM) that generates instead of the in-process model, e.g. `http://gpu-host:8000/v1`. `none`: the model of BOT_MODEL runs in this process.")
    llm_tokenizer: str = _setting('BOT_LLM_TOKENIZER', "model", "With BOT_LLM_URL: the served model's tokenizer (a folder with tokenizer.json, or a hub id) used to count prompt tokens; `model`: BOT_MODEL's.")
    llm_adapters_dir: str = _setting('BOT_LLM_ADAPTERS_DIR', "resolver", "With BOT_LLM_URL: the adapters folder as the vLLM server sees it; a promoted version is then loaded through its runtime API (/v1/load_lora_adapter). `resolver`: the server's filesystem resolver loads versions by name.")
    retention_days: int = _setting('BOT_RETENTION_DAYS', "180", "Days questions, answers and the votes and corrections on them are kept; the worker purges older ones daily (04:30) and `purge` does it now. 180 keeps half a year of feedback for retraining while not holding what people asked for ever; 0 keeps everything.", 'int')
    lease_ttl: float = _setting('BOT_LEASE_TTL', "30", "Seconds a heartbeat lease in the database (a running training job, the one Discord client) outlives its last renewal; the holder renews it every third of that. A job whose lease expired is recovered as failed by any worker, on any host.", 'float')
    uploads_dir: Path = _setting('BOT_UPLOADS_DIR', "data/uploads", "Where documents added from chat (`/kb add`) are kept, as they were uploaded; indexed as `uploads/NAME` (the folder's name). Keep it outside BOT_KNOWLEDGE_DIR: a re-index of that folder then neither re-reads nor removes them.", 'path')

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """The environment, then `.env` in the working directory (read once), then the defaults.

        Raises SettingError for a value of the wrong type, naming the setting."""
        env = os.environ if env is None else env
        dotenv = _dotenv()
        values = {}
        for f in fields(cls):
            s: Setting = f.metadata["setting"]
            raw = env.get(s.name)
            values[f.name] = _typed(s, dotenv.get(s.name) if raw is None else raw)
        return cls(**values)

    def value(self, name: str):
        """The value of the setting called `name` (e.g. "BOT_DB"), as `settings` prints it."""
        return getattr(self, _FIELD_BY_NAME[name])

    def replace(self, **changes) -> "Settings":
        """A copy with some fields changed (by field name): a test's or a tool's variation."""
        return dataclasses.replace(self, **changes)


SETTINGS: tuple[Setting, ...] = tuple(f.metadata["setting"] for f in fields(Settings))
_FIELD_BY_NAME = {f.metadata["setting"].name: f.name for f in fields(Settings)}


def _dotenv() -> dict[str, str]:
    path = Path(".env")
    if not path.is_file():
        return {}
    from dotenv import dotenv_values  # small, and only needed when a .env exists

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _typed(setting: Setting, raw: str | None):
    """One raw value (None: not set) as the setting's kind says."""
    name = setting.name
    if setting.kind == "db" and raw is not None and "://" in raw:
        if not raw.startswith(("postgresql://", "postgres://")):
            raise SettingError(f"setting {name}={raw!r}: a SQLite file path or a postgresql:// URL")
        return raw  # a server's URL, kept as written (a Path would fold its `//`)
    if raw is None:
        raw = setting.default
        if setting.kind in ("path", "db"):
            return ROOT / raw
    if setting.kind in ("path", "db"):
        return Path(raw).expanduser().resolve()
    if setting.kind == "list":
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    if setting.default == PRESET and raw.strip().lower() in ("", PRESET):
        return None  # the caller takes the model preset's value
    if setting.kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise SettingError(f"setting {name}={raw!r} is not an integer") from None
    if setting.kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise SettingError(f"setting {name}={raw!r} is not a number") from None
    return raw

