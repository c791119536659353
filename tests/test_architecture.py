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
from pathlib import Path

import pytest

import bot.chat

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "peft", "bitsandbytes")


def _chat_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(bot.chat.__path__, "bot.chat."))


@pytest.mark.parametrize("module", ["bot", "bot.cli", "bot.commands", "bot.wiring", *_chat_modules()])
def test_importing_the_cli_and_every_chat_module_loads_no_model_library(module):
    # A fresh interpreter: this process has long since imported torch for other tests.
    code = (f"import sys, {module}; heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})); "
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
