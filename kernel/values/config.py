"""The broker's configuration: plugins.toml read with tomllib into frozen attrs objects.

Every error names the file, the table and the key, so an operator can fix it without
reading code. The embedded default (used when ``ternmq`` starts without ``--config``)
is the ``plugins.toml`` at the repository root, shipped inside the package.

A key whose attrs field is typed ``pathlib.Path`` (also ``Path | None`` and
``tuple[Path, ...]``) takes a string in TOML; a relative one is joined to the folder of
the configuration file, so that a configuration means the same files whatever folder
the broker is started from.
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
    if not value > 0:  # "not >": TOML's nan is no number of seconds either
        raise ValueError("must be greater than 0")


def _not_negative(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not value >= 0:
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


def check_mountpoint(mountpoint: str) -> None:
    """ValueError for a mountpoint that could not be told apart inside a topic (the
    listener key, the ``mountpoint`` modifier of auth_on_register)."""
    if any(char in mountpoint for char in "/+#\0"):
        raise ValueError("a mountpoint may not contain '/', '+', '#' or NUL")


def _mountpoint(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    check_mountpoint(value)


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
    # PUBLISH packets a second each client may send (0: no limit); beyond it the broker
    # reads its packets more slowly (VerneMQ's max_message_rate).
    max_message_rate: float = attrs.field(default=0, validator=_not_negative)


@attrs.frozen
class BrokerSettings:
    """The ``[broker]`` table."""

    node_name: str = "ternmq@127.0.0.1"
    allow_anonymous: bool = False
    # What a publish, subscribe or unsubscribe gets when no plugin answers its decision
    # hook (EMQX's name). allow_anonymous decides only a CONNECT nobody answers.
    no_match: str = attrs.field(default="allow", validator=_one_of("allow", "deny"))
    data_dir: str = "./data"
    hook_timeout: float = attrs.field(default=5.0, validator=_positive)
    notification_timeout: float = attrs.field(default=2.0, validator=_positive)
    # The ternmq-admin control socket: "" = a per-user path derived from node_name,
    # "off" = none, anything else = that path.
    control_socket: str = ""
    # Folders put in front of the broker's sys.path before plugins are imported.
    plugin_path: tuple[Path, ...] = attrs.field(factory=tuple)
    # Broker processes sharing the listeners' ports (``ternmq --workers``): above 1, each
    # is a node of the [cluster] and ``ternmq`` supervises them (kernel/workers.py).
    workers: int = attrs.field(default=1, validator=_positive)
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
    # The topic namespace of the listener's clients (VerneMQ's listener mountpoint).
    mountpoint: str = attrs.field(default="", validator=_mountpoint)

    @property
    def uses_tls(self) -> bool:
        return self.type in ("tls", "wss")


@attrs.frozen
class PluginEntry:
    """One ``[plugins.NAME]`` table (or ``[cluster]``): ``enabled`` plus the plugin's
    own keys."""

    name: str
    enabled: bool = True
    settings: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Config:
    """A whole configuration; ``source`` is the file it came from.

    ``directory`` is the folder relative paths of the configuration are joined to
    (the file's folder); None when it came from no file: the working directory.
    """

    source: str = EMBEDDED_DEFAULT
    broker: BrokerSettings = attrs.field(factory=BrokerSettings)
    listeners: tuple[ListenerConfig, ...] = ()
    plugins: tuple[PluginEntry, ...] = ()
    directory: Path | None = None

    @property
    def base_directory(self) -> Path:
        """Where a relative path of this configuration points from."""
        return self.directory if self.directory is not None else Path.cwd()


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
        return {
            "str": "a string",
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "Path": "a path (a string)",
        }.get(annotation.__name__, annotation.__name__)
    if _path_kind(annotation) == "many":
        return "a list of paths (strings)"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation) if arg is not type(None))
    return str(annotation).replace("NoneType", "None")


def _path_kind(annotation: Any) -> str | None:
    """ "one" for ``Path`` or ``Path | None``, "many" for ``tuple[Path, ...]`` or
    ``list[Path]``, None for any other annotation."""
    if annotation is Path:
        return "one"
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and Path in arguments:
        return "one"
    if origin in (tuple, list) and arguments and arguments[0] is Path:
        return "many"
    return None


def _as_path(value: str | Path, base: Path | None) -> Path:
    path = Path(value)
    return path if base is None or path.is_absolute() else base / path


def _paths(value: Any, kind: str, base: Path | None) -> Any:
    """Strings (or Paths) of a path-typed key as Paths, relative ones joined to
    ``base``; any other value is returned as it is, for the type check to refuse."""
    if kind == "one":
        if value == "":
            raise ValueError("must not be empty (leave the key out instead)")
        if isinstance(value, (str, Path)):
            return _as_path(value, base)
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(item, (str, Path)) for item in value):
        if any(item == "" for item in value):
            raise ValueError("must not hold an empty path")
        return tuple(_as_path(item, base) for item in value)
    return value


def build_attrs(cls: type, table: Mapping[str, Any], source: str, table_name: str, *, base: Path | None = None) -> Any:
    """Build an attrs ``cls`` from a TOML table, refusing unknown keys and bad values.

    Nested attrs fields (``[broker.limits]``) are built recursively. Errors are
    :class:`ConfigError` naming ``source``, the table and the key. Strings of keys
    typed ``Path`` become Paths; with ``base``, relative ones are joined to it.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(source, table_name, None, "must be a table")
    fields = {field.name: field for field in _resolved_fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            source,
            table_name,
            unknown[0],
            f"unknown key (known keys: {', '.join(sorted(fields))})",
        )
    values: dict[str, Any] = {}
    for name, value in table.items():
        field = fields[name]
        if isinstance(field.type, type) and attrs.has(field.type):
            values[name] = build_attrs(field.type, value, source, f"{table_name}.{name}", base=base)
            continue
        kind = _path_kind(field.type)
        if kind is not None:
            try:
                value = _paths(value, kind, base)
            except ValueError as exc:
                raise ConfigError(source, table_name, name, str(exc)) from None
            if kind == "many" and not isinstance(value, tuple):
                raise ConfigError(source, table_name, name, f"must be {_type_name(field.type)}, not {value!r}")
        if not _check_type(value, field.type):
            raise ConfigError(source, table_name, name, f"must be {_type_name(field.type)}, not {value!r}")
        values[name] = tuple(value) if isinstance(value, list) else value
    missing = [f.name for f in fields.values() if f.default is attrs.NOTHING and f.name not in values]
    if missing:
        raise ConfigError(source, table_name, missing[0], "is required")
    if base is not None:
        # A relative default (users_file: Path = Path("users.json")) means the same
        # folder as the key written out would.
        for field in fields.values():
            kind = _path_kind(field.type)
            if kind and field.name not in values and not isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
                values[field.name] = _paths(field.default, kind, base)
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


#: Plugins configured by a top-level table of their own name instead of [plugins.NAME]:
#: ``[cluster]`` turns the cluster plugin on, loaded before every [plugins.NAME] one.
TOP_LEVEL_PLUGINS = ("cluster",)


def plugin_table_name(name: str) -> str:
    """Where a plugin's keys are in the configuration file (for errors)."""
    return name if name in TOP_LEVEL_PLUGINS else f"plugins.{name}"


def parse_config(data: Mapping[str, Any], source: str, directory: Path | None = None) -> Config:
    """Turn the parsed TOML document ``data`` into a :class:`Config`.

    ``directory`` is the folder relative paths are joined to (the file's); without it,
    the working directory.
    """
    unknown = sorted(set(data) - {"broker", "listeners", "plugins", *TOP_LEVEL_PLUGINS})
    if unknown:
        raise ConfigError(source, unknown[0], None, "unknown table (expected broker, listeners, plugins, cluster)")
    base = directory if directory is not None else Path.cwd()
    broker = build_attrs(BrokerSettings, data.get("broker", {}), source, "broker", base=base)
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
            raise ConfigError(
                source,
                table_name,
                "use_identity_as_username",
                "needs a tls or wss listener with a cafile (client certificates)",
            )
        listeners.append(listener)
    names = [listener.name for listener in listeners]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(source, f"listeners.{name}", "name", "listener names must be unique")
    raw_plugins = data.get("plugins", {})
    if not isinstance(raw_plugins, dict):
        raise ConfigError(source, "plugins", None, "must be a table of [plugins.NAME] tables")
    plugins = []
    tables = [(name, name, data[name]) for name in TOP_LEVEL_PLUGINS if name in data]
    for name, table_name, table in [
        *tables,
        *((name, f"plugins.{name}", table) for name, table in raw_plugins.items()),
    ]:
        if name in TOP_LEVEL_PLUGINS and table_name != name:
            raise ConfigError(source, table_name, None, f"configured by the [{name}] table")
        if not isinstance(table, dict):
            raise ConfigError(source, table_name, None, "must be a table")
        settings = dict(table)
        enabled = settings.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(source, table_name, "enabled", "must be true or false")
        plugins.append(PluginEntry(name=name, enabled=enabled, settings=settings))
    return Config(source=source, broker=broker, listeners=tuple(listeners), plugins=tuple(plugins), directory=directory)


def require_listeners(config: Config) -> None:
    """A broker to run needs a listener: without one it would start and serve nobody."""
    if not config.listeners:
        raise ConfigError(
            config.source,
            "listeners",
            None,
            "no listener: the broker would accept no client; add one, for example "
            '[[listeners]] name = "default" port = 1883',
        )


def load_config(path: str | Path | None = None) -> Config:
    """Read a TOML file (or the embedded default when ``path`` is None)."""
    directory: Path | None = None
    if path is None:
        text = importlib.resources.files("ternmq.kernel").joinpath("default.toml").read_text("utf-8")
        source = EMBEDDED_DEFAULT
    else:
        source = str(path)
        # Absolute now: the meaning of the configuration's relative paths must not
        # depend on a working directory that could change later.
        directory = Path(path).absolute().parent
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise ConfigError(source, "-", None, f"cannot read the file: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "-", None, f"not valid TOML: {exc}") from None
    return parse_config(data, source, directory)
