"""The README is the user's manual: it must name every command, setting and process."""
import re
from pathlib import Path

from bot import cli, config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme_table():
    missing = [s.name for s in config.SETTINGS if f"| `{s.name}` |" not in README]
    assert not missing, f"settings missing from the README table: {missing}"


def test_every_readme_setting_exists():
    documented = set(re.findall(r"\| `((?:BOT|SLACK|DISCORD)_[A-Z_]+|PORT)` \|", README))
    assert documented <= {s.name for s in config.SETTINGS}, documented - {s.name for s in config.SETTINGS}


def test_every_setting_has_help_and_a_default_unless_secret():
    for s in config.SETTINGS:
        assert s.help.strip()
        # Our own settings carry the BOT_ prefix; the platforms' names (SLACK_*, DISCORD_*, PORT) are theirs.
        assert s.name.startswith(("BOT_", "SLACK_", "DISCORD_")) or s.name == "PORT"
        assert s.default != "" or s.kind in ("secret", "list")


def test_every_cli_command_is_in_the_readme():
    sub = next(a for a in cli.parser()._actions if a.dest == "command")
    missing = [name for name in sub.choices if f"`python -m bot {name}" not in README]
    assert not missing, f"commands missing from the README: {missing}"


def test_every_procfile_process_is_in_the_readme():
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip():
            name, command = line.split(":", 1)
            assert f"| `{name}` | `{command.strip()}` |" in README


def test_quick_start_names_the_two_commands():
    assert "make run" in README and "make test" in README


def test_the_architecture_tree_names_every_module_and_no_other():
    tree = README.split("## Architecture", 1)[1].split("```", 2)[1]
    bot = ROOT / "bot"
    listed_top = set(re.findall(r"^  (\w+)\.py\b", tree, re.M))
    actual_top = {p.stem for p in bot.glob("*.py")} - {"__init__", "__main__"}
    assert listed_top == actual_top, (listed_top ^ actual_top)
    packages = {}
    for indent, name, rest in re.findall(r"^( +)(\w+)/ +(.*)$", tree, re.M):
        if indent == "  ":
            parent = name
        path = bot / (name if indent == "  " else f"{parent}/{name}")
        modules = rest.split(":", 1)[1] if ":" in rest else rest
        packages[path] = {m.removesuffix(".py") for m in modules.split() if re.fullmatch(r"\w+(\.py)?", m)}
    for path in {p.parent for p in bot.rglob("__init__.py")} - {bot}:
        actual = {p.stem for p in path.glob("*.py")} - {"__init__"}
        subpackages = {p.parent.name for p in path.glob("*/__init__.py")}
        assert path in packages, f"{path.relative_to(ROOT)} is not in the README's Architecture tree"
        assert packages[path] == actual, (path.relative_to(ROOT), packages[path] ^ actual)
        assert subpackages <= {p.name for p in packages if p.parent == path}
