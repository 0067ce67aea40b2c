"""The package's import graph, built from the source with ``ast``: no cycle, nothing imports upward.

Layers, lowest first (DESIGN.md): ``stormguard`` (schema, config, report, sink) ← ``features`` ← ``models`` ←
``scoring`` ← ``server``. A module may import its own layer or lower ones. Every import counts, at module level
or inside a function (a lazy import is still a dependency), except those under ``if TYPE_CHECKING:``, which
never run.

The command-line modules (``stormguard.cli``, ``stormguard.__main__`` and each package's ``cli``) are entry
points: they wire the layers together, so they may import any layer, and no library module may import them.

Cycles are checked twice: between modules, and between sub-packages (``stormguard.features.capture``,
``stormguard.server.hub``, …; a top-level module counts as its own node), so two concerns never lean on each
other in a circle even through different modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Package → its folder (pyproject's package-dir), in layer order.
LAYERS = (("stormguard", "stormguard"), ("stormguard.features", "features"), ("stormguard.models", "models"),
          ("stormguard.scoring", "scoring"), ("stormguard.server", "server"))


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg, folder in LAYERS:
        for f in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in f.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (relative ones resolved against the importing module)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (a ``from pkg import name`` of a submodule counts as that)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skip = _type_checking_nodes(tree)
        out: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                base = _absolute(name, path, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    out.add(sub if sub in mods else base)
            elif isinstance(node, ast.Import):
                out.update(alias.name for alias in node.names)
        graph[name] = {m for m in out if m in mods and m != name}
    return graph


def layer_of(module: str) -> int:
    rank = 0
    for i, (pkg, _) in enumerate(LAYERS):
        if module == pkg or module.startswith(pkg + "."):
            rank = i
    return rank


def is_entry_point(module: str) -> bool:
    return module in ("stormguard.cli", "stormguard.__main__") or module.endswith(".cli")


def group_of(module: str) -> str:
    """The sub-package a module belongs to (``stormguard.features.capture``), or the module itself."""
    parts = module.split(".")
    if parts[0] == "stormguard" and len(parts) >= 4:
        return ".".join(parts[:3])
    return module


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a chain ``a -> b -> … -> a``, or None (iterative DFS with colours)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph.get(start, ())))]
        path = [start]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop(0)
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph.get(nxt, ()))))
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_graph_sees_the_package(graph: dict[str, set[str]]) -> None:
    # the graph must actually hold the layers and their edges, or the checks below would pass vacuously
    assert "stormguard.features.tls.ja4" in graph and "stormguard.server.layers.limiter" in graph
    assert "stormguard.features.tls.clienthello" in graph["stormguard.features.tls.ja4"]
    assert "stormguard.server.hub.history" in graph["stormguard.server.hub.topics"]
    assert "stormguard.models.mapping" in graph["stormguard.models.train"]  # a relative import, resolved


def test_nothing_imports_upward(graph: dict[str, set[str]]) -> None:
    bad = [f"{m} -> {o}" for m, outs in sorted(graph.items()) if not is_entry_point(m)
           for o in sorted(outs) if layer_of(o) > layer_of(m)]
    assert not bad, "upward imports (layer order stormguard <- features <- models <- scoring <- server):\n" + \
        "\n".join(bad)


def test_nothing_imports_an_entry_point(graph: dict[str, set[str]]) -> None:
    bad = [f"{m} -> {o}" for m, outs in sorted(graph.items()) if not is_entry_point(m)
           for o in sorted(outs) if is_entry_point(o)]
    assert not bad, "library modules importing a command-line module:\n" + "\n".join(bad)


def test_no_module_cycle(graph: dict[str, set[str]]) -> None:
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_subpackage_cycle(graph: dict[str, set[str]]) -> None:
    groups: dict[str, set[str]] = {}
    for m, outs in graph.items():
        for o in outs:
            if group_of(m) != group_of(o):
                groups.setdefault(group_of(m), set()).add(group_of(o))
    cycle = find_cycle(groups)
    assert cycle is None, "sub-packages import each other in a circle: " + " -> ".join(cycle or [])


def test_checks_catch_what_they_claim() -> None:
    tree = ast.parse("from .mapping import X\nfrom ..features import tls")
    frm = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert _absolute("stormguard.models.train", ROOT / "models/train.py", frm[0]) == "stormguard.models.mapping"
    assert _absolute("stormguard.models", ROOT / "models/__init__.py", frm[0]) == "stormguard.models.mapping"
    assert _absolute("stormguard.models.train", ROOT / "models/train.py", frm[1]) == "stormguard.features"
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("stormguard.server.hub.sse") > layer_of("stormguard.scoring.rules") > layer_of("stormguard.schema")
    assert group_of("stormguard.features.capture.quic") == "stormguard.features.capture"
    assert group_of("stormguard.features.replay") == "stormguard.features.replay"


def test_public_server_names_are_importable_and_lazy() -> None:
    import subprocess
    import sys

    code = ("import sys, stormguard.server as s; assert 'starlette' not in sys.modules; "
            "names = [getattr(s, n) for n in s.__all__]; print(len(names))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
