"""``admin``, the essential built-in plugin: the broker's admin commands and the control
socket come from it, it is loaded without being configured, and it cannot be disabled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from ternmq import __version__
from ternmq.kernel import (
    Arguments,
    CommandError,
    ConfigError,
    PluginError,
    Service,
    Table,
    Text,
    hookimpl,
)
from ternmq.kernel.admin_cli import request
from ternmq.kernel.broker import Broker
from ternmq.kernel.testing import open_broker, registered, test_config
from ternmq.plugins import BUILTIN, ESSENTIAL


async def test_admin_is_loaded_without_being_configured() -> None:
    config = test_config()
    assert [entry.name for entry in config.plugins] == ["retainer"]
    async with open_broker(config) as broker:
        loaded = broker.plugins.loaded["admin"]
        assert (loaded.source, loaded.version, loaded.state) == ("builtin", __version__, "running")
        assert list(broker.plugins.loaded) == ["admin", "retainer"]  # first, before the configured ones
        # Every command of the broker's own tree is the admin plugin's.
        owners = {command.owner for command in broker.admin.commands.values()}
        assert owners == {"admin"}
        assert {path[0] for path in broker.admin.commands} == {
            "cluster",
            "plugin",
            "session",
            "listener",
            "retain",
            "metrics",
            "node",
            "show",
            "set",
        }


async def test_plugin_show_lists_admin_as_builtin_when_asked() -> None:
    async with open_broker() as broker:
        service = broker.service
        assert [p.name for p in service.plugins()] == ["retainer"]
        internal = service.plugins(internal=True)
        assert [p.name for p in internal] == ["admin", "retainer"]
        assert (internal[0].source, internal[0].kind, internal[0].hooks) == (
            "builtin",
            "application",
            ("register_admin_commands", "register_config"),
        )
        shown = await service.run_command(["plugin", "show"])
        assert isinstance(shown, Table) and [row["Plugin"] for row in shown.rows] == ["retainer"]
        for argv in (["plugin", "show", "--internal"], ["plugin", "show", "--plugin=admin"]):
            shown = await service.run_command(argv)
            assert isinstance(shown, Table)
            rows = [row for row in shown.rows if row["Plugin"] == "admin"]
            assert [(row["source"], row["state"]) for row in rows] == [("builtin", "running")], argv


async def test_a_plugins_admin_table_configures_it() -> None:
    async with open_broker(test_config(plugins={"admin": {"priority": 3}, "retainer": {}})) as broker:
        assert broker.plugins.loaded["admin"].settings.priority == 3
        assert list(broker.plugins.loaded) == ["admin", "retainer"]  # loaded once


async def test_admin_cannot_be_turned_off_in_the_configuration() -> None:
    config = test_config(plugins={"retainer": {}})
    config = type(config)(
        source=config.source,
        broker=config.broker,
        listeners=config.listeners,
        plugins=(*config.plugins, type(config.plugins[0])("admin", False, {})),
    )
    with pytest.raises(BaseExceptionGroup) as caught:
        async with open_broker(config):
            pass  # pragma: no cover
    error: BaseException = caught.value
    while isinstance(error, BaseExceptionGroup):
        (error,) = error.exceptions
    assert isinstance(error, ConfigError)
    assert str(error) == "<test>: [plugins.admin] enabled: an essential plugin cannot be disabled"


async def test_admin_cannot_be_disabled_through_the_service_or_a_command() -> None:
    assert "admin" in ESSENTIAL and "admin" in BUILTIN
    async with open_broker() as broker:
        service = broker.service
        with pytest.raises(PluginError) as refused:
            await service.unload_plugin("admin")
        assert refused.value.plugin == "admin"
        assert str(refused.value) == (
            "plugin admin: is an essential built-in plugin (the admin commands and the control socket of "
            "ternmq-admin) and cannot be disabled"
        )
        with pytest.raises(CommandError, match="plugin admin: is an essential built-in plugin"):
            await service.run_command(["plugin", "disable", "name=admin"])
        assert broker.plugins.loaded["admin"].state == "running"
        assert await service.run_command(["plugin", "disable", "name=retainer"]) == Text("Done")
        assert isinstance(await service.run_command(["node", "status"]), Table)  # still there


async def test_admin_can_be_reloaded_and_keeps_its_commands() -> None:
    async with open_broker() as broker:
        info = await broker.service.reload_plugin("admin")
        assert info.name == "admin" and info.state == "running"
        assert isinstance(await broker.service.run_command(["node", "status"]), Table)


class Recorder:
    """A plugin whose admin command records what its handler gets."""

    def __init__(self) -> None:
        self.got: list[tuple[Any, Any]] = []

    @hookimpl
    def register_admin_commands(self, registry: Any) -> None:
        registry.add("recorder whoami", self.whoami, help="Say what the handler got.")

    async def whoami(self, service: Service, args: Arguments) -> Text:
        self.got.append((service, args))
        return Text(f"{type(service).__name__} of {service.node_name}")


async def test_a_plugins_command_handler_receives_the_service() -> None:
    async with open_broker() as broker:
        plugin = Recorder()
        async with registered(broker, plugin, name="recorder"):
            assert await broker.service.run_command(["recorder", "whoami"]) == Text(f"Service of {broker.node_name}")
            assert await broker.admin.run(broker.service, ["recorder", "whoami"]) == Text(
                f"Service of {broker.node_name}"
            )
        assert len(plugin.got) == 2
        for service, args in plugin.got:
            assert isinstance(service, Service) and not isinstance(service, Broker)
            assert isinstance(args, Arguments)


async def test_the_control_socket_is_the_admin_plugins(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl.sock")
    async with open_broker(test_config(control_socket=path)) as broker:
        plugin = Recorder()
        async with registered(broker, plugin, name="recorder"):
            reply = await trio.to_thread.run_sync(request, path, ["recorder", "whoami"])
            assert reply["ok"] is True and reply["human"] == f"Service of {broker.node_name}"
            assert isinstance(plugin.got[0][0], Service)
        reply = await trio.to_thread.run_sync(request, path, ["plugin", "disable", "name=admin"])
        assert reply["ok"] is False and "cannot be disabled" in reply["error"]
        # Reloading the plugin stops and starts the socket with it.
        await broker.service.reload_plugin("admin")
        reply = await trio.to_thread.run_sync(request, path, ["node", "status"])
        assert reply["ok"] is True
