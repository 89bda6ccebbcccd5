"""The service face: what plugins get in serve(), and the public import face.

Every operation is driven against a real broker with real clients; the import test
reads the source of plugins/, api/ and examples/ (ast) and fails on any import of a
private kernel module.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from ternmq.kernel import (
    ListenerConfig,
    ListenerInfo,
    Message,
    PluginError,
    PluginInfo,
    Service,
    SessionInfo,
    TopicError,
    TopicSubscription,
    hookimpl,
)
from ternmq.kernel.testing import registered

from helpers import connected, eventually, wait_offline

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = {"ternmq.kernel", "ternmq.kernel.testing"}


class Keeper:
    """Keeps the service it is given in serve()."""

    def __init__(self) -> None:
        self.service: Any = None

    async def serve(self, service: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.service = service
        task_status.started()
        await trio.sleep_forever()


@pytest.fixture
async def service(broker: Any) -> Any:
    keeper = Keeper()
    async with registered(broker, keeper, name="keeper"):
        yield keeper.service


async def test_serve_gets_the_service_face_not_the_broker(broker: Any, service: Any) -> None:
    assert type(service) is Service
    assert not hasattr(service, "sessions_dict") and not hasattr(service, "router")
    assert service.node_name == broker.node_name


async def test_publish_goes_through_the_publish_path(broker: Any, service: Service) -> None:
    async with connected(broker, "sub") as sub:
        await sub.subscribe("svc/#", qos=1)
        assert await service.publish("svc/t", b"from a plugin", qos=1, retain=True) == 1
        message = await sub.receive()
        assert (message.topic, message.payload, message.qos) == ("svc/t", b"from a plugin", 1)
    retained = await service.retained("svc/#")
    assert [(m.topic, m.payload) for m in retained] == [("svc/t", b"from a plugin")]
    await service.delete_retained("svc/t")
    assert await service.retained("svc/#") == ()
    with pytest.raises(TopicError):
        await service.publish("svc/+", b"x")
    with pytest.raises(ValueError, match="qos"):
        await service.publish("svc/t", b"x", qos=3)


async def test_subscribe_unsubscribe_and_query_sessions(broker: Any, service: Service) -> None:
    async with connected(broker, "owner", clean_start=False) as client:
        assert await service.subscribe("owner", [TopicSubscription("svc/on-behalf", 1)]) is True
        assert service.subscriptions("owner") == (TopicSubscription("svc/on-behalf", 1),)
        await service.publish("svc/on-behalf", b"x", qos=1)
        assert (await client.receive()).payload == b"x"
        (info,) = [s for s in service.sessions() if s.client_id == "owner"]
        assert isinstance(info, SessionInfo) and info.is_online and info.subscriptions == 1
        assert attrs.has(type(info)) and attrs.fields(type(info))  # frozen attrs value
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            info.client_id = "other"  # type: ignore[misc]
        assert await service.unsubscribe("owner", ["svc/on-behalf", "svc/never"]) == [True, False]
        snapshot = service.session("owner")
        assert snapshot is not None and snapshot.subscriptions == ()
    assert await service.subscribe("nobody", [TopicSubscription("a", 0)]) is False
    assert await service.unsubscribe("nobody", ["a"]) is None
    assert service.session("nobody") is None


async def test_disconnect_a_client(broker: Any, service: Service) -> None:
    async with connected(broker, "kicked-by-plugin") as client:
        assert service.disconnect("kicked-by-plugin", cleanup=True) is True
        assert (await client.closed()).reason_code == 0x98
    await eventually(lambda: service.session("kicked-by-plugin") is None)
    assert service.disconnect("kicked-by-plugin") is False


async def test_listeners_start_and_stop(broker: Any, service: Service) -> None:
    (first,) = service.listeners()
    assert isinstance(first, ListenerInfo) and first.status == "running" and first.port == broker.port()
    extra = await service.start_listener(ListenerConfig(name="extra", port=0))
    assert extra.status == "running" and extra.port > 0
    async with connected(extra.port, "on-extra"):
        pass
    assert service.stop_listener("extra") is True
    await eventually(lambda: {i.name: i.status for i in service.listeners()}["extra"] != "running")


async def test_plugins_load_reload_unload(broker: Any, service: Service) -> None:
    assert [p.name for p in service.plugins()] == ["retainer", "keeper"]
    info = await service.load_plugin("rec", {"tag": "x"}, path="plugin_samples:Recorder")
    assert isinstance(info, PluginInfo) and info.state == "running" and "auth_on_register" in info.hooks
    before = broker.plugins.loaded["rec"].plugin
    reloaded = await service.reload_plugin("rec")
    assert reloaded.name == "rec" and broker.plugins.loaded["rec"].plugin is not before
    await service.unload_plugin("rec")
    assert "rec" not in [p.name for p in service.plugins()]
    with pytest.raises(PluginError):
        await service.load_plugin("nosuch-plugin")
    assert [p.name for p in service.plugins()] == ["retainer", "keeper"]


async def test_a_reload_whose_new_instance_fails_keeps_the_old_one(
    broker: Any, service: Service, tmp_path: Path
) -> None:
    users = tmp_path / "users.json"
    users.write_text('{"alice": "secret"}')
    await service.load_plugin("auth", {"users_file": str(users)}, path="plugin_samples:UsersFile")
    old = broker.plugins.loaded["auth"].plugin
    users.write_text("{ not json")
    with pytest.raises(PluginError, match="auth"):
        await service.reload_plugin("auth")
    assert broker.plugins.loaded["auth"].plugin is old  # still loaded, still deciding
    async with connected(broker, "a", username="alice", password=b"secret"):
        pass


async def test_settings_and_metrics(broker: Any, service: Service) -> None:
    assert service.settings.no_match == "allow"
    service.apply_settings(attrs.evolve(service.settings, no_match="deny"))
    assert broker.settings.no_match == "deny"
    async with connected(broker, "m") as client:
        assert (await client.publish("m/t", b"x", qos=1)).reason_code == 0x87
        metrics = service.metrics()
    assert metrics["counter.publish_denied"] == 1
    assert metrics["gauge.sessions"] == 1 and metrics["gauge.clients_online"] == 1


async def test_offline_session_gets_what_the_service_publishes(broker: Any, service: Service) -> None:
    async with connected(broker, "away", clean_start=False) as client:
        await client.subscribe("svc/queued", qos=1)
    await wait_offline(broker, "away", session_kept=True)
    assert await service.publish("svc/queued", b"later", qos=1) == 1
    async with connected(broker, "away", clean_start=False) as client:
        assert (await client.receive()).payload == b"later"


# -- the public import face ---------------------------------------------------------------


def private_kernel_imports(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("ternmq.kernel") and name not in PUBLIC:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    return found


@pytest.mark.parametrize("folder", ["plugins", "api", "examples"])
def test_plugins_api_and_examples_import_only_the_public_face(folder: str) -> None:
    assert private_kernel_imports(ROOT / folder) == []


def test_the_face_check_finds_a_private_import(tmp_path: Path) -> None:
    (tmp_path / "sneaky.py").write_text("from ternmq.kernel.broker import Broker\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert private_kernel_imports(tmp_path) == ["sneaky.py:1: ternmq.kernel.broker"]
    finally:
        ROOT = saved


def test_every_public_name_is_importable() -> None:
    import ternmq.kernel as kernel

    for name in kernel.__all__:
        assert getattr(kernel, name) is not None, name
    assert Message is kernel.Message and hookimpl is kernel.hookimpl


async def test_a_qos_that_only_equals_a_whole_number_is_refused(broker: Any, service: Service) -> None:
    async with connected(broker, "s", 5):
        with pytest.raises(ValueError, match="qos must be 0, 1 or 2"):
            await service.publish("t", b"x", qos=1.0)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="must be 0, 1 or 2"):
            await service.subscribe("s", [TopicSubscription("t", qos=1.0)])  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await service.subscribe("s", [TopicSubscription("t", qos=True)])
        assert service.subscriptions("s") == ()
