"""The broker's configuration: plugins.toml read with tomllib into frozen attrs objects.

Every error names the file, the table and the key, so an operator can fix it without
reading code. The embedded default (used when ``ternmq`` starts without ``--config``)
is the ``plugins.toml`` at the repository root, shipped inside the package.
"""

from __future__ import annotations

import functools
import importlib.resources
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

EMBEDDED_DEFAULT = "<embedded default>"
LISTENER_TYPES = ("tcp", "tls", "ws", "wss")


class ConfigError(Exception):
    """A configuration value is missing, unknown or wrong; the message says where."""

    def __init__(self, source: str, table: str, key: str | None, message: str) -> None:
        self.source = source
        self.table = table
        self.key = key
        # table "-" is the file as a whole (unreadable, not TOML): no table to name.
        where = "" if table == "-" else f"[{table}]" + (f" {key}" if key else "") + ": "
        super().__init__(f"{source}: {where}{message}")


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value <= 0:
        raise ValueError("must be greater than 0")


def _not_negative(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value < 0:
        raise ValueError("must not be negative")


def _one_of(*choices: str) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}")

    return check


def _between(low: int, high: int) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")

    return check


@attrs.frozen
class Limits:
    """Per-client and per-packet limits; exceeding one gets the MQTT reason code for it."""

    max_packet_size: int = attrs.field(default=1_048_576, validator=_between(2, 268_435_455))
    max_client_id_length: int = attrs.field(default=256, validator=_between(1, 65535))
    max_inflight: int = attrs.field(default=32, validator=_between(1, 65535))
    max_queued_messages: int = attrs.field(default=1000, validator=_not_negative)
    max_subscriptions_per_client: int = attrs.field(default=10_000, validator=_not_negative)
    max_topic_levels: int = attrs.field(default=128, validator=_not_negative)
    max_topic_alias: int = attrs.field(default=64, validator=_between(0, 65535))
    max_keep_alive: int = attrs.field(default=65535, validator=_between(1, 65535))
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    persistent_session_expiry: int = attrs.field(default=0, validator=_not_negative)
    max_session_expiry: int = attrs.field(default=0, validator=_not_negative)
    outbound_buffer_bytes: int = attrs.field(default=16 * 1_048_576, validator=_positive)


@attrs.frozen
class BrokerSettings:
    """The ``[broker]`` table."""

    node_name: str = "ternmq@127.0.0.1"
    allow_anonymous: bool = False
    data_dir: str = "./data"
    hook_timeout: float = attrs.field(default=5.0, validator=_positive)
    notification_timeout: float = attrs.field(default=2.0, validator=_positive)
    # The ternmq-admin control socket: "" = a per-user path derived from node_name,
    # "off" = none, anything else = that path.
    control_socket: str = ""
    limits: Limits = attrs.field(factory=Limits)


@attrs.frozen
class ListenerConfig:
    """One ``[[listeners]]`` entry."""

    name: str
    type: str = attrs.field(default="tcp", validator=_one_of(*LISTENER_TYPES))
    address: str = "127.0.0.1"
    port: int = attrs.field(default=1883, validator=_between(0, 65535))
    max_connections: int = attrs.field(default=10_000, validator=_positive)
    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None
    require_certificate: bool = False
    use_identity_as_username: bool = False
    path: str = "/mqtt"

    @property
    def uses_tls(self) -> bool:
        return self.type in ("tls", "wss")


@attrs.frozen
class PluginEntry:
    """One ``[plugins.NAME]`` table: ``enabled`` plus the plugin's own keys."""

    name: str
    enabled: bool = True
    settings: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Config:
    """A whole configuration; ``source`` is the file it came from."""

    source: str = EMBEDDED_DEFAULT
    broker: BrokerSettings = attrs.field(factory=BrokerSettings)
    listeners: tuple[ListenerConfig, ...] = ()
    plugins: tuple[PluginEntry, ...] = ()


# -- building attrs objects from TOML tables ---------------------------------------------


@functools.cache
def _resolved_fields(cls: type) -> tuple[attrs.Attribute[Any], ...]:
    attrs.resolve_types(cls)
    fields: tuple[attrs.Attribute[Any], ...] = attrs.fields(cls)
    return fields


def _check_type(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin in (dict, Mapping) or annotation is Mapping:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return {"str": "a string", "int": "an integer", "float": "a number",
                "bool": "true or false"}.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("NoneType", "None")


def build_attrs(cls: type, table: Mapping[str, Any], source: str, table_name: str) -> Any:
    """Build an attrs ``cls`` from a TOML table, refusing unknown keys and bad values.

    Nested attrs fields (``[broker.limits]``) are built recursively. Errors are
    :class:`ConfigError` naming ``source``, the table and the key.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(source, table_name, None, "must be a table")
    fields = {field.name: field for field in _resolved_fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            source, table_name, unknown[0],
            f"unknown key (known keys: {', '.join(sorted(fields))})",
        )
    values: dict[str, Any] = {}
    for name, value in table.items():
        field = fields[name]
        if isinstance(field.type, type) and attrs.has(field.type):
            values[name] = build_attrs(field.type, value, source, f"{table_name}.{name}")
            continue
        if not _check_type(value, field.type):
            raise ConfigError(source, table_name, name, f"must be {_type_name(field.type)}, not {value!r}")
        values[name] = tuple(value) if isinstance(value, list) else value
    missing = [f.name for f in fields.values() if f.default is attrs.NOTHING and f.name not in values]
    if missing:
        raise ConfigError(source, table_name, missing[0], "is required")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        key = _failing_key(cls, values, exc)
        raise ConfigError(source, table_name, key, str(exc)) from None


def _failing_key(cls: type, values: dict[str, Any], exc: Exception) -> str | None:
    """Find which key a validator refused, by re-running validators one at a time."""
    for field in _resolved_fields(cls):
        if field.name in values and field.validator is not None:
            try:
                field.validator(None, field, values[field.name])
            except (ValueError, TypeError):
                return field.name
    return None


# -- whole files ------------------------------------------------------------------------


def parse_config(data: Mapping[str, Any], source: str) -> Config:
    """Turn the parsed TOML document ``data`` into a :class:`Config`."""
    unknown = sorted(set(data) - {"broker", "listeners", "plugins"})
    if unknown:
        raise ConfigError(source, unknown[0], None, "unknown table (expected broker, listeners, plugins)")
    broker = build_attrs(BrokerSettings, data.get("broker", {}), source, "broker")
    raw_listeners = data.get("listeners", [])
    if not isinstance(raw_listeners, list):
        raise ConfigError(source, "listeners", None, "must be an array of tables: [[listeners]]")
    listeners = []
    for index, table in enumerate(raw_listeners):
        table_name = f"listeners.{index}" if not isinstance(table, dict) else f"listeners.{table.get('name', index)}"
        if isinstance(table, dict) and "name" not in table:
            table = {"name": f"listener{index}", **table}
        listener = build_attrs(ListenerConfig, table, source, table_name)
        if listener.uses_tls and not (listener.certfile and listener.keyfile):
            raise ConfigError(source, table_name, "certfile", f"a {listener.type} listener needs certfile and keyfile")
        if listener.require_certificate and not listener.cafile:
            raise ConfigError(source, table_name, "cafile", "require_certificate needs a cafile")
        if listener.use_identity_as_username and not (listener.uses_tls and listener.cafile):
            raise ConfigError(source, table_name, "use_identity_as_username",
                              "needs a tls or wss listener with a cafile (client certificates)")
        listeners.append(listener)
    names = [listener.name for listener in listeners]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(source, f"listeners.{name}", "name", "listener names must be unique")
    raw_plugins = data.get("plugins", {})
    if not isinstance(raw_plugins, dict):
        raise ConfigError(source, "plugins", None, "must be a table of [plugins.NAME] tables")
    plugins = []
    for name, table in raw_plugins.items():
        if not isinstance(table, dict):
            raise ConfigError(source, f"plugins.{name}", None, "must be a table")
        settings = dict(table)
        enabled = settings.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(source, f"plugins.{name}", "enabled", "must be true or false")
        plugins.append(PluginEntry(name=name, enabled=enabled, settings=settings))
    return Config(source=source, broker=broker, listeners=tuple(listeners), plugins=tuple(plugins))


def load_config(path: str | Path | None = None) -> Config:
    """Read a TOML file (or the embedded default when ``path`` is None)."""
    if path is None:
        text = importlib.resources.files("ternmq.kernel").joinpath("default.toml").read_text("utf-8")
        source = EMBEDDED_DEFAULT
    else:
        source = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise ConfigError(source, "-", None, f"cannot read the file: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "-", None, f"not valid TOML: {exc}") from None
    return parse_config(data, source)
