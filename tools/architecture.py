"""The shape of bot/ in figures: `python -m tools.architecture [--json]`.

Prints what issue 11 measured: how many modules each package holds, how many
import floors the module graph stacks (the longest chain of imports between
bot's modules), how many of bot's own imports are made inside functions, how
many module-level import cycles there are, and how many times `config.get` is
called. The contracts themselves are checked by `lint-imports` (make test).
"""
from __future__ import annotations

import argparse
import ast
import json
import re
from collections import Counter
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOT = ROOT / "bot"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> tuple[set[str], int]:
    """bot's modules that `path` imports (at any depth of the file), and how many are inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = set(map(id, tree.body))
    package = _module(path) if path.name == "__init__.py" else _module(path).rsplit(".", 1)[0]
    found, lazy = set(), 0
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level:  # relative: `from . import x`, `from .x import y`
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = f"{base}.{node.module}" if node.module else base
            names = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bot":
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "bot"]
        names = [n for n in names if n in known and n != "bot"]
        if names and id(node) not in top_level and not _under_type_checking(tree, node):
            lazy += len(names)
        found.update(names)
    return found, lazy


def _under_type_checking(tree, node) -> bool:
    return any(isinstance(n, ast.If) and "TYPE_CHECKING" in ast.dump(n.test) and node in ast.walk(n)
               for n in tree.body)


def figures() -> dict:
    files = {_module(p): p for p in BOT.rglob("*.py") if "__pycache__" not in p.parts}
    known = set(files)
    graph, lazy = {}, 0
    for name, path in files.items():
        graph[name], n = _imports(path, known)
        graph[name].discard(name)
        lazy += n

    # Strongly connected components (Tarjan): a component of more than one module is a cycle.
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    @cache
    def floor(v, seen=frozenset()) -> int:  # 1 + the highest floor imported; a cycle counts once
        below = [floor(w, seen | {v}) for w in graph[v] if w not in seen and w != v]
        return 1 + max(below, default=0)

    packages = Counter(n.rsplit(".", 1)[0] if n.count(".") > 1 or files[n].name != "__init__.py" else n
                       for n in files if files[n].name != "__init__.py")
    # Reads of a setting by name (a peft config's .get("r") is something else).
    config_get = sum(len(re.findall(r"""config\.get\(\s*["'][A-Z][A-Z_]*["']""", p.read_text(encoding="utf-8")))
                     for p in BOT.rglob("*.py"))
    return {"modules": sum(packages.values()), "modules_per_package": dict(sorted(packages.items())),
            "import_floors": max(floor(v) for v in graph), "function_level_imports": lazy,
            "cycles": cycles, "config_get_calls": config_get}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.architecture", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    f = figures()
    if args.json:
        print(json.dumps(f, indent=2))
        return 0
    print(f"{f['modules']} modules in {len(f['modules_per_package'])} packages:")
    for package, n in f["modules_per_package"].items():
        print(f"  {package:24} {n}")
    print(f"import floors (longest import chain): {f['import_floors']}")
    print(f"bot imports made inside functions:     {f['function_level_imports']}")
    print(f"module-level import cycles:             {len(f['cycles'])} {f['cycles'] or ''}")
    print(f"config.get(\"BOT_...\") calls:             {f['config_get_calls']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
