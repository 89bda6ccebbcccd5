"""The kernel's layers (docs/architecture.md): one folder per layer, and a module imports
only modules of its own layer or of layers below it, TYPE_CHECKING imports included;
no two modules import each other, directly or through others.

The root of kernel/ holds the top two layers: the face and the wiring (the broker that
builds the parts, the service face, the plugin host, the hook specifications and the
admin command tree), and the entry points.
"""

from __future__ import annotations

import ast
from pathlib import Path

KERNEL = Path(__file__).resolve().parents[2] / "kernel"

# Bottom to top, as docs/architecture.md's table.
FOLDER_LAYERS = ("codec", "values", "hooks", "routing", "protocol", "transport")
ROOT_LAYERS: dict[str, tuple[str, ...]] = {
    "face": (
        "broker",
        "service",
        "observed",
        "live_settings",
        "records_face",
        "cluster_face",
        "group_commit",
        "acting",
        "manager",
        "plugin_lookup",
        "hookspecs",
        "admin",
    ),
    "entry points": ("cli", "workers", "admin_cli", "testing", "__init__", "__main__"),
}
LAYERS = (*FOLDER_LAYERS, *ROOT_LAYERS)
RANK = {layer: rank for rank, layer in enumerate(LAYERS)}


def module_name(path: Path, kernel: Path) -> str:
    """'transport.connection', 'codec.framer', 'broker' (the root's modules)."""
    parts = path.relative_to(kernel).with_suffix("").parts
    return ".".join(parts)


def layer_of(module: str) -> str:
    head = module.split(".")[0]
    if head in FOLDER_LAYERS:
        return head
    for layer, modules in ROOT_LAYERS.items():
        if head in modules:
            return layer
    raise AssertionError(f"{module}: not in a layer (add it to ROOT_LAYERS and to docs/architecture.md)")


def resolve(importer: str, node: ast.ImportFrom, modules: set[str]) -> list[str]:
    """The kernel modules a relative import names: ``from .x import y`` names the module
    x.y if there is one, else x (a package stands for its __init__)."""
    package = importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    named = ".".join([*base, *node.module.split(".")]) if node.module else ".".join(base)
    targets = []
    for alias in node.names:
        submodule = f"{named}.{alias.name}" if named else alias.name
        targets.append(submodule if submodule in modules else named)
    return targets


def kernel_imports(kernel: Path = KERNEL) -> set[tuple[str, str]]:
    """(importer, imported) for every relative import between kernel modules."""
    paths = list(kernel.rglob("*.py"))
    modules = {module_name(path, kernel) for path in paths}
    edges = set()
    for path in paths:
        importer = module_name(path, kernel)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                targets = resolve(importer, node, modules)
                edges.update(
                    (importer, target.removesuffix(".__init__")) for target in targets if target and target != importer
                )
    return edges


def upward(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in edges if RANK[layer_of(b)] > RANK[layer_of(a)]}


def cycles(edges: set[tuple[str, str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_kernel_module_has_a_layer() -> None:
    for path in KERNEL.rglob("*.py"):
        layer_of(module_name(path, KERNEL))
    folders = {path.name for path in KERNEL.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    assert folders == set(FOLDER_LAYERS)


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    assert upward(kernel_imports()) == set()


def test_no_import_cycle() -> None:
    assert cycles(kernel_imports()) == []


def test_the_codec_imports_nothing_of_the_kernel() -> None:
    assert {b for a, b in kernel_imports() if a.startswith("codec.") and not b.startswith("codec")} == set()


def test_an_upward_import_and_a_cycle_are_found(tmp_path: Path) -> None:
    (tmp_path / "routing").mkdir()
    (tmp_path / "routing" / "__init__.py").write_text("")
    (tmp_path / "routing" / "session.py").write_text("if TYPE_CHECKING:\n    from ..broker import Broker\n")
    (tmp_path / "routing" / "router.py").write_text("from . import session\n")
    (tmp_path / "broker.py").write_text("from .routing.session import Session\nfrom .routing import router\n")
    edges = kernel_imports(tmp_path)
    assert edges == {
        ("routing.session", "broker"),
        ("routing.router", "routing.session"),
        ("broker", "routing.session"),
        ("broker", "routing.router"),
    }
    assert upward(edges) == {("routing.session", "broker")}
    assert cycles(edges) == [frozenset({"broker", "routing.session", "routing.router"})]
