"""The package's plan holds: no import loops, and lower layers never import higher ones.

Every import counts, including those inside functions (the CLI's lazy ones too): a lazy
import that points back up still ties the layers together.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lower number = lower layer. A module may import only its own layer or lower ones.
# The views depend on the core only (they are fed by callbacks), so the commands that
# draw them, in train/ and evaluate/, may import them.
LAYERS = {
    "core": 0,
    "ui": 1,
    "track": 1,  # fed by callbacks and summaries, like the views: the core only
    "tasks": 1,
    "backends": 2,
    "train": 3,
    "export": 4,
    "evaluate": 5,
    "bench": 6,
    "report": 6,  # reads what train and evaluate wrote
    "commands": 7,
    "cli": 7,
    # The Python API (saie_lite/api.py): the same door as the commands, at their level.
    "api": 7,
}
# The one import allowed to point up: saie_lite/__init__.py reaches the Python API lazily,
# inside its module ``__getattr__`` (so ``from saie_lite import run_train`` works and
# ``import saie_lite`` imports nothing of it). Only that function, only that target.
LAZY_API = ("saie_lite", "__getattr__", "saie_lite.api")


def _modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "saie_lite").rglob("*.py"):
        rel = path.relative_to(ROOT / "saie_lite").with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(["saie_lite", *parts])] = path
    for path in (ROOT / "backends").glob("*.py"):
        name = "saie_lite.backends" + ("" if path.stem == "__init__" else f".{path.stem}")
        out[name] = path
    return out


def _lazy_api_nodes(module: str, tree: ast.Module) -> set[int]:
    """The import nodes of ``LAZY_API``: those inside the root package's module-level
    ``__getattr__`` that import the API module and nothing else."""
    owner, function, target = LAZY_API
    if module != owner:
        return set()
    nodes = set()
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef) and fn.name == function:
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.module == owner:
                    if [f"{owner}.{a.name}" for a in node.names] == [target]:
                        nodes.add(id(node))
    return nodes


def _imports(path: Path, known: set[str], module: str = "") -> set[str]:
    found = set()
    tree = ast.parse(path.read_text())
    allowed = _lazy_api_nodes(module, tree)
    for node in ast.walk(tree):
        if id(node) in allowed:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n in known:
                found.add(n)
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return LAYERS["core"]
    group = parts[1]
    return LAYERS.get(group, LAYERS["core"])


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {m: _imports(p, known, m) - {m} for m, p in mods.items()}
    # Importing ``saie_lite.x.y`` runs the package ``saie_lite.x`` first: that is no edge to
    # worry about, the package __init__ files import nothing.
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def test_no_module_imports_one_that_imports_it_back():
    graph = _graph()
    loops = []
    for start in graph:  # depth-first search for a path back to ``start``
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == start:
                loops.append(start)
                break
            if m not in seen:
                seen.add(m)
                todo.extend(graph.get(m, ()))
    assert loops == []


def test_lower_layers_never_import_higher_ones():
    bad = [f"{m} -> {d}" for m, deps in _graph().items() for d in deps if _layer(d) > _layer(m)]
    assert bad == []


def test_group_inits_import_nothing_above_the_core():
    for m, path in _modules().items():
        if path.name == "__init__.py":
            assert {_layer(d) for d in _imports(path, set(_modules()), m)} <= {0}, m


def test_the_lazy_api_import_is_the_only_exception_and_stays_lazy():
    """The root package does import the API, but only inside ``__getattr__``: counted
    without the exception it is an upward edge (so the exception is what lets it pass),
    and a fresh ``import saie_lite`` loads neither the API nor torch."""
    import subprocess
    import sys

    root = ROOT / "saie_lite" / "__init__.py"
    assert "saie_lite.api" in _imports(root, set(_modules()))  # without the exception
    assert "saie_lite.api" not in _imports(root, set(_modules()), "saie_lite")
    code = (
        "import sys, saie_lite; print([m for m in ('saie_lite.api', 'torch') if m in sys.modules]);"
        " from saie_lite import run_train, Config; print(run_train.__module__, Config.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "saie_lite.api Config"]


def test_architecture_file_map_matches_the_tree():
    """Every package, backend and recipe file has its line in the file map of
    docs/architecture.md, and every line names a file that exists."""
    import re
    import subprocess

    page = (ROOT / "docs" / "architecture.md").read_text()
    section = page[page.index("## File map") :]
    end = section.find("\n## ", 1)  # the map runs to the next section, or the page's end
    section = section if end == -1 else section[:end]
    mapped = set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.M))
    tracked = subprocess.run(
        ["git", "ls-files", "saie_lite", "backends", "recipes"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(set(tracked) - mapped) == []
    assert sorted(m for m in mapped if not (ROOT / m.rstrip("/")).exists()) == []
