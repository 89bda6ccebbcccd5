"""kernel/values/config.py: TOML into frozen attrs, every error naming the file, the table and the key."""

from __future__ import annotations

import importlib.resources
import math
import os
from pathlib import Path
from typing import Any

import attrs
import pytest

import ternmq.kernel
from ternmq.kernel.values.config import (
    EMBEDDED_DEFAULT,
    BrokerSettings,
    Config,
    ConfigError,
    Limits,
    ListenerConfig,
    PluginEntry,
    build_attrs,
    load_config,
    parse_config,
    require_listeners,
)

REPOSITORY = Path(ternmq.kernel.__file__).resolve().parent.parent


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, Path)):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return repr(value)


@pytest.fixture
def write(tmp_path: Path) -> Any:
    """``path = write(text)``: a TOML file in tmp_path."""
    counter = iter(range(1000))

    def make(text: str) -> Path:
        path = tmp_path / f"config{next(counter)}.toml"
        path.write_text(text)
        return path

    return make


def refused(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as error:
        load_config(path)
    return error.value


# ------------------------------------------------------------------- embedded default


def test_embedded_default_is_the_repository_plugins_toml() -> None:
    shipped = REPOSITORY / "kernel" / "default.toml"
    assert shipped.is_symlink()
    assert os.path.realpath(shipped) == str(REPOSITORY / "plugins.toml")
    embedded = importlib.resources.files("ternmq.kernel").joinpath("default.toml").read_text("utf-8")
    assert embedded == (REPOSITORY / "plugins.toml").read_text("utf-8")
    assert attrs.evolve(load_config(), source="x", directory=None) == attrs.evolve(
        load_config(REPOSITORY / "plugins.toml"), source="x", directory=None
    )


def test_embedded_default_is_a_loopback_development_broker() -> None:
    config = load_config()
    assert config.source == EMBEDDED_DEFAULT
    assert [(item.name, item.type, item.address, item.port) for item in config.listeners] == [
        ("default", "tcp", "127.0.0.1", 1883)
    ]
    assert config.broker.allow_anonymous is True
    assert [(p.name, p.enabled) for p in config.plugins] == [("sqlite_store", True), ("retainer", True)]


def test_embedded_default_states_every_limit_at_its_built_in_value() -> None:
    """plugins.toml documents each limit; its values are the attrs defaults."""
    text = (REPOSITORY / "plugins.toml").read_text("utf-8")
    for field in attrs.fields(Limits):
        assert f"\n{field.name} = " in text, field.name
    assert load_config().broker.limits == Limits()


def test_empty_file_gives_the_built_in_defaults(write: Any) -> None:
    path = write("")
    assert load_config(path) == Config(source=str(path), directory=path.parent)
    assert Config().broker.allow_anonymous is False  # only the embedded default opens up


# ------------------------------------------------------------------------ round trips


LIMIT_VALUES = {
    "max_packet_size": 268_435_455,
    "max_client_id_length": 23,
    "max_inflight": 65535,
    "max_queued_messages": 0,
    "max_subscriptions_per_client": 0,
    "max_topic_levels": 0,
    "max_topic_alias": 0,
    "max_keep_alive": 1,
    "connect_timeout": 0.25,
    "persistent_session_expiry": 3600,
    "max_session_expiry": 86400,
    "outbound_buffer_bytes": 1,
    "max_message_rate": 2.5,
}


def test_every_limits_key_has_a_round_trip_value() -> None:
    assert set(LIMIT_VALUES) == {field.name for field in attrs.fields(Limits)}


@pytest.mark.parametrize("key", sorted(LIMIT_VALUES))
def test_limits_key_round_trips(write: Any, key: str) -> None:
    value = LIMIT_VALUES[key]
    assert value != getattr(Limits(), key)
    limits = load_config(write(f"[broker.limits]\n{key} = {toml_value(value)}\n")).broker.limits
    assert limits == attrs.evolve(Limits(), **{key: value})


def test_limits_as_an_inline_table_and_integer_seconds(write: Any) -> None:
    limits = load_config(write("[broker]\nlimits = { max_inflight = 7, connect_timeout = 3 }\n")).broker.limits
    assert (limits.max_inflight, limits.connect_timeout) == (7, 3)


def test_broker_settings_round_trip(write: Any) -> None:
    settings = BrokerSettings(
        node_name="n1@10.0.0.1",
        allow_anonymous=True,
        data_dir="/var/lib/tq",
        hook_timeout=0.5,
        notification_timeout=9,
        control_socket="off",
        plugin_path=(Path("/opt/ternmq/plugins"), Path("/srv/more")),
    )
    text = "[broker]\n" + "".join(
        f"{k} = {toml_value(v)}\n" for k, v in attrs.asdict(settings).items() if k != "limits"
    )
    assert load_config(write(text)).broker == settings


def test_listeners_round_trip_in_order(write: Any) -> None:
    path = write("""
[[listeners]]
name = "plain"
port = 0
[[listeners]]
name = "secure"
type = "wss"
address = "0.0.0.0"
port = 8884
max_connections = 5
certfile = "c.pem"
keyfile = "k.pem"
cafile = "ca.pem"
require_certificate = true
use_identity_as_username = true
path = "/ws"
[[listeners]]
type = "ws"
""")
    assert load_config(path).listeners == (
        ListenerConfig(name="plain", port=0),
        ListenerConfig(
            name="secure",
            type="wss",
            address="0.0.0.0",
            port=8884,
            max_connections=5,
            certfile="c.pem",
            keyfile="k.pem",
            cafile="ca.pem",
            require_certificate=True,
            use_identity_as_username=True,
            path="/ws",
        ),
        ListenerConfig(name="listener2", type="ws"),
    )


def test_plugin_tables_keep_their_own_settings(write: Any) -> None:
    path = write("""
[plugins.retainer]
[plugins.passwd]
enabled = false
file = "users.json"
reload_interval = 5
[plugins."example_auth.plugin"]
users = ["a", "b"]
""")
    assert load_config(path).plugins == (
        PluginEntry("retainer", True, {}),
        PluginEntry("passwd", False, {"file": "users.json", "reload_interval": 5}),
        PluginEntry("example_auth.plugin", True, {"users": ["a", "b"]}),
    )


# ------------------------------------------------------------------------- validators


BAD_VALUES = [
    ("broker.limits", "max_packet_size", 1, "between 2 and 268435455"),
    ("broker.limits", "max_packet_size", 268_435_456, "between 2 and 268435455"),
    ("broker.limits", "max_client_id_length", 0, "between 1 and 65535"),
    ("broker.limits", "max_inflight", 0, "between 1 and 65535"),
    ("broker.limits", "max_inflight", 65536, "between 1 and 65535"),
    ("broker.limits", "max_queued_messages", -1, "must not be negative"),
    ("broker.limits", "max_subscriptions_per_client", -1, "must not be negative"),
    ("broker.limits", "max_topic_levels", -1, "must not be negative"),
    ("broker.limits", "max_topic_alias", 65536, "between 0 and 65535"),
    ("broker.limits", "max_keep_alive", 0, "between 1 and 65535"),
    ("broker.limits", "connect_timeout", 0, "greater than 0"),
    ("broker.limits", "connect_timeout", -0.5, "greater than 0"),
    ("broker.limits", "persistent_session_expiry", -1, "must not be negative"),
    ("broker.limits", "max_session_expiry", -1, "must not be negative"),
    ("broker.limits", "outbound_buffer_bytes", 0, "greater than 0"),
    ("broker.limits", "max_message_rate", -1, "must not be negative"),
    ("broker.limits", "max_message_rate", math.nan, "must not be negative"),
    ("broker.limits", "connect_timeout", math.nan, "greater than 0"),
    ("broker", "hook_timeout", 0, "greater than 0"),
    ("broker", "notification_timeout", -1, "greater than 0"),
    ("listeners", "type", "quic", "must be one of 'tcp', 'tls', 'ws', 'wss'"),
    ("listeners", "port", 65536, "between 0 and 65535"),
    ("listeners", "port", -1, "between 0 and 65535"),
    ("listeners", "max_connections", 0, "greater than 0"),
]


def config_text(table: str, key: str, value: Any, *, listener_name: str = "edge") -> str:
    if table == "listeners":
        return f'[[listeners]]\nname = "{listener_name}"\n{key} = {toml_value(value)}\n'
    return f"[{table}]\n{key} = {toml_value(value)}\n"


@pytest.mark.parametrize(
    ("table", "key", "value", "message"), BAD_VALUES, ids=[f"{t}.{k}={v}" for t, k, v, _ in BAD_VALUES]
)
def test_validator_refuses_value_naming_file_table_and_key(
    write: Any, table: str, key: str, value: Any, message: str
) -> None:
    path = write(config_text(table, key, value))
    error = refused(path)
    expected_table = "listeners.edge" if table == "listeners" else table
    assert (error.source, error.table, error.key) == (str(path), expected_table, key)
    assert str(error).startswith(f"{path}: [{expected_table}] {key}: ")
    assert message in str(error)


BAD_TYPES = [
    ("broker", "node_name", 5, "must be a string, not 5"),
    ("broker", "allow_anonymous", "yes", "must be true or false, not 'yes'"),
    ("broker", "no_match", "maybe", "must be one of 'allow', 'deny'"),
    ("broker", "hook_timeout", "5s", "must be a number"),
    ("broker", "hook_timeout", True, "must be a number"),
    ("broker.limits", "max_inflight", "many", "must be an integer, not 'many'"),
    ("broker.limits", "max_inflight", 1.5, "must be an integer, not 1.5"),
    ("broker.limits", "max_inflight", True, "must be an integer, not True"),
    ("listeners", "port", "1883", "must be an integer"),
    ("listeners", "certfile", 5, "must be"),
    ("listeners", "require_certificate", 1, "must be true or false"),
]


@pytest.mark.parametrize(
    ("table", "key", "value", "message"), BAD_TYPES, ids=[f"{t}.{k}={v!r}" for t, k, v, _ in BAD_TYPES]
)
def test_wrong_type_is_refused_naming_file_table_and_key(
    write: Any, table: str, key: str, value: Any, message: str
) -> None:
    path = write(config_text(table, key, value))
    error = refused(path)
    expected_table = "listeners.edge" if table == "listeners" else table
    assert (error.source, error.table, error.key) == (str(path), expected_table, key)
    assert message in str(error)


@pytest.mark.parametrize(
    ("text", "table", "key"),
    [
        ("[brokers]\n", "brokers", None),
        ("[listener]\nport = 1\n", "listener", None),
        ("[broker]\nallow_anonymus = true\n", "broker", "allow_anonymus"),
        ("[broker.limits]\nmax_inflights = 1\n", "broker.limits", "max_inflights"),
        ("[broker.limit]\nmax_inflight = 1\n", "broker", "limit"),
        ('[[listeners]]\nname = "x"\nhost = "0.0.0.0"\n', "listeners.x", "host"),
    ],
    ids=["table", "singular-listener-table", "broker-key", "limits-key", "limits-table-typo", "listener-key"],
)
def test_unknown_tables_and_keys_are_refused(write: Any, text: str, table: str, key: str | None) -> None:
    path = write(text)
    error = refused(path)
    assert (error.source, error.table, error.key) == (str(path), table, key)
    assert str(path) in str(error) and f"[{table}]" in str(error)
    assert "unknown" in str(error)


def test_unknown_key_error_lists_the_known_keys(write: Any) -> None:
    error = refused(write("[broker]\nallow_anonymus = true\n"))
    assert "allow_anonymous" in str(error).split("known keys")[1]


@pytest.mark.parametrize(
    ("text", "table", "key", "message"),
    [
        ('[[listeners]]\nname = "s"\ntype = "tls"\n', "listeners.s", "certfile", "needs certfile and keyfile"),
        (
            '[[listeners]]\nname = "s"\ntype = "wss"\ncertfile = "c.pem"\n',
            "listeners.s",
            "certfile",
            "needs certfile and keyfile",
        ),
        (
            '[[listeners]]\nname = "s"\ntype = "tls"\ncertfile = "c"\nkeyfile = "k"\nrequire_certificate = true\n',
            "listeners.s",
            "cafile",
            "require_certificate needs a cafile",
        ),
        (
            '[[listeners]]\nname = "s"\ntype = "tls"\ncertfile = "c"\nkeyfile = "k"\nuse_identity_as_username = true\n',
            "listeners.s",
            "use_identity_as_username",
            "cafile",
        ),
        (
            '[[listeners]]\nname = "p"\nuse_identity_as_username = true\n',
            "listeners.p",
            "use_identity_as_username",
            "tls or wss",
        ),
        ('[[listeners]]\nname = "a"\n[[listeners]]\nname = "a"\nport = 2\n', "listeners.a", "name", "unique"),
        ("listeners = 5\n", "listeners", None, "array of tables"),
        ('[listeners]\nname = "x"\n', "listeners", None, "array of tables"),
        ("listeners = [5]\n", "listeners.0", None, "must be a table"),
        ("[broker]\nlimits = 5\n", "broker.limits", None, "must be a table"),
        ("plugins = 5\n", "plugins", None, "table of [plugins.NAME] tables"),
        ("[plugins]\nretainer = true\n", "plugins.retainer", None, "must be a table"),
        ('[plugins.retainer]\nenabled = "yes"\n', "plugins.retainer", "enabled", "true or false"),
    ],
    ids=[
        "tls-no-certfile",
        "wss-no-keyfile",
        "require-cert-no-cafile",
        "identity-no-cafile",
        "identity-on-tcp",
        "duplicate-listener",
        "listeners-not-array",
        "listeners-table",
        "listener-not-table",
        "limits-not-table",
        "plugins-not-table",
        "plugin-not-table",
        "plugin-enabled",
    ],
)
def test_inconsistent_tables_are_refused(write: Any, text: str, table: str, key: str | None, message: str) -> None:
    path = write(text)
    error = refused(path)
    assert (error.source, error.table, error.key) == (str(path), table, key)
    assert message in str(error)


def test_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    error = refused(path)
    assert error.source == str(path)
    assert str(error) == f"{path}: cannot read the file: No such file or directory"


def test_invalid_toml_is_refused_naming_the_file_and_line(write: Any) -> None:
    path = write('[broker]\nnode_name = "a"\nallow_anonymous = yes\n')
    error = refused(path)
    assert error.source == str(path)
    assert str(error).startswith(f"{path}: not valid TOML: ")
    assert "line 3" in str(error)


def test_directory_instead_of_file_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path)
    assert str(error).startswith(f"{tmp_path}: cannot read the file")


def test_listener_without_a_name_is_named_by_position(write: Any) -> None:
    config = load_config(write("[[listeners]]\nport = 0\n[[listeners]]\nport = 1\n"))
    assert [item.name for item in config.listeners] == ["listener0", "listener1"]


def test_unnamed_listener_error_names_it_by_position(write: Any) -> None:
    error = refused(write("[[listeners]]\nport = 0\n[[listeners]]\nport = 99999\n"))
    assert (error.table, error.key) == ("listeners.1", "port")


def test_build_attrs_requires_fields_without_default() -> None:
    with pytest.raises(ConfigError) as error:
        build_attrs(ListenerConfig, {"port": 1}, "command line", "listener start")
    assert (error.value.source, error.value.table, error.value.key) == ("command line", "listener start", "name")
    assert str(error.value) == "command line: [listener start] name: is required"


def test_parse_config_accepts_an_already_parsed_document() -> None:
    config = parse_config({"broker": {"limits": {"max_inflight": 3}}, "listeners": [{"name": "a", "port": 0}]}, "api")
    assert (config.source, config.broker.limits.max_inflight, config.listeners[0].port) == ("api", 3, 0)


def test_config_objects_are_frozen() -> None:
    config = load_config()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.broker.limits.max_inflight = 1  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.listeners[0].port = 1  # type: ignore[misc]


# ------------------------------------------------------------- paths and listeners


def test_the_directory_of_a_file_is_its_absolute_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "ternmq.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/ternmq.toml")
    assert config.source == "etc/ternmq.toml"  # messages name the file as it was given
    assert config.directory == config.base_directory == tmp_path / "etc"
    assert load_config().directory is None and load_config().base_directory == tmp_path


def test_plugin_path_is_relative_to_the_folder_of_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "ternmq.toml"
    path.write_text('[broker]\nplugin_path = ["plugins", "../shared", "/opt/ternmq"]\n')
    monkeypatch.chdir("/")
    assert load_config(path).broker.plugin_path == (
        tmp_path / "etc" / "plugins",
        tmp_path / "etc" / ".." / "shared",
        Path("/opt/ternmq"),
    )
    assert load_config().broker.plugin_path == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"plugins"', "must be a list of paths (strings), not 'plugins'"),
        ("[5]", "must be a list of paths (strings), not [5]"),
        ('[""]', "must not hold an empty path"),
    ],
    ids=["string", "number", "empty"],
)
def test_plugin_path_must_be_a_list_of_paths(write: Any, value: str, message: str) -> None:
    path = write(f"[broker]\nplugin_path = {value}\n")
    error = refused(path)
    assert (error.table, error.key) == ("broker", "plugin_path")
    assert message in str(error)


@attrs.frozen
class WithPaths:
    users_file: Path | None = None
    certificate: Path = Path("/etc/default.pem")
    extra: tuple[Path, ...] = ()
    label: str = "plain.txt"


def test_build_attrs_joins_relative_path_keys_to_the_base(tmp_path: Path) -> None:
    built = build_attrs(
        WithPaths,
        {"users_file": "users.json", "certificate": "/abs/c.pem", "extra": ["a", "/b"], "label": "kept.txt"},
        "f.toml",
        "plugins.p",
        base=tmp_path,
    )
    assert built == WithPaths(tmp_path / "users.json", Path("/abs/c.pem"), (tmp_path / "a", Path("/b")), "kept.txt")
    # Without a base (a value already resolved, as `set` re-validates) paths are kept as they are.
    assert build_attrs(WithPaths, {"users_file": "users.json"}, "f.toml", "plugins.p").users_file == Path("users.json")
    assert build_attrs(WithPaths, {}, "f.toml", "plugins.p", base=tmp_path) == WithPaths()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("users_file", 5, "must be a path (a string), not 5"),
        ("users_file", "", "must not be empty"),
        ("certificate", None, "must be a path (a string), not None"),
        ("extra", "a", "must be a list of paths (strings), not 'a'"),
    ],
)
def test_build_attrs_refuses_what_is_not_a_path(tmp_path: Path, key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_attrs(WithPaths, {key: value}, "f.toml", "plugins.p", base=tmp_path)
    assert (error.value.source, error.value.table, error.value.key) == ("f.toml", "plugins.p", key)
    assert message in str(error.value)


def test_a_configuration_to_run_needs_a_listener(write: Any) -> None:
    path = write("[broker]\nallow_anonymous = true\n")
    config = load_config(path)  # a file may be read without listeners (ternmq-admin does)
    with pytest.raises(ConfigError) as error:
        require_listeners(config)
    assert (error.value.source, error.value.table, error.value.key) == (str(path), "listeners", None)
    assert str(error.value).startswith(f"{path}: [listeners]: no listener")
    assert "[[listeners]]" in str(error.value)
    require_listeners(load_config())  # the embedded default has one
