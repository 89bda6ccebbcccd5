"""Checks on the hook catalogue and the kernel itself, not on behaviour.

Every hookspec is documented (each parameter, what happens on error), belongs to exactly
one family, and has a ``test_hook_<name>`` test somewhere under tests/. Kernel modules
stay small (docs/architecture.md: a feature that can be a plugin is a plugin).
"""

from __future__ import annotations

import ast
import functools
import inspect
from pathlib import Path

import pluggy
import pytest

import ternmq.kernel
from ternmq.kernel import hookspecs

TESTS_DIR = Path(__file__).resolve().parents[1]
KERNEL_DIR = Path(ternmq.kernel.__file__).resolve().parent
KERNEL_MODULE_BUDGET = 450

FAMILIES = {
    "decision": hookspecs.DECISION_HOOKS,
    "notification": hookspecs.NOTIFICATION_HOOKS,
    "provider": hookspecs.PROVIDER_HOOKS,
    "registration": hookspecs.REGISTRATION_HOOKS,
}
SPEC_ATTRIBUTE = hookspecs.PROJECT_NAME + "_spec"
HOOKSPECS_FILE = Path(hookspecs.__file__).resolve()


def hookspec_functions() -> dict[str, object]:
    return {
        name: value for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, SPEC_ATTRIBUTE)
    }


HOOKSPECS = hookspec_functions()


def test_hookspec_discovery_matches_pluggy() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    assert set(HOOKSPECS) == {name for name in vars(pm.hook) if not name.startswith("_")}
    assert len(HOOKSPECS) >= 29


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_hookspec_docstring_documents_every_parameter_and_errors(name: str) -> None:
    function = HOOKSPECS[name]
    doc = inspect.getdoc(function)
    assert doc, f"{name} has no docstring"
    missing = [param for param in inspect.signature(function).parameters if f":param {param}:" not in doc]
    assert not missing, f"{name}: docstring does not describe {missing}"
    assert "error" in doc.lower(), f"{name}: docstring does not say what happens on error or timeout"


def test_hook_families_cover_every_hookspec_exactly_once() -> None:
    listed = [name for family in FAMILIES.values() for name in family]
    duplicates = sorted({name for name in listed if listed.count(name) > 1})
    assert not duplicates, f"hooks listed in more than one family (or twice): {duplicates}"
    assert set(listed) == set(HOOKSPECS), (
        f"missing from families: {sorted(set(HOOKSPECS) - set(listed))}; "
        f"not a hookspec: {sorted(set(listed) - set(HOOKSPECS))}"
    )


def test_every_hookspec_is_marked_with_its_family_where_it_is_defined() -> None:
    """One family decorator on each spec (no bare ``@hookspec``), and the family lists
    are what those marks say: nothing is listed by hand."""
    tree = ast.parse(HOOKSPECS_FILE.read_text(encoding="utf-8"))
    marks = {
        node.name: [ast.unparse(decorator) for decorator in node.decorator_list]
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name in HOOKSPECS
    }
    assert set(marks) == set(HOOKSPECS)
    wrong = {name: found for name, found in marks.items() if len(found) != 1 or found[0] not in FAMILIES}
    assert not wrong, f"hookspecs not marked with exactly one of {sorted(FAMILIES)}: {wrong}"
    assert {name: found[0] for name, found in marks.items()} == hookspecs.HOOK_FAMILIES
    for family, names in FAMILIES.items():
        assert names == tuple(name for name, found in marks.items() if found == [family]), family


def test_async_hooks_are_the_decision_notification_and_provider_families() -> None:
    import pluggy

    from ternmq.kernel.hooks.dispatch import HookDispatcher

    plugin_manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    plugin_manager.add_hookspecs(hookspecs)
    called = HookDispatcher(plugin_manager).async_hooks
    assert called == frozenset(hookspecs.HOOK_FAMILIES) - frozenset(hookspecs.REGISTRATION_HOOKS)
    assert called and not called & frozenset(hookspecs.REGISTRATION_HOOKS)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_first_answer_families_are_firstresult(family: str) -> None:
    expected = family in ("decision", "provider")
    for name in FAMILIES[family]:
        opts = getattr(HOOKSPECS[name], SPEC_ATTRIBUTE)
        assert bool(opts.get("firstresult")) is expected, name


def test_hook_names_follow_their_family() -> None:
    assert all(name.startswith(("auth_on_", "on_auth", "on_deliver")) for name in hookspecs.DECISION_HOOKS)
    assert all(name.startswith("on_") for name in hookspecs.NOTIFICATION_HOOKS)
    assert all(
        name.startswith(("retain_", "session_store_", "message_store_", "record_", "store_", "cluster_"))
        for name in hookspecs.PROVIDER_HOOKS
    )
    assert all(name.startswith("register_") for name in hookspecs.REGISTRATION_HOOKS)


@functools.cache
def functions_defined_under(path: Path) -> frozenset[str]:
    """Names of every function defined in the test modules under ``path``."""
    names: set[str] = set()
    for file in path.rglob("*.py"):
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        names.update(node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return frozenset(names)


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_every_hook_has_a_test_named_after_it(name: str) -> None:
    assert f"test_hook_{name}" in functions_defined_under(TESTS_DIR), f"no test_hook_{name} under {TESTS_DIR}"


def oversized_kernel_modules() -> dict[str, int]:
    sizes = {}
    for file in sorted(KERNEL_DIR.rglob("*.py")):
        relative = file.relative_to(KERNEL_DIR)
        if relative.parts[0] == "codec" or relative.name == "hookspecs.py":
            continue
        lines = len(file.read_text(encoding="utf-8").splitlines())
        if lines > KERNEL_MODULE_BUDGET:
            sizes[str(relative)] = lines
    return sizes


def test_kernel_modules_stay_within_the_size_budget() -> None:
    assert oversized_kernel_modules() == {}, f"kernel modules over {KERNEL_MODULE_BUDGET} lines"
