"""The admin commands of plugins: show, enable, disable and reload."""

from __future__ import annotations

from typing import Any

from ternmq.kernel import (
    AdminRegistry,
    Arguments,
    CommandError,
    ConfigError,
    PluginError,
    PluginInfo,
    Service,
    Table,
    Text,
    parse_value,
)

PLUGIN_COLUMNS = (
    "Node",
    "Plugin",
    "Type",
    "Hook(s)",
    "M:F/A",
    "source",
    "version",
    "state",
    "priority",
    "errors",
    "timeouts",
    "last error",
)


def plugin_row(info: PluginInfo, node: str) -> dict[str, Any]:
    """One row of ``plugin show``, in VerneMQ's words: a module of hook functions is a
    "module" plugin; a plugin object (a class with hooks, config, maybe serve) an
    "application"."""
    return {
        "Node": node,
        "Plugin": info.name,
        "Type": info.kind,
        "Hook(s)": list(info.hooks),
        "M:F/A": list(info.implementations),
        "source": info.source,
        "version": info.version,
        "state": info.state,
        "priority": info.priority,
        "errors": info.errors,
        "timeouts": info.timeouts,
        "last error": info.last_error,
    }


async def _plugin_show(service: Service, args: Arguments) -> Table:
    """Every node's plugins (VerneMQ lists them per node): this node's first, each in its
    calling order; a node that does not answer in time is left out."""
    plugin, hook = args.text_flag("plugin"), args.text_flag("hook")
    # The essential built-in plugins (admin) when asked for: --internal, or by name.
    internal = args.bool_flag("internal") or plugin is not None
    rows = [
        plugin_row(info, node.node) for node in await service.all_plugins(internal=internal) for info in node.plugins
    ]
    if plugin is not None:
        rows = [r for r in rows if r["Plugin"] == plugin]
    if hook is not None:
        rows = [r for r in rows if hook in r["Hook(s)"]]
    return Table(tuple(rows), PLUGIN_COLUMNS)


def _config_pairs(args: Arguments) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for pair in args.repeated.get("config", ()):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--config takes key=value, not {pair!r}")
        settings[key] = parse_value(value)
    return settings


async def _plugin_enable(service: Service, args: Arguments) -> Text:
    name = args.keys["name"]
    path = args.text_flag("path")
    try:
        await service.load_plugin(name, _config_pairs(args), path=path or None, source_name="command line")
    except (PluginError, ConfigError) as exc:
        raise CommandError(str(exc)) from None
    return Text("Done")


async def _plugin_disable(service: Service, args: Arguments) -> Text:
    try:
        await service.unload_plugin(args.keys["name"])
    except PluginError as exc:
        raise CommandError(str(exc)) from None
    return Text("Done")


async def _plugin_reload(service: Service, args: Arguments) -> Text:
    try:
        info = await service.reload_plugin(args.keys["name"])
    except (PluginError, ConfigError) as exc:
        raise CommandError(str(exc)) from None
    return Text(f"Done: {info.name} reloaded")


def register(registry: AdminRegistry) -> None:
    registry.describe("plugin", "Show, enable, disable and reload plugins.")
    registry.add(
        "plugin show",
        _plugin_show,
        help="List the loaded plugins of every node with their hooks and error counts.",
        flags={
            "plugin": "only this plugin",
            "hook": "only plugins implementing this hook",
            "internal": "also the essential built-in plugins (admin)",
        },
    )
    registry.add(
        "plugin enable",
        _plugin_enable,
        required=("name",),
        help="Load a plugin: a built-in name, an entry point name, or a dotted path.",
        keys={"name": "the plugin's name"},
        flags={
            "path": "dotted path (module or module:attribute) if name is not resolvable",
            "config": "key=value of the plugin's table (repeatable)",
        },
    )
    registry.add(
        "plugin disable",
        _plugin_disable,
        required=("name",),
        help="Unload a plugin (not an essential one: admin).",
        keys={"name": "the plugin's name"},
    )
    registry.add(
        "plugin reload",
        _plugin_reload,
        required=("name",),
        help="Load a plugin again with its table (files it reads are read again); if it cannot load, the running one stays.",
        keys={"name": "the plugin's name"},
    )
