"""No import circle between the modules of ``tita_fast``.

Every import statement counts, those inside functions too (a lazy import only postpones a circle to the first
call). An edge goes from a module to the ``tita_fast`` module it names: ``from tita_fast.x import y`` to
``tita_fast.x.y`` if that is a module, else to ``tita_fast.x``; package ``__init__`` modules are nodes like any
other. Importing ``tita_fast.x.y`` also initialises the package ``tita_fast.x`` first, so that is an edge too,
unless ``tita_fast.x`` encloses the importer (a package is always initialised before its children; a child naming
its package explicitly, ``from tita_fast.train import load_config``, is an edge and can close a circle).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

PACKAGE = "tita_fast"
SRC = Path(__file__).resolve().parents[1] / "src"

Graph = dict[str, dict[str, str]]  # module -> {imported module: where ("line 6", "line 6, package of ...")}


def package_sources(root: Path = SRC / PACKAGE) -> dict[str, str]:
    """Module name -> source of every ``.py`` file of the package (``__init__.py`` under its package's name)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path.read_text()
    return out


def _bound_names(tree: ast.Module) -> set[str]:
    """Names a module binds anywhere (enough to tell ``from pkg import name`` from a submodule import)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def import_graph(sources: Mapping[str, str]) -> Graph:
    trees = {name: ast.parse(text, filename=name) for name, text in sources.items()}
    packages = {name for name in sources if name == PACKAGE or any(o.startswith(name + ".") for o in sources)}
    bound = {name: _bound_names(tree) for name, tree in trees.items() if name in packages}

    def target(parent: str, name: str) -> str:
        # A module, or a name the package does not bind itself: then Python imports it as a submodule (the
        # compiled tita_fast._C, absent from a source checkout, is one). A package binding names we cannot see
        # (star import, module __getattr__) gets the edge itself.
        child = f"{parent}.{name}"
        opaque = parent not in bound or "*" in bound[parent] or "__getattr__" in bound[parent]
        if child in sources or (not opaque and name != "*" and name not in bound[parent]):
            return child
        return parent

    graph: Graph = {name: {} for name in sources}
    for name, tree in trees.items():
        here = name if name in packages else name.rpartition(".")[0]
        for node in sorted(ast.walk(tree), key=lambda n: getattr(n, "lineno", 0)):
            found = []
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")
                    base = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
                found = [target(base, a.name) for a in node.names]
            for imported in found:
                if imported != PACKAGE and not imported.startswith(PACKAGE + "."):
                    continue
                graph[name].setdefault(imported, f"line {node.lineno}")
                parts = imported.split(".")
                for i in range(2, len(parts)):  # the packages initialised on the way
                    package = ".".join(parts[:i])
                    if name != package and not name.startswith(package + "."):
                        graph[name].setdefault(package, f"line {node.lineno}, package of {imported}")
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle (first module repeated at the end) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def enter(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        work.append((node, iter(sorted(graph.get(node, {})))))

    for root in sorted(graph):  # Tarjan's algorithm, iteratively
        if root in index:
            continue
        work: list = []
        enter(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    enter(nxt)
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = [stack.pop()]
                    while component[-1] != node:
                        component.append(stack.pop())
                    on_stack.difference_update(component)
                    components.append(component)

    cycles = []
    for component in components:  # its shortest cycle: from each module the shortest way back, breadth first
        members, found = set(component), []
        for start in sorted(component):
            paths = {nxt: [start, nxt] for nxt in graph.get(start, {}) if nxt in members}
            frontier = sorted(paths)
            while start not in paths and frontier:
                frontier, previous = [], frontier
                for node in previous:
                    for nxt in sorted(graph.get(node, {})):
                        if nxt in members and nxt not in paths:
                            paths[nxt] = [*paths[node], nxt]
                            frontier.append(nxt)
            if start in paths:
                found.append(paths[start])
        if found:
            cycles.append(min(found, key=len))
    return sorted(cycles)


def describe(cycle: list[str], graph: Graph) -> str:
    return " -> ".join([f"{a} ({graph[a][b]})" for a, b in zip(cycle[:-1], cycle[1:], strict=True)] + [cycle[-1]])


def test_edge_rules():
    sources = {
        "tita_fast": "from tita_fast import ops\nfrom tita_fast.nn import TITA\nX = 1\n",
        "tita_fast.ops": "from tita_fast.ops.ipa import ipa\n",
        "tita_fast.ops.ipa": "from tita_fast import _C, X\ndef f():\n    from . import mlp\n    from .. import nn\n",
        "tita_fast.ops.mlp": "import tita_fast.nn.layers as layers\n",
        "tita_fast.nn": "from .layers import Mlp\nTITA = Mlp\n",
        "tita_fast.nn.layers": "import torch\nfrom tita_fast.ops import *\n",
    }
    graph = import_graph(sources)
    assert graph == {
        "tita_fast": {"tita_fast.ops": "line 1", "tita_fast.nn": "line 2"},
        "tita_fast.ops": {"tita_fast.ops.ipa": "line 1"},
        "tita_fast.ops.ipa": {"tita_fast._C": "line 1", "tita_fast": "line 1", "tita_fast.ops.mlp": "line 3",
                              "tita_fast.nn": "line 4"},
        "tita_fast.ops.mlp": {"tita_fast.nn.layers": "line 1",
                              "tita_fast.nn": "line 1, package of tita_fast.nn.layers"},
        "tita_fast.nn": {"tita_fast.nn.layers": "line 1"},
        "tita_fast.nn.layers": {"tita_fast.ops": "line 2"},
    }  # fmt: skip
    # one component (ops.ipa -> nn -> nn.layers -> ops goes round too), reported by its shortest cycle
    assert find_cycles(graph) == [["tita_fast", "tita_fast.ops", "tita_fast.ops.ipa", "tita_fast"]]
    assert find_cycles({"a": {"a": "line 1"}}) == [["a", "a"]]
    assert find_cycles({"a": {"b": "line 1"}, "b": {}}) == []


def test_the_removed_swin_published_circle_would_be_caught():
    """nn/swin.py imports reference/published.py; published.py imported nn.swin back inside a function until
    published_ops moved to baseline.py."""
    sources = package_sources()
    assert "tita_fast.reference.published" in import_graph(sources)["tita_fast.nn.swin"]
    lazy = "\n\ndef published_ops():\n    from tita_fast.nn.swin import _ShiftedWindows\n"
    graph = import_graph({**sources, "tita_fast.reference.published": sources["tita_fast.reference.published"] + lazy})
    cycles = find_cycles(graph)
    assert cycles == [["tita_fast.nn.swin", "tita_fast.reference.published", "tita_fast.nn.swin"]]


def test_a_child_importing_its_package_back_is_a_circle():
    sources = {"tita_fast": "", "tita_fast.train": "from tita_fast.train.trainer import train\nload_config = None\n",
               "tita_fast.train.trainer": "def train():\n    from tita_fast.train import load_config\n"}  # fmt: skip
    assert find_cycles(import_graph(sources)) == [["tita_fast.train", "tita_fast.train.trainer", "tita_fast.train"]]


def test_no_import_circle():
    graph = import_graph(package_sources())
    assert len(graph) > 20 and graph["tita_fast"]  # the package was found and parsed
    cycles = find_cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(describe(c, graph) for c in cycles)

