"""The kernel's layers (docs/architecture.md): a module imports only modules of its own
layer or of layers below it, TYPE_CHECKING imports included.

The modules still sit side by side in kernel/ while they move into one folder per layer;
the upward imports that remain are listed in KNOWN_UPWARD and may only shrink: a new
upward import fails, and so does a listed one that is gone (strike it from the list).
"""

from __future__ import annotations

import ast
from pathlib import Path

KERNEL = Path(__file__).resolve().parents[2] / "kernel"

# Bottom to top, as docs/architecture.md's table.
LAYERS: dict[str, tuple[str, ...]] = {
    "codec": ("codec",),
    "values": ("types", "config"),
    "hooks": ("hookspecs", "dispatch", "manager", "registries", "admin"),
    "routing": ("topics", "session", "router", "lifecycle", "scheduler"),
    "protocol": ("negotiation", "connect", "inbound", "subscriptions"),
    "transport": ("rawstream", "listeners", "connection", "outbound"),
    "broker": ("broker", "service"),
    "entry points": ("cli", "admin_cli", "testing", "__init__", "__main__"),
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}

# Upward imports still to be taken out by the move into layer folders (each needs a
# small Protocol type in the lower layer, or the state it reaches for moved down).
KNOWN_UPWARD = {
    ("admin", "service"),
    ("connect", "connection"),
    ("connect", "rawstream"),
    ("connection", "broker"),
    ("inbound", "connection"),
    ("lifecycle", "connection"),
    ("listeners", "broker"),
    ("manager", "broker"),
    ("outbound", "broker"),
    ("session", "connection"),
    ("subscriptions", "broker"),
    ("subscriptions", "connection"),
}


def kernel_imports(folder: Path = KERNEL) -> set[tuple[str, str]]:
    """(importer, imported) for every relative import between kernel modules."""
    edges = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module.split(".")[0]] if node.module else [alias.name for alias in node.names]
                edges.update((path.stem, target) for target in targets if target != path.stem)
    return edges


def upward(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in edges if a in RANK and b in RANK and RANK[b] > RANK[a]}


def test_every_kernel_module_has_a_layer() -> None:
    modules = {path.stem for path in KERNEL.glob("*.py")} | {"codec"}
    assert modules - set(RANK) == set(), "add the module to LAYERS and to docs/architecture.md"
    assert set(RANK) - modules == set(), "a module in LAYERS no longer exists"


def test_no_new_upward_import() -> None:
    assert upward(kernel_imports()) - KNOWN_UPWARD == set()


def test_the_known_upward_imports_are_still_there() -> None:
    # Keeps the list honest: one that was taken out must leave it.
    assert KNOWN_UPWARD - upward(kernel_imports()) == set()


def test_the_codec_imports_nothing_of_the_kernel() -> None:
    for path in (KERNEL / "codec").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name} imports from outside the codec"


def test_an_upward_import_is_found(tmp_path: Path) -> None:
    (tmp_path / "session.py").write_text("from .broker import Broker\n")
    (tmp_path / "broker.py").write_text("from .session import Session\n")
    edges = kernel_imports(tmp_path)
    assert edges == {("session", "broker"), ("broker", "session")}
    assert upward(edges) == {("session", "broker")}
