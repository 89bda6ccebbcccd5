"""The kernel's own admin commands (plugins add theirs via ``register_admin_commands``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import attrs

from .admin import AdminRegistry, Arguments, CommandError, Table, Text, cell_text, option_error, parse_value
from .admin_listeners import register_listener_commands
from .config import ConfigError, Limits, build_attrs
from .manager import PluginError
from .topics import TopicError, validate_topic_filter

if TYPE_CHECKING:
    from .broker import Broker

SESSION_COLUMNS = ("client_id", "is_online", "mountpoint", "peer_host", "peer_port", "user")
# Live settings for show/set: [broker] keys and [broker.limits] keys.
LIVE_BROKER_KEYS = ("allow_anonymous", "no_match", "hook_timeout", "notification_timeout")


def plugin_rows(broker: Broker) -> list[dict[str, Any]]:
    """The plugin listing shared by ``plugin show`` and the HTTP API, in calling order."""
    rows = []
    pm = broker.plugin_manager
    loaded_plugins = broker.plugins.loaded
    for name in broker.dispatcher.calling_order():
        loaded = loaded_plugins.get(name)
        if loaded is None:  # registered by hand (tests), not through the plugin manager
            continue
        callers = sorted(pm.get_hookcallers(loaded.plugin) or [], key=lambda caller: caller.name)
        stats = [(hook, s) for (plugin, hook), s in broker.dispatcher.stats.items() if plugin == name]
        rows.append(
            {
                "Plugin": name,
                # VerneMQ's words: a module of hook functions is a "module" plugin; a plugin
                # object (a class with hooks, config, maybe serve) is an "application".
                "Type": "module" if isinstance(loaded.plugin, ModuleType) else "application",
                "Hook(s)": [caller.name for caller in callers],
                "M:F/A": [_implementation(caller, loaded.plugin) for caller in callers],
                "source": loaded.source,
                "version": loaded.version,
                "state": loaded.state,
                "priority": loaded.settings.priority,
                "errors": sum(s.errors for _, s in stats),
                "timeouts": sum(s.timeouts for _, s in stats),
            }
        )
    return rows


def _implementation(caller: Any, plugin: object) -> str:
    """VerneMQ's M:F/A for one hook: module:function/number of declared arguments."""
    impl = next(i for i in caller.get_hookimpls() if i.plugin is plugin)
    function = impl.function
    return f"{function.__module__}:{function.__qualname__}/{len(impl.argnames)}"


def _plugin_show(broker: Broker, args: Arguments) -> Table:
    rows = plugin_rows(broker)
    plugin, hook = args.text_flag("plugin"), args.text_flag("hook")
    if plugin is not None:
        rows = [r for r in rows if r["Plugin"] == plugin]
    if hook is not None:
        rows = [r for r in rows if hook in r["Hook(s)"]]
    return Table(
        tuple(rows),
        ("Plugin", "Type", "Hook(s)", "M:F/A", "source", "version", "state", "priority", "errors", "timeouts"),
    )


def _config_pairs(args: Arguments) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for pair in args.repeated.get("config", ()):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--config takes key=value, not {pair!r}")
        settings[key] = parse_value(value)
    return settings


async def _plugin_enable(broker: Broker, args: Arguments) -> Text:
    name = args.keys["name"]
    path = args.text_flag("path")
    try:
        await broker.plugins.load(name, _config_pairs(args), source_name="command line", path=path or None)
    except (PluginError, ConfigError) as exc:
        raise CommandError(str(exc)) from None
    return Text("Done")


async def _plugin_disable(broker: Broker, args: Arguments) -> Text:
    try:
        await broker.plugins.unload(args.keys["name"])
    except PluginError as exc:
        raise CommandError(str(exc)) from None
    return Text("Done")


def _column_filter(name: str, wanted: str, args: Arguments) -> Callable[[Any], bool]:
    """``--name=value`` keeps cells equal to value; ``--name=~regex`` cells the regex matches."""
    if not wanted.startswith("~"):
        return lambda value: cell_text(value) == wanted
    try:
        pattern = re.compile(wanted[1:])
    except re.error as exc:
        raise args.usage_error(f"--{name}={wanted}: not a regular expression ({exc})") from None
    return lambda value: pattern.search("" if value is None else str(value)) is not None


def _session_show(broker: Broker, args: Arguments) -> Table:
    rows = broker.list_sessions()
    for row in rows:
        row.setdefault("mountpoint", "")
    known = (
        set(rows[0])
        if rows
        else set(SESSION_COLUMNS)
        | {"protocol", "clean_session", "listener", "subscriptions", "inflight", "queued", "node"}
    )
    columns: list[str] = []
    limit = args.int_flag("limit", 100, minimum=1)
    for name, value in args.flags.items():
        if name == "limit":
            continue
        if name not in known:
            raise args.usage_error(f"unknown session item --{name} (known: {', '.join(sorted(known))})")
        if value is not True:
            keep = _column_filter(name, str(value), args)
            rows = [row for row in rows if keep(row.get(name))]
        columns.append(name)
    columns = columns or list(SESSION_COLUMNS)
    return Table(tuple({c: row.get(c) for c in columns} for row in rows[:limit]), tuple(columns))


def _session_disconnect(broker: Broker, args: Arguments) -> Text:
    client_id = args.keys["client-id"]
    if not broker.disconnect_client(client_id, 0x98, cleanup=args.bool_flag("cleanup")):
        raise CommandError(f"no session with client id {client_id!r}")
    return Text("Done")


def _retain_topic(args: Arguments, default: str | None) -> str:
    """The ``--topic`` of the retain commands: a topic, or a filter with ``+``/``#``."""
    topic = args.text_flag("topic", default)
    if not topic:
        raise args.usage_error("--topic is required: --topic=<topic>, or a filter such as --topic='sensors/#'")
    if topic.startswith("$share/"):
        raise args.usage_error(f"--topic={topic}: a topic or topic filter, not a shared subscription")
    try:
        validate_topic_filter(topic)
    except TopicError as exc:
        raise args.usage_error(f"--topic={topic}: {exc}") from None
    return topic


async def _retained(broker: Broker, topic_filter: str) -> list[Any]:
    """The retained messages matching ``topic_filter``, by topic (the provider may
    return expired ones: they are not there any more)."""
    if not broker.retain_available:
        raise CommandError("no retainer plugin is loaded")
    messages = await broker.dispatcher.provide("retain_lookup", default=(), topic_filter=topic_filter)
    return sorted((m for m in messages if not m.expired()), key=lambda m: m.topic)


async def _retain_show(broker: Broker, args: Arguments) -> Table:
    topic = _retain_topic(args, "#")
    limit = args.int_flag("limit", 100, minimum=1)
    named = [column for column in ("payload", "qos") if args.bool_flag(column)]
    columns = ("topic", *named) if named else ("topic", "payload", "qos")
    rows = [
        {"topic": m.topic, "payload": m.payload.decode("utf-8", "replace"), "qos": m.qos}
        for m in (await _retained(broker, topic))[:limit]
    ]
    return Table(tuple({c: row[c] for c in columns} for row in rows), columns)


async def _retain_delete(broker: Broker, args: Arguments) -> Text:
    topic = _retain_topic(args, None)
    # A filter deletes every retained message it matches (as EMQX's retainer clean does);
    # the answer says how many, so that a typo shows as "No retained message".
    messages = await _retained(broker, topic)
    for message in messages:
        await broker.dispatcher.provide("retain_delete", topic=message.topic)
    where = f"matching {topic}" if "+" in topic or "#" in topic else f"on {topic}"
    if not messages:
        return Text(f"No retained message {where}")
    count = len(messages)
    return Text(f"Deleted {count} retained message{'' if count == 1 else 's'} {where}")


def _metrics_show(broker: Broker, args: Arguments) -> Text:
    return Text("\n".join(f"{name} = {value}" for name, value in sorted(broker.service.metrics().items())))


def _node_status(broker: Broker, args: Arguments) -> Table:
    values = broker.service.metrics()
    online = values["gauge.clients_online"]
    from ternmq import __version__

    rows = [
        ("node", broker.node_name),
        ("num_online", online),
        ("num_offline", values["gauge.sessions"] - online),
        ("msg_in", broker.metrics.publish_received),
        ("msg_out", broker.router.deliveries),
        ("queue_drop", broker.router.drops),
        ("num_subscriptions", values["gauge.subscriptions"]),
        ("version", __version__),
    ]
    return Table(tuple({"Status": k, "Value": v} for k, v in rows), ("Status", "Value"))


def _live_keys() -> list[str]:
    return list(LIVE_BROKER_KEYS) + [field.name for field in attrs.fields(Limits)]


def _show(broker: Broker, args: Arguments) -> Table:
    for name, value in args.flags.items():
        if value is not True:
            raise args.usage_error(f"show takes --{name} without a value (set {name}={value} changes it)")
    names = list(args.flags) or _live_keys() + sorted(broker.plugin_settings.entries)
    row: dict[str, Any] = {"node": broker.node_name}
    for name in names:
        if name in LIVE_BROKER_KEYS:
            row[name] = getattr(broker.settings, name)
        elif name in attrs.fields_dict(Limits):
            row[name] = getattr(broker.settings.limits, name)
        elif name in broker.plugin_settings.entries:
            row[name] = broker.plugin_settings.entries[name].read()
        else:
            raise CommandError(f"unknown setting {name}")
    return Table((row,), tuple(row))


def _set(broker: Broker, args: Arguments) -> Text:
    if not args.keys:
        raise args.usage_error("set needs key=value")
    plugin_settings = broker.plugin_settings.entries
    unknown = [k for k in args.keys if k not in plugin_settings and k not in _live_keys()]
    if unknown:
        raise CommandError(f"unknown setting {unknown[0]}")
    for name in [k for k in args.keys if k in plugin_settings]:
        try:
            plugin_settings[name].write(parse_value(args.keys[name]))
        except (ValueError, TypeError) as exc:
            raise CommandError(f"{name}: {exc}") from None
    broker_table = {k: parse_value(v) for k, v in args.keys.items() if k in LIVE_BROKER_KEYS}
    limit_table = {
        k: parse_value(v) for k, v in args.keys.items() if k not in LIVE_BROKER_KEYS and k not in plugin_settings
    }
    try:
        limits = build_attrs(Limits, {**attrs.asdict(broker.settings.limits), **limit_table}, "command line", "set")
        current = {
            f.name: getattr(broker.settings, f.name) for f in attrs.fields(type(broker.settings)) if f.name != "limits"
        }
        settings = build_attrs(type(broker.settings), {**current, **broker_table}, "command line", "set")
    except ConfigError as exc:
        raise option_error(exc, args) from None
    broker.apply_settings(attrs.evolve(settings, limits=limits))
    return Text("Done")


def register_kernel_commands(registry: AdminRegistry) -> None:
    """The commands of the kernel itself."""
    registry.describe("plugin", "Show, enable and disable plugins.")
    registry.add(
        "plugin show",
        _plugin_show,
        help="List loaded plugins with their hooks and error counts.",
        flags={"plugin": "only this plugin", "hook": "only plugins implementing this hook"},
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
        help="Unload a plugin.",
        keys={"name": "the plugin's name"},
    )
    registry.describe("session", "Show and disconnect client sessions.")
    registry.add(
        "session show",
        _session_show,
        any_flags=True,
        help="List sessions. --<item> adds a column, --<item>=value filters, --<item>=~regex matches; --limit=N.",
    )
    registry.add(
        "session disconnect",
        _session_disconnect,
        required=("client-id",),
        help="Disconnect a client (MQTT 5 reason 0x98).",
        keys={"client-id": "the client id"},
        flags={"cleanup": "also delete its session"},
    )
    register_listener_commands(registry)
    registry.describe("retain", "Show and delete retained messages.")
    registry.add(
        "retain show",
        _retain_show,
        help="List retained messages.",
        flags={
            "topic": "a topic filter (default #)",
            "limit": "rows (default 100)",
            "payload": "show the payload column (naming columns shows only those, with the topic)",
            "qos": "show the qos column",
        },
    )
    registry.add(
        "retain delete",
        _retain_delete,
        help="Delete the retained message of a topic, or every one a filter matches.",
        flags={"topic": "a topic, or a filter with + or # (quote it for the shell)"},
    )
    registry.describe("metrics", "Show metrics.")
    registry.add("metrics show", _metrics_show, help="Print every counter and gauge.")
    registry.describe("node", "This broker node.")
    registry.add("node status", _node_status, help="Node status summary.")
    registry.add("show", _show, any_flags=True, help="Show live settings: show --allow_anonymous --max_inflight.")
    registry.add("set", _set, any_keys=True, help="Change live settings: set allow_anonymous=false max_inflight=64.")
