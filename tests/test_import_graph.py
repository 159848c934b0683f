"""The import graph has no circle: not between the project's top-level packages, and not between
the modules of one package. Read from the source with `ast` (every import, top-level or inside a
function, counts), so a lazy import cannot hide a circle. `python tests/test_import_graph.py`
prints every edge between packages.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("configs", "data", "model", "optim", "sweeper", "trainer")


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> its file, for every .py file of the packages (a package's own
    __init__ is the package's name)."""
    out = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imported(name: str, path: Path, known: dict) -> set[str]:
    """The project modules `name` imports (`from a.b import c` counts as a.b, and as a.b.c when
    that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from the package, up level - 1
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != name}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected part of the graph that has one (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def graphs(root: Path, packages=PACKAGES):
    """(package -> packages it imports, {package: module -> modules of it that it imports})."""
    known = modules(root, packages)
    between, within = {}, {}
    for name, path in known.items():
        top = name.split(".")[0]
        for target in imported(name, path, known):
            other = target.split(".")[0]
            if other != top:
                between.setdefault(top, set()).add(other)
            elif target != top and name != top:   # a package's __init__ re-exports: not a module edge
                within.setdefault(top, {}).setdefault(name, set()).add(target)
    return between, within


def circles(root: Path, packages=PACKAGES) -> list[str]:
    between, within = graphs(root, packages)
    found = [" <-> ".join(c) for c in cycles(between)]
    for pkg, edges in within.items():
        found += [f"{pkg}: " + " <-> ".join(c) for c in cycles(edges)]
    return found


def test_the_project_has_no_import_circle():
    assert circles(REPO) == []


def test_a_circle_is_found(tmp_path):
    """The checker is not blind: a circle between packages, one inside a package (made by a
    lazy import in a function), and a relative import are each found."""
    def write(rel, text=""):
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)

    write("low/__init__.py")
    write("low/base.py", "from high.top import thing\n")
    write("high/__init__.py")
    write("high/top.py", "import low.base\n")
    write("high/a.py", "def f():\n    from high import b\n")
    write("high/b.py", "from .a import f\n")
    write("ok/__init__.py", "from ok.x import y\n")
    write("ok/x.py", "import ok\n")
    found = circles(tmp_path, ("low", "high", "ok"))
    assert found == ["high <-> low", "high: high.a <-> high.b"]


if __name__ == "__main__":
    between, _ = graphs(REPO)
    for pkg in sorted(between):
        print(f"{pkg} -> {', '.join(sorted(between[pkg]))}")
    print("\n".join(circles(REPO)) or "no circle")
    sys.exit(1 if circles(REPO) else 0)
