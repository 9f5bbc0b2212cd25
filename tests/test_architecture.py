"""The layering rules of ARCHITECTURE.md, read from the code's own imports (lazy ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

from tiny_models import ROOT

PKG = ROOT / "src" / "flythinker"
COMPONENTS = ("data", "decoding", "train", "evaluate")


def _modules() -> dict[str, Path]:
    mods = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = ("flythinker",) + p.relative_to(PKG).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its file."""
    out = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            mod = ".".join(x for x in (base, node.module) if x)
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + ".") and t != "flythinker":
                out.add(t)
    return out


def _floor(name: str) -> int:
    parts = name.split(".")
    if len(parts) < 2 or name == "flythinker._api":
        return 3  # the package face re-exports from every floor
    if parts[1] == "cli":
        return 3
    if parts[1] == "apps":
        return 2
    return 1 if parts[1] in COMPONENTS else 0


GRAPH = {n: _imports(n, p, _modules()) for n, p in _modules().items()}


def test_no_import_cycles():
    seen, stack, cycles = {}, [], []

    def visit(v):
        seen[v] = 1
        stack.append(v)
        for w in GRAPH[v]:
            if seen.get(w) == 1:
                cycles.append(stack[stack.index(w) :] + [w])
            elif w not in seen:
                visit(w)
        stack.pop()
        seen[v] = 2

    for v in GRAPH:
        if v not in seen:
            visit(v)
    assert cycles == []


def test_no_floor_imports_a_higher_one():
    up = [f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps if _floor(b) > _floor(a)]
    assert up == []


def test_files_and_functions_stay_small():
    big = []
    for name, path in _modules().items():
        text = path.read_text()
        if len(text.splitlines()) > 400:
            big.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                big.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert big == []
    # the model holds the method and its folder format, nothing else (issue #39: under 350 lines)
    assert len((PKG / "model.py").read_text().splitlines()) < 350


def test_the_drawing_in_architecture_md_names_every_module_and_no_other():
    import re

    text = (ROOT / "ARCHITECTURE.md").read_text()
    drawing = text.split("```", 2)[1]
    named = set(re.findall(r"[a-z_][a-z0-9_]*", drawing))
    names = {n.rsplit(".", 1)[-1] for n in _modules() if n.count(".") >= 1} - {"flythinker"}
    names = {n for n in names if n != "__init__"}
    missing = sorted(n for n in names if n not in named)
    assert missing == [], f"modules the drawing does not name: {missing}"
    folders = {p.parent.name for p in PKG.rglob("*.py")} - {"flythinker"}
    assert all(f"{f}/" in drawing for f in folders)
