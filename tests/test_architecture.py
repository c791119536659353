"""The architecture's rules that import-linter cannot see: what a module pulls in when it is imported.

The import contracts themselves (layers, no cycles, chat's allowed imports,
one SDK per transport) are in pyproject.toml and run by `make test`
(`lint-imports`); the test below runs them too, so a plain `pytest` checks them.
"""
from __future__ import annotations

import json
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import bot
import bot.chat

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "peft", "bitsandbytes")
# Heavy too, and loaded only where used: document converters, the PostgreSQL driver, charts.
LAZY = (*HEAVY, "markitdown", "psycopg", "psycopg_binary", "matplotlib")


def _chat_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(bot.chat.__path__, "bot.chat."))


# The store too: a SQLite deployment need not install the PostgreSQL driver, and chat processes import the store.
@pytest.mark.parametrize("module", ["bot", "bot.cli", "bot.commands", "bot.wiring", "bot.store", *_chat_modules()])
def test_importing_the_cli_and_every_chat_module_loads_no_model_library(module):
    # A fresh interpreter: this process has long since imported torch for other tests.
    code = (f"import sys, {module}; heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({LAZY!r})); "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"import {module} loaded {out.stdout.strip()}"


def test_the_import_contracts_in_pyproject_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is a dev dependency (pyproject.toml)"
    out = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_the_architecture_figures_show_no_cycle_and_no_setting_read_by_name():
    out = subprocess.run([sys.executable, "-m", "tools.architecture", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout)
    assert figures["cycles"] == [] and figures["config_get_calls"] == 0, figures


def _bot_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(bot.__path__, "bot."))


def test_importing_every_module_loads_no_model_library():
    # "Lazily" is what import-linter cannot see: llm and learning may use torch, but only inside the
    # functions that need it. bot.llm.streaming subclasses transformers' streamer, so its class needs
    # the library at definition: it is itself imported only inside LocalGenerator's generate.
    modules = [m for m in _bot_modules() if m not in ("bot.__main__", "bot.llm.streaming")]
    # psycopg is left out here: huey's storage module imports it when it is installed.
    heavy = [m for m in LAZY if not m.startswith("psycopg")]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"importing bot's modules loaded {out.stdout.strip()}"


def _covered(module: str, sources: list[str]) -> bool:
    return any(module == s or module.startswith(s + ".") for s in sources)


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    return {c["name"]: c for c in config["contracts"]}


def test_every_module_is_under_the_import_contracts():
    # A contract names packages, so a module added later is covered only if its package is listed:
    # a new top-level module (or one beside chat's packages) would silently escape the rules.
    # `bot` and `bot.chat` themselves are only the parents of what the contracts name (their
    # __init__ imports nothing), so they are left out.
    contracts = _contracts()
    modules = [m for m in _bot_modules() if m not in ("bot", "bot.chat")]
    layers = [name.strip() for layer in contracts[next(n for n in contracts if n.startswith("Layers"))]["layers"]
              for name in layer.split("|")]
    missing = {"layers": [m for m in modules if not _covered(m, layers)]}
    for name, allowed in (("Only chat.slack imports the Slack SDKs", ["bot.chat.slack"]),
                          ("Only chat.discord imports discord.py", ["bot.chat.discord"]),
                          ("torch, transformers, peft and bitsandbytes only inside llm and learning",
                           ["bot.llm", "bot.learning"])):
        sources = contracts[name]["source_modules"]
        missing[name] = [m for m in modules if not _covered(m, allowed) and not _covered(m, sources)]
    assert not any(missing.values()), missing
    # chat may import commands, guard and messages; every other part of bot is forbidden to it, or above it.
    forbidden = set(contracts["Chat imports only commands, guard, messages and its own SDK"]["forbidden_modules"])
    parts = {".".join(m.split(".")[:2]) for m in modules} - {"bot.chat", "bot.commands", "bot.guard", "bot.messages"}
    assert parts - forbidden - set(layers[:layers.index("bot.chat")]) == set()
