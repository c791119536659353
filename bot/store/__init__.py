"""All SQL (moving into one module per table group; see bot/store/migrations.py for now)."""
from bot.store.migrations import *  # noqa: F401,F403
