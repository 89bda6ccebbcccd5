"""Every hook call in the kernel passes exactly the hookspec's arguments, to a method of
the hook's family, with the hook named literally.

A static check (``ast`` over kernel/**/*.py): a wrong call site fails here even when no
test exercises it, instead of failing at run time inside the dispatcher. The dispatcher
checks the same at run time (``TypeError``, see tests/kernel/test_dispatch.py).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import ternmq.kernel
from ternmq.kernel import hookspecs

KERNEL_DIR = Path(ternmq.kernel.__file__).resolve().parent
# Dispatcher method -> the family of the hooks it calls.
METHODS = {
    "decide": "decision",
    "decide_with_plugin": "decision",
    "notify": "notification",
    "provide": "provider",
}
# Keyword arguments of a dispatcher method that are not the hook's (provide's fallback).
OWN_KEYWORDS = {"provide": frozenset({"default", "failed"})}
# The dispatcher forwards calls with a variable hook name; everywhere else it is literal.
FORWARDERS = {"dispatch.py"}
PARAMETERS = {
    name: frozenset(inspect.signature(getattr(hookspecs, name)).parameters) for name in hookspecs.HOOK_FAMILIES
}


def call_problems(source: str, filename: str) -> tuple[int, list[str]]:
    """(number of hook calls found, what is wrong with them) in one module's source."""
    found = 0
    problems: list[str] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in METHODS):
            continue
        method = node.func.attr
        where = f"{filename}:{node.lineno}: .{method}("
        if not node.args:
            continue  # not a hook call (trio.Condition.notify(), ...)
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            if Path(filename).name not in FORWARDERS:
                problems.append(f"{where}...): the hook name must be a string literal")
            continue
        hook = first.value
        found += 1
        where += f"{hook!r}"
        family = hookspecs.HOOK_FAMILIES.get(hook)
        if family is None:
            problems.append(f"{where}): no such hook")
            continue
        if family != METHODS[method]:
            problems.append(f"{where}): a {family} hook, called as a {METHODS[method]} hook")
        if len(node.args) > 1:
            problems.append(f"{where}): hook arguments must be passed by keyword")
        if any(keyword.arg is None for keyword in node.keywords):
            problems.append(f"{where}): hook arguments must be named, not unpacked with **")
        names = {keyword.arg for keyword in node.keywords if keyword.arg is not None}
        names -= OWN_KEYWORDS.get(method, frozenset())
        expected = PARAMETERS[hook]
        if names != expected:
            missing, unknown = sorted(expected - names), sorted(names - expected)
            problems.append(f"{where}): missing {missing}, unknown {unknown}; the hookspec takes {sorted(expected)}")
    return found, problems


def test_every_kernel_hook_call_passes_the_hookspec_arguments() -> None:
    found = 0
    problems: list[str] = []
    for file in sorted(KERNEL_DIR.rglob("*.py")):
        count, wrong = call_problems(file.read_text(encoding="utf-8"), str(file.relative_to(KERNEL_DIR)))
        found += count
        problems += wrong
    assert not problems, "\n".join(problems)
    # The kernel calls hooks in some 30 places: finding none means the check went blind.
    assert found >= 25, found


BROKEN = """
async def f(dispatcher, conn, message, session, hook):
    await dispatcher.decide("auth_on_publish", client=conn.client_info, message=message)
    await dispatcher.notify("on_publish", client=conn.client_info, message=message, extra=1)
    await dispatcher.provide("retain_lookup", default=(), topic="a")
    await dispatcher.notify("auth_on_publish", client=None, message=message, is_will=False)
    await dispatcher.decide_with_plugin("on_deliverr", client=None, message=message)
    await dispatcher.provide("session_store_save", session.snapshot())
    await dispatcher.notify("on_session_expired", **{"client_id": "x"})
    await dispatcher.notify(hook, client_id="x")
    await dispatcher.provide("retain_lookup", default=(), topic_filter="a")
    condition.notify()
"""


def test_the_check_reports_each_kind_of_wrong_call() -> None:
    found, problems = call_problems(BROKEN, "broken.py")
    assert found == 8
    assert problems == [
        "broken.py:3: .decide('auth_on_publish'): missing ['is_will'], unknown []; "
        "the hookspec takes ['client', 'is_will', 'message']",
        "broken.py:4: .notify('on_publish'): missing [], unknown ['extra']; the hookspec takes ['client', 'message']",
        "broken.py:5: .provide('retain_lookup'): missing ['topic_filter'], unknown ['topic']; "
        "the hookspec takes ['topic_filter']",
        "broken.py:6: .notify('auth_on_publish'): a decision hook, called as a notification hook",
        "broken.py:7: .decide_with_plugin('on_deliverr'): no such hook",
        "broken.py:8: .provide('session_store_save'): hook arguments must be passed by keyword",
        "broken.py:8: .provide('session_store_save'): missing ['session'], unknown []; the hookspec takes ['session']",
        "broken.py:9: .notify('on_session_expired'): hook arguments must be named, not unpacked with **",
        "broken.py:9: .notify('on_session_expired'): missing ['client_id', 'mountpoint'], unknown []; "
        "the hookspec takes ['client_id', 'mountpoint']",
        "broken.py:10: .notify(...): the hook name must be a string literal",
    ]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_checked_methods_are_the_dispatchers(method: str) -> None:
    from ternmq.kernel.hooks.dispatch import HookDispatcher

    assert inspect.iscoroutinefunction(getattr(HookDispatcher, method))
    own = set(inspect.signature(getattr(HookDispatcher, method)).parameters) - {"self", "hook_name", "kwargs"}
    assert own == OWN_KEYWORDS.get(method, set())
