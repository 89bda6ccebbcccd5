"""The plugin manager: finding, configuring, loading and unloading plugins.

Plugins are found by built-in short name, by entry point (the installed third-party
example, examples/third_party) and by dotted path (a module of hook functions, or
``module:attribute``); their table builds their typed ``Config`` and the kernel's own
keys (priority, hook_timeout, on_error, breaker_*). Loading and unloading at run time
must not drop a connection or lose a QoS 1 message, and the failure policy of a plugin
(its timeout, on_error, circuit breaker) shows end to end with real clients.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import paho.mqtt.client as paho
import pytest
import trio

import ternmq
from ternmq.kernel import PluginError, hookimpl
from ternmq.kernel.codec import Puback, Publish
from ternmq.kernel.testing import MQTTTestClient
from ternmq.kernel.values.config import ConfigError
from ternmq.plugins import retainer

import plugin_samples
from helpers import PLUGIN_SHOW_COLUMNS, eventually
from plugin_samples import (
    CALL_ORDER,
    Failer,
    Hanger,
    SampleConfig,
    SamplePlugin,
    Server,
    v311_connack_return_code,
)


async def plugin_row(broker: Any, name: str) -> dict[str, Any]:
    table = await broker.admin.run(broker.service, ["plugin", "show"])
    rows = [dict(row) for row in table.rows if row["Plugin"] == name]
    assert rows, f"{name} not in plugin show"
    return rows[0]


async def publish_qos1(client: MQTTTestClient, topic: str, payload: bytes = b"x") -> Puback:
    return await client.publish(topic, payload, qos=1)


@pytest.fixture
def json_auth(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The third-party example plugin, pip-installed into a folder that is on sys.path
    for the test only (this environment is left as it was)."""
    site = plugin_samples.json_auth_site(tmp_path_factory)
    monkeypatch.syspath_prepend(str(site))
    return site


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """``name = write_module("stem", source)``: a module in a folder on sys.path, under a
    unique name (returned), forgotten after the test."""
    folder = tmp_path / "modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    written: list[str] = []

    def write(stem: str, source: str) -> str:
        name = f"{stem}_{uuid.uuid4().hex[:8]}"
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


@pytest.fixture
def module_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package on sys.path whose module ``hooks`` is a plugin made of hook functions."""
    package = f"ternmq_sample_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "hooks.py").write_text(
        textwrap.dedent("""
        import attrs
        from ternmq.kernel import hookimpl, deny

        __version__ = "2.5.0"

        @attrs.frozen
        class Config:
            banned: str = "mallory"

        CONFIG = []

        @hookimpl
        def auth_on_register(client):
            if client.username == CONFIG[-1].banned:
                return deny(0x8A, "banned")
            return None
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"{package}.hooks"
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


# ------------------------------------------------------------------ finding plugins


async def test_retainer_loads_by_builtin_short_name_through_the_same_path(broker_factory: Any) -> None:
    async with broker_factory(plugins={}) as broker:
        assert not broker.retain_available
        loaded = await broker.plugins.load("retainer", {"max_messages": 5}, source_name="test.toml")
        assert loaded.source == "builtin"
        assert loaded.version == ternmq.__version__
        assert loaded.config == retainer.Config(max_messages=5)
        assert isinstance(loaded.plugin, retainer.Plugin) and loaded.plugin.config.max_messages == 5
        assert broker.retain_available
        row = await plugin_row(broker, "retainer")
        assert (row["source"], row["state"], row["Type"]) == ("builtin", "running", "application")
        assert {"retain_delete", "retain_lookup", "retain_store"} <= set(row["Hook(s)"])
        lookup = row["Hook(s)"].index("retain_lookup")
        assert row["M:F/A"][lookup] == "ternmq.plugins.retainer:Plugin.retain_lookup/1"
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("r1")
            await client.publish("kept/1", b"v", qos=1, retain=True)
            await client.subscribe("kept/#")
            message = await client.receive()
            assert (message.topic, message.payload, message.retain) == ("kept/1", b"v", True)


async def test_configured_retainer_is_listed_as_builtin(broker: Any) -> None:
    # The broker fixture loads [plugins.retainer] from its config, like any other table.
    row = await plugin_row(broker, "retainer")
    assert row["source"] == "builtin"
    assert row["version"] == ternmq.__version__


async def test_entry_point_plugin_is_found_by_name(broker_factory: Any, json_auth: Path, tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    users.write_text('{"alice": "secret"}')
    async with broker_factory(allow_anonymous=False) as broker:
        loaded = await broker.plugins.load("json_auth", {"users_file": str(users)})
        assert loaded.source == "entry point (ternmq-json-auth)"
        assert loaded.version == "1.0.0"
        assert type(loaded.config).__module__ == "ternmq_json_auth"
        assert loaded.config.users_file == users
        async with MQTTTestClient.open(broker.port()) as good, MQTTTestClient.open(broker.port()) as bad:
            assert (await good.connect("a", username="alice", password=b"secret")).reason_code == 0
            assert (await bad.connect("b", username="alice", password=b"nope")).reason_code == 0x86


async def test_dotted_path_module_of_hook_functions(broker: Any, module_plugin: str) -> None:
    loaded = await broker.plugins.load(module_plugin, {"banned": "eve"})
    module = sys.modules[module_plugin]
    assert loaded.plugin is module
    assert loaded.config == module.Config(banned="eve")
    assert loaded.source == f"path ({module_plugin})"
    assert loaded.version == "2.5.0"
    module.CONFIG.append(loaded.config)
    row = await plugin_row(broker, module_plugin)
    assert row["Type"] == "module" and row["Hook(s)"] == ["auth_on_register"]
    assert row["M:F/A"] == [f"{module_plugin}:auth_on_register/1"]
    async with MQTTTestClient.open(broker.port()) as eve, MQTTTestClient.open(broker.port()) as mallory:
        assert (await eve.connect("e", username="eve")).reason_code == 0x8A
        assert (await mallory.connect("m", username="mallory")).reason_code == 0


async def test_dotted_path_module_attribute_builds_the_typed_config(broker: Any) -> None:
    loaded = await broker.plugins.load("sample", {"greeting": "hi", "limit": 7}, path="plugin_samples:SamplePlugin")
    assert loaded.config == SampleConfig(greeting="hi", limit=7)
    assert isinstance(loaded.plugin, SamplePlugin) and loaded.plugin.config is loaded.config
    assert loaded.source == "path (plugin_samples)"
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("p")
        await client.publish("seen/1", qos=1)
    assert loaded.plugin.published == ["seen/1"]
    # Without path=, the dotted path is the name.
    other = await broker.plugins.load("plugin_samples:SamplePlugin")
    assert other.config == SampleConfig() and "plugin_samples:SamplePlugin" in broker.plugins.loaded


async def test_dotted_path_to_an_object_registers_it_as_it_is(broker: Any) -> None:
    loaded = await broker.plugins.load("ready", {"priority": 5}, path="plugin_samples:READY_MADE")
    assert loaded.plugin is plugin_samples.READY_MADE
    assert loaded.config is None  # it came with its own config, not one from the table
    assert loaded.plugin.config.greeting == "built by its module"
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("o")
        await client.publish("ready/1", qos=1)
    assert "ready/1" in loaded.plugin.published


async def test_settings_for_a_ready_made_object_are_refused_not_ignored(broker: Any) -> None:
    with pytest.raises(ConfigError) as refused:
        await broker.plugins.load("ready", {"greeting": "ignored?"}, path="plugin_samples:READY_MADE")
    assert "plugins.ready" in str(refused.value) and "greeting" in str(refused.value)
    assert "module:Class" in str(refused.value)
    assert "ready" not in broker.plugins.loaded


async def test_unknown_name_names_every_way_a_plugin_can_be_found(broker: Any, json_auth: Path) -> None:
    with pytest.raises(PluginError) as caught:
        await broker.plugins.load("nosuch")
    error = caught.value
    assert (error.plugin, str(error)) == ("nosuch", f"plugin nosuch: {error.reason}")
    assert error.reason.startswith(
        "not a built-in plugin (acl, api, banned, cluster, passwd, redis_store, retainer, sqlite_store, sys, webhooks), not an entry point in group ternmq.plugins "
        "(installed: json_auth) and not a dotted path"
    )
    assert "module:object" in error.reason and "pip install" in error.reason


async def test_a_module_that_fails_to_import_is_a_plugin_error(broker: Any, write_module: Any) -> None:
    broken = write_module("broken", "import attrs\nRATE = 1 / 0\n")
    with pytest.raises(PluginError) as caught:
        await broker.plugins.load(f"{broken}:Plugin")
    assert caught.value.reason == f"importing {broken} failed: division by zero"
    needy = write_module("needy", "import no_such_dependency_of_a_plugin\n")
    with pytest.raises(PluginError) as caught:
        await broker.plugins.load(f"{needy}:Plugin")
    assert f"importing {needy} failed: No module named 'no_such_dependency_of_a_plugin'" in caught.value.reason
    assert "pip install" in caught.value.reason
    with pytest.raises(PluginError) as caught:
        await broker.plugins.load("nowhere_to_be_found:Plugin")
    assert caught.value.reason.startswith(
        "cannot import nowhere_to_be_found: no module named 'nowhere_to_be_found'; the broker imports plugins itself"
    )
    assert "[broker] plugin_path" in caught.value.reason
    assert set(broker.plugins.loaded) == {"admin", "retainer"}  # admin: essential, always loaded


async def test_unresolvable_name_is_a_plugin_error(broker: Any) -> None:
    with pytest.raises(PluginError, match="nosuchplugin"):
        await broker.plugins.load("nosuchplugin")
    with pytest.raises(PluginError, match="cannot import"):
        await broker.plugins.load("x", path="no_such_package.module")
    with pytest.raises(PluginError, match="has no Nope"):
        await broker.plugins.load("x", path="plugin_samples:Nope")
    assert "x" not in broker.plugins.loaded


# ------------------------------------------------------------------ configuration


FRAGILE_PLUGIN = """
import attrs
from pathlib import Path
from ternmq.kernel import hookimpl
from ternmq.kernel.values.output import Text


@attrs.frozen
class Config:
    users_file: Path = Path("users.json")
    url: str = "db://nowhere"
    fail_in: str = ""

    def __attrs_post_init__(self):
        if self.fail_in == "config":  # a Config that checks more than types raises what it likes
            raise ConnectionRefusedError(f"cannot reach {self.url}")


class Plugin:
    Config = Config

    def __init__(self, config):
        self.config = config
        if config.fail_in == "constructor":
            self.users = config.users_file.read_text()

    async def serve(self, broker, *, task_status):
        if self.config.fail_in == "serve":
            raise ConnectionRefusedError("database unreachable")
        task_status.started()

    @hookimpl
    def on_publish(self, message):
        pass

    @hookimpl
    def register_admin_commands(self, registry):
        registry.describe("fragile", "Commands of a plugin that may not load.")
        registry.add("fragile show", lambda broker, args: Text("here"), help="Show.")

    @hookimpl
    def register_metrics(self, registry):
        registry.gauge("fragile.up", lambda: 1, help="1 while loaded")
"""


@pytest.mark.parametrize(
    ("stage", "reason"),
    [
        ("config", "its configuration was refused: cannot reach db://nowhere"),
        # users_file is relative: joined to the folder of the broker's configuration file.
        ("constructor", "set-up failed: [Errno 2] No such file or directory: '{base}/users.json'"),
        ("serve", "failed to start: database unreachable"),
    ],
    ids=["config", "constructor", "serve"],
)
async def test_a_plugin_whose_set_up_fails_is_not_loaded_and_leaves_nothing_registered(
    broker_factory: Any, write_module: Any, tmp_path: Path, stage: str, reason: str
) -> None:
    module = write_module("fragile", FRAGILE_PLUGIN)
    async with broker_factory() as broker:
        broker.config = attrs.evolve(broker.config, directory=tmp_path)  # as if read from a file in tmp_path
        with pytest.raises(PluginError) as caught:
            await broker.plugins.load("fragile", {"fail_in": stage}, path=f"{module}:Plugin")
        assert str(caught.value) == "plugin fragile: " + reason.format(base=tmp_path)
        assert "fragile" not in broker.plugins.loaded
        assert broker.plugin_manager.get_plugin("fragile") is None
        assert not broker.dispatcher.has("on_publish")
        assert "fragile" not in broker.dispatcher.policies
        assert ("fragile", "show") not in broker.admin.commands
        assert "fragile.up" not in broker.plugin_metrics.entries
        assert [row["Plugin"] for row in (await broker.admin.run(broker.service, ["plugin", "show"])).rows] == [
            "retainer"
        ]
        # The same plugin with a good table loads, with all it registers.
        (tmp_path / "users.json").write_text("{}")
        await broker.plugins.load("fragile", {"fail_in": ""}, path=f"{module}:Plugin")
        assert broker.dispatcher.has("on_publish") and ("fragile", "show") in broker.admin.commands
        assert broker.service.metrics()["gauge.fragile.up"] == 1


async def test_path_keys_of_a_plugin_table_resolve_against_the_configuration_folder(
    broker_factory: Any, write_module: Any, tmp_path: Path
) -> None:
    module = write_module("fragile", FRAGILE_PLUGIN)
    async with broker_factory() as broker:
        broker.config = attrs.evolve(broker.config, directory=tmp_path / "etc")
        loaded = await broker.plugins.load("a", {"users_file": "users.json"}, path=f"{module}:Plugin")
        assert loaded.config.users_file == tmp_path / "etc" / "users.json"
        loaded = await broker.plugins.load("b", {"users_file": "/srv/users.json"}, path=f"{module}:Plugin")
        assert loaded.config.users_file == Path("/srv/users.json")
        with pytest.raises(ConfigError, match=r"\[plugins.c\] users_file: must be a path \(a string\), not 5"):
            await broker.plugins.load("c", {"users_file": 5}, path=f"{module}:Plugin")


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"colour": "red"}, "colour"),  # unknown key of the plugin
        ({"limit": "many"}, "limit"),  # wrong type for the plugin's own key
        ({"on_error": "maybe"}, "on_error"),  # bad value of a kernel key
        ({"hook_timeout": "soon"}, "hook_timeout"),
        ({"priority": 1.5}, "priority"),
    ],
)
async def test_bad_table_is_refused_naming_the_plugin_table_and_key(
    broker: Any, table: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        await broker.plugins.load(
            "sample", table, source_name="/etc/ternmq/plugins.toml", path="plugin_samples:SamplePlugin"
        )
    assert caught.value.table == "plugins.sample"
    assert caught.value.key == key
    assert str(caught.value).startswith(f"/etc/ternmq/plugins.toml: [plugins.sample] {key}:")
    assert "sample" not in broker.plugins.loaded
    assert broker.plugin_manager.get_plugin("sample") is None


async def test_plugin_without_config_refuses_any_own_key(broker: Any) -> None:
    with pytest.raises(ConfigError, match=r"\[plugins.f\] retries: unknown key"):
        await broker.plugins.load("f", {"retries": 3}, path="plugin_samples:Failer")


async def test_kernel_keys_of_the_table_are_applied(broker: Any) -> None:
    table = {
        "priority": 3,
        "hook_timeout": 0.25,
        "on_error": "next",
        "breaker_threshold": 4,
        "breaker_cooldown": 1.5,
        "greeting": "yo",
    }
    loaded = await broker.plugins.load("sample", table, path="plugin_samples:SamplePlugin")
    assert loaded.config == SampleConfig(greeting="yo")  # kernel keys are not the plugin's
    policy = broker.dispatcher.policies["sample"]
    assert (
        policy.priority,
        policy.hook_timeout,
        policy.on_error,
        policy.breaker_threshold,
        policy.breaker_cooldown,
    ) == (3, 0.25, "next", 4, 1.5)
    assert (await plugin_row(broker, "sample"))["priority"] == 3


async def test_priority_changes_the_calling_order(broker: Any) -> None:
    async def order() -> list[str]:
        CALL_ORDER.clear()
        async with MQTTTestClient.open(broker.port()) as client:
            assert (await client.connect("o")).reason_code == 0
        return list(CALL_ORDER)

    await broker.plugins.load("a", {"tag": "a"}, path="plugin_samples:Recorder")
    await broker.plugins.load("b", {"tag": "b"}, path="plugin_samples:Recorder")
    assert await order() == ["a", "b"]  # first loaded, first asked
    await broker.plugins.unload("a")
    await broker.plugins.load("a", {"tag": "a"}, path="plugin_samples:Recorder")
    assert await order() == ["b", "a"]  # enabled again at run time: asked after b
    await broker.plugins.unload("a")
    await broker.plugins.unload("b")
    await broker.plugins.load("a", {"tag": "a"}, path="plugin_samples:Recorder")
    await broker.plugins.load("b", {"tag": "b", "priority": 1}, path="plugin_samples:Recorder")
    assert await order() == ["b", "a"]  # a priority comes before the loading order


async def test_misspelt_hookimpl_fails_the_load_naming_it(broker: Any) -> None:
    with pytest.raises(PluginError, match="auth_on_registr") as caught:
        await broker.plugins.load("typo", path="plugin_samples:Misspelt")
    assert "typo" in str(caught.value)
    assert "typo" not in broker.plugins.loaded
    assert broker.plugin_manager.get_plugin("typo") is None


# ------------------------------------------------------------------ serve


async def test_serve_runs_in_its_own_scope_and_its_socket_and_task_end_at_unload(broker: Any) -> None:
    loaded = await broker.plugins.load("server", path="plugin_samples:Server")
    server = loaded.plugin
    assert isinstance(server, Server) and server.port
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        assert await stream.receive_some(10) == b"hi\n"
    assert not server.stopped and not server.child_cancelled
    await broker.plugins.unload("server")
    assert server.stopped and server.child_cancelled
    assert loaded.state == "unloaded" and loaded.done.is_set()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", server.port)
    # The broker itself serves on.
    async with MQTTTestClient.open(broker.port()) as client:
        assert (await client.connect("after")).reason_code == 0


async def test_serve_failing_before_started_fails_the_load_cleanly(broker: Any) -> None:
    with pytest.raises(PluginError, match="broken") as caught:
        await broker.plugins.load("broken", path="plugin_samples:BrokenServe")
    assert "database unreachable" in repr(caught.value.__cause__) or "database unreachable" in str(caught.value)
    assert "broken" not in broker.plugins.loaded
    assert broker.plugin_manager.get_plugin("broken") is None
    assert not broker.dispatcher.has("on_publish")
    async with MQTTTestClient.open(broker.port()) as client:
        assert (await client.connect("still")).reason_code == 0
        await client.subscribe("s/#")
        await client.publish("s/1", b"ok", qos=1)
        assert (await client.receive()).payload == b"ok"
    # The name is free again.
    await broker.plugins.load("broken", path="plugin_samples:SamplePlugin")
    assert broker.plugins.loaded["broken"].state == "running"


# ------------------------------------------------------------------ at run time, with clients


async def test_load_unload_reload_while_clients_publish_drops_nothing(broker: Any, paho_client: Any) -> None:
    total = 200
    sub = paho_client("flow-sub", paho.MQTTv311)
    pub = paho_client("flow-pub", paho.MQTTv311)
    await sub.connect(broker.port())
    await pub.connect(broker.port())
    await sub.subscribe("flow/#", qos=1)
    sent = 0
    samples: list[SamplePlugin] = []

    async def publisher() -> None:
        nonlocal sent
        for index in range(total):
            info = await pub.publish(f"flow/{index}", str(index).encode(), qos=1)
            assert info.is_published()
            sent += 1

    async def after(count: int) -> None:
        await eventually(lambda: sent >= count, timeout=20)

    async def operator() -> None:
        plugins = broker.plugins
        await after(20)
        samples.append((await plugins.load("sample", {"greeting": "v1"}, path="plugin_samples:SamplePlugin")).plugin)
        await after(50)
        await plugins.unload("sample")
        samples.append((await plugins.load("sample", {"greeting": "v2"}, path="plugin_samples:SamplePlugin")).plugin)
        await after(80)
        await plugins.unload("retainer")
        await after(110)
        await plugins.load("retainer", {"max_messages": 10})
        await after(140)
        await plugins.unload("retainer")
        await plugins.load("retainer", {"max_messages": 20})
        await plugins.unload("sample")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        nursery.start_soon(operator)
    received = set()
    with trio.fail_after(10):
        while len(received) < total:
            received.add((await sub.receive()).payload)
    assert received == {str(i).encode() for i in range(total)}
    assert not sub.disconnected.is_set() and not pub.disconnected.is_set()
    assert sub.client.is_connected() and pub.client.is_connected()
    assert [s.config.greeting for s in samples] == ["v1", "v2"]
    assert samples[0].published and samples[1].published  # each saw part of the flow
    assert broker.plugins.loaded["retainer"].config.max_messages == 20
    await sub.disconnect()
    await pub.disconnect()


async def test_decision_in_flight_while_its_plugin_unloads_still_answers(broker: Any) -> None:
    loaded = await broker.plugins.load("slow", {"delay": 0.5, "code": 0x97}, path="plugin_samples:SlowDenier")
    plugin = loaded.plugin
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("inflight")
        await client.send(Publish("slow/1", b"x", 1, False, False, 1, {}))
        await plugin.entered.wait()
        await broker.plugins.unload("slow")
        assert "slow" not in broker.plugins.loaded
        puback = await client.expect(Puback)
        assert (puback.packet_id, puback.reason_code) == (1, 0x97)  # the plugin's own answer
        # The next publish is no longer asked of it: the default policy allows.
        assert (await client.publish("slow/2", qos=1)).reason_code == 0x10
        assert plugin.calls == 1


async def test_unloading_the_only_auth_plugin_keeps_the_broker_closed(broker_factory: Any) -> None:
    async with broker_factory(allow_anonymous=False) as broker:
        await broker.plugins.load("auth", {"password": "pw"}, path="plugin_samples:PasswordAuth")
        async with MQTTTestClient.open(broker.port()) as inside:
            assert (await inside.connect("inside", username="u", password=b"pw")).reason_code == 0
            await broker.plugins.unload("auth")
            async with MQTTTestClient.open(broker.port()) as late:
                connack = await late.connect("late", username="u", password=b"pw")
                assert connack.reason_code == 0x86
            assert await v311_connack_return_code(broker.port(), "late3", "u", b"pw") == 5
            assert await v311_connack_return_code(broker.port(), "anon3") == 5
            await inside.ping()
            assert type(await inside.next_packet()).__name__ == "Pingresp"


# ------------------------------------------------------------------ failure policy, end to end


async def test_hook_timeout_of_the_plugin_table_refuses_a_hanging_publish(broker: Any) -> None:
    assert broker.settings.hook_timeout == 5.0
    await broker.plugins.load("hang", {"hook_timeout": 0.3}, path="plugin_samples:Hanger")
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("h")
        started = trio.current_time()
        puback = await client.publish("h/1", qos=1)
        elapsed = trio.current_time() - started
    assert puback.reason_code == 0x80
    assert 0.25 <= elapsed < 2.0
    row = await plugin_row(broker, "hang")
    assert (row["timeouts"], row["errors"]) == (1, 0)


async def test_on_error_next_lets_the_next_plugin_decide(broker: Any) -> None:
    failing = (
        await broker.plugins.load("failing", {"on_error": "next", "priority": 1}, path="plugin_samples:Failer")
    ).plugin
    await broker.plugins.load("decider", {"code": 0x97, "priority": 2}, path="plugin_samples:SlowDenier")
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("n")
        assert (await client.publish("n/1", qos=1)).reason_code == 0x97
        assert failing.calls == 1
        assert (await plugin_row(broker, "failing"))["errors"] == 1
        # The same plugin with on_error = "deny" (the default) refuses instead.
        await broker.plugins.unload("failing")
        await broker.plugins.load("failing", {"priority": 1}, path="plugin_samples:Failer")
        assert (await client.publish("n/2", qos=1)).reason_code == 0x80


async def test_error_and_timeout_counts_appear_in_plugin_show(broker: Any) -> None:
    await broker.plugins.load("failing", {"on_error": "next"}, path="plugin_samples:Failer")
    await broker.plugins.load("hanging", {"on_error": "next", "hook_timeout": 0.1}, path="plugin_samples:Hanger")
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("c")
        for index in range(3):
            assert (await client.publish(f"c/{index}", qos=1)).reason_code == 0x10
    failing = await plugin_row(broker, "failing")
    hanging = await plugin_row(broker, "hanging")
    assert (failing["errors"], failing["timeouts"]) == (3, 0)
    assert (hanging["errors"], hanging["timeouts"]) == (0, 3)
    assert set(failing) == set(PLUGIN_SHOW_COLUMNS)


@pytest.mark.parametrize(("on_error", "while_open"), [("deny", 0x80), ("next", 0x10)])
async def test_circuit_breaker_skips_the_plugin_then_tries_it_after_the_cooldown(
    broker: Any, on_error: str, while_open: int
) -> None:
    failer = (
        await broker.plugins.load(
            "failing",
            {"breaker_threshold": 2, "breaker_cooldown": 0.5, "on_error": on_error},
            path="plugin_samples:Failer",
        )
    ).plugin
    assert isinstance(failer, Failer)
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("b")
        for expected_calls in (1, 2):
            assert (await client.publish("b/1", qos=1)).reason_code == while_open
            assert failer.calls == expected_calls
        opened = trio.current_time()
        for _ in range(3):  # open: not called, the policy answers
            assert (await client.publish("b/1", qos=1)).reason_code == while_open
        assert failer.calls == 2
        assert trio.current_time() - opened < 0.5
        await trio.sleep(0.55)
        assert (await client.publish("b/1", qos=1)).reason_code == while_open
        assert failer.calls == 3  # called again after the cool-down
    assert (await plugin_row(broker, "failing"))["errors"] == 3


async def test_hanging_plugin_does_not_stall_a_client_it_does_not_concern(broker: Any) -> None:
    hanger = (
        await broker.plugins.load("hang-a", {"client_id": "A", "hook_timeout": 1.2}, path="plugin_samples:Hanger")
    ).plugin
    assert isinstance(hanger, Hanger)
    async with MQTTTestClient.open(broker.port()) as a, MQTTTestClient.open(broker.port()) as b:
        await a.connect("A")
        await b.connect("B")
        await b.subscribe("t/#", qos=1)
        started = trio.current_time()
        await a.send(Publish("t/a", b"from A", 1, False, False, 7, {}))
        await eventually(lambda: hanger.calls == 1)
        with trio.fail_after(0.8):
            assert (await b.publish("t/b", b"from B", qos=1)).reason_code == 0
            message = await b.receive()
        assert message.payload == b"from B"
        assert trio.current_time() - started < 1.0  # while A's check still hangs
        puback = await a.expect(Puback, timeout=5)
        assert (puback.packet_id, puback.reason_code) == (7, 0x80)
        assert await b.nothing_received(0.2)  # A's refused message was not routed


@pytest.fixture(autouse=True)
def _clear_call_order() -> Iterator[None]:
    CALL_ORDER.clear()
    yield
    CALL_ORDER.clear()


class UnloadsItself:
    """A plugin whose background task unloads the plugin itself (as a command of a
    plugin's own HTTP server would)."""

    def __init__(self) -> None:
        self.unloaded: list[str] = []
        self.asked = trio.Event()

    @hookimpl
    def on_plugin_unloaded(self, name: str) -> None:
        self.unloaded.append(name)

    async def serve(self, service: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self.asked.wait()
        await service.unload_plugin("self-unloader")


async def test_a_plugin_unloading_itself_from_its_own_task_is_unloaded_whole(broker: Any) -> None:
    watcher = UnloadsItself()  # another instance only listens for on_plugin_unloaded
    await broker.plugins.register("watcher", watcher)
    plugin = UnloadsItself()
    await broker.plugins.register("self-unloader", plugin)
    plugin.asked.set()
    await eventually(lambda: watcher.unloaded == ["self-unloader"], timeout=10)
    assert "self-unloader" not in broker.plugins.loaded
    assert all(name != "self-unloader" for name, _ in broker.dispatcher.stats)
