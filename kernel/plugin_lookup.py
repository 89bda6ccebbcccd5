"""Finding a plugin by the name a user gives: a built-in short name, an entry point
of the group ``ternmq.plugins`` (a pip-installed package), or a module path
(``package.module``, ``module:object``); and the errors that say why one was not found."""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType
from typing import Any

from ternmq.plugins import ESSENTIAL

ENTRY_POINT_GROUP = "ternmq.plugins"
# Where a module is looked for: people expect the folder they run ternmq-admin in.
IMPORT_HINT = (
    "the broker imports plugins itself, from its own Python path: installed packages, its PYTHONPATH "
    "and the folders of [broker] plugin_path (the folder ternmq-admin runs in does not matter)"
)


class PluginError(Exception):
    """A plugin cannot be found, configured or loaded; the message says which and why.

    ``plugin`` and ``reason`` are the two halves of the message ("plugin NAME: REASON"),
    for a caller that names the plugin its own way (a configuration error names its table).
    """

    def __init__(self, message: str, *, plugin: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.reason = message if reason is None else reason


def plugin_error(name: str, reason: str) -> PluginError:
    """The PluginError "plugin NAME: REASON"."""
    return PluginError(f"plugin {name}: {reason}", plugin=name, reason=reason)


def describe(exc: BaseException) -> str:
    """An exception as one readable line (the type only where the message needs it)."""
    text = " ".join(str(exc).split())
    if text and not isinstance(exc, LookupError):  # KeyError('x') reads as 'x'
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def find_plugin(name: str, *, is_path: bool = False) -> tuple[Any, str, str]:
    """Find a plugin target by name: (module or object, source, version).

    With ``is_path`` the name is only a module path (``mymodule``,
    ``package.module`` or ``package.module:attribute``).
    """
    from ternmq.plugins import BUILTIN

    if name in BUILTIN and not is_path:
        from ternmq import __version__

        return importlib.import_module(BUILTIN[name]), "builtin", __version__
    # A module written, or a package installed, since the broker started is found too.
    importlib.invalidate_caches()
    entry_points = () if is_path else importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for entry_point in entry_points:
        if entry_point.name == name:
            try:
                target = entry_point.load()
            except Exception as exc:
                raise plugin_error(
                    name,
                    f"entry point {entry_point.value} (group {ENTRY_POINT_GROUP}) failed to import: {describe(exc)}",
                ) from exc
            dist = entry_point.dist
            return target, f"entry point ({dist.name if dist else entry_point.value})", dist.version if dist else ""
    module_name, _, attribute = name.partition(":")
    if "." not in module_name and not attribute and not is_path:
        raise plugin_error(name, _unknown(sorted({entry_point.name for entry_point in entry_points})))
    target = _import(name, module_name)
    if attribute:
        try:
            target = getattr(target, attribute)
        except AttributeError:
            raise plugin_error(name, f"{module_name} has no {attribute}") from None
    version = getattr(target, "__version__", "")
    return target, f"path ({module_name})", str(version)


def _unknown(installed: list[str]) -> str:
    """Why a plain name resolves to nothing, and every way a plugin can be named."""
    from ternmq.plugins import BUILTIN

    # The essential ones are always loaded: naming them would not help.
    builtin = sorted(name for name in BUILTIN if name not in ESSENTIAL)
    return (
        f"not a built-in plugin ({', '.join(builtin)}), not an entry point "
        f"in group {ENTRY_POINT_GROUP} (installed: {', '.join(installed) or 'none'}) and not a dotted "
        "path (package.module, or module:object for a module outside a package); a plugin package is "
        "installed into the broker's environment with pip install PACKAGE"
    )


def _import(name: str, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise plugin_error(
                name, f"cannot import {module_name}: no module named {missing!r}; {IMPORT_HINT}"
            ) from exc
        # The module is there, but something it imports is not installed.
        raise plugin_error(
            name,
            f"importing {module_name} failed: {describe(exc)} (pip install what it "
            "needs into the broker's environment)",
        ) from exc
    except Exception as exc:
        raise plugin_error(name, f"importing {module_name} failed: {describe(exc)}") from exc
