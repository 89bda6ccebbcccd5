"""Helpers shared by the test files (``from helpers import ...``; fixtures live in conftest.py).

Clients: :func:`connected` (an MQTTTestClient that got CONNACK 0), :func:`watched` (a
subscribed bystander that proves, at the end of its block, that nobody else was hurt),
:func:`packets_until_close` / :func:`raw_until_close` / :func:`expect_refused_close`.
Waiting: :func:`eventually` (its twin outside trio: :func:`eventually_sync`), :func:`wait_offline`.
Hook plugins: :class:`Gate`, :class:`Recorder`, :class:`DropRecorder`, :func:`client_info`.
paho: :func:`paho_props`.
"""

from __future__ import annotations

import importlib.util
import inspect
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import attrs
import coredis
import paho.mqtt.client as paho
import pytest
import trio
from paho.mqtt.properties import Properties

from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Connack, Disconnect
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.testing import MQTTTestClient
from ternmq.kernel.values.types import ClientInfo, Message

LEVELS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]
PAHO = [pytest.param(paho.MQTTv311, id="paho-v311"), pytest.param(paho.MQTTv5, id="paho-v5")]
PERSISTENT = {"session_expiry_interval": 60}
BYSTANDER_TOPIC = "bystander/news"
# The columns of `plugin show`, VerneMQ's first (Plugin, Type, Hook(s), M:F/A).
PLUGIN_SHOW_COLUMNS = (
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


# -- waiting ------------------------------------------------------------------------------


async def eventually(
    condition: Callable[[], Any], timeout: float = 5.0, *, message: str = "", interval: float = 0.005
) -> Any:
    """Call ``condition`` every ``interval`` seconds until it returns something true, and
    return that; an AssertionError (``message``, if any) after ``timeout`` seconds.

    ``condition`` may be an async function (awaited, within the same timeout)."""
    with trio.move_on_after(timeout):
        while not (result := await _awaited(condition())):
            await trio.sleep(interval)
        return result
    raise AssertionError(f"not true within {timeout} s: {message or condition}")


def eventually_sync(
    condition: Callable[[], Any], timeout: float = 5.0, *, message: str = "", interval: float = 0.005
) -> Any:
    """:func:`eventually` for code outside trio (it blocks with ``time.sleep``)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {message or condition}")
        time.sleep(interval)
    return result


async def _awaited(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def session_rows(broker: Broker) -> list[dict[str, Any]]:
    """The broker's sessions as the service face lists them, one dict per session."""
    return [attrs.asdict(info) for info in broker.service.sessions()]


def is_online(broker: Broker, client_id: str) -> bool:
    return any(row["client_id"] == client_id and row["is_online"] for row in session_rows(broker))


async def wait_offline(broker: Broker, client_id: str, *, session_kept: bool = False) -> None:
    """Until the broker has detached ``client_id``'s connection; with ``session_kept``
    its session must still be there, otherwise it may also have ended."""
    await eventually(lambda: not is_online(broker, client_id) and (not session_kept or client_id in broker.sessions))


async def left_subscribed(broker: Broker, client_id: str, topic_filter: str, qos: int = 1) -> None:
    """A persistent MQTT 5 session subscribed to ``topic_filter`` whose client has
    disconnected: the broker queues for it from now on."""
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect(client_id, clean_start=False, properties=PERSISTENT)
        await client.subscribe(topic_filter, qos=qos)
        await client.disconnect()
    await wait_offline(broker, client_id, session_kept=True)


def session_row(broker: Broker, client_id: str) -> dict[str, Any]:
    return next(row for row in session_rows(broker) if row["client_id"] == client_id)


# -- MQTTTestClient -------------------------------------------------------------------------


@asynccontextmanager
async def connected(
    broker: Broker | int,
    client_id: str = "",
    level: int = 5,
    *,
    auto_ack: bool = True,
    clean_start: bool = True,
    expiry: int | None = None,
    **connect: Any,
) -> AsyncIterator[MQTTTestClient]:
    """An MQTTTestClient of ``broker`` (or of a port) that got CONNACK 0, kept as ``c.connack``.

    ``expiry`` is the v5 session expiry interval; a v5 client asking to keep its session
    (``clean_start=False``) gets 60 s unless ``expiry`` or ``properties`` say otherwise.
    """
    port = broker if isinstance(broker, int) else broker.port()
    if level == 5 and "properties" not in connect:
        if expiry is None and not clean_start:
            expiry = 60
        if expiry is not None:
            connect["properties"] = {"session_expiry_interval": expiry}
    async with MQTTTestClient.open(port, level, auto_ack=auto_ack) as c:
        connack = await c.connect(client_id, clean_start=clean_start, **connect)
        assert isinstance(connack, Connack) and connack.reason_code == 0, connack
        c.connack = connack  # type: ignore[attr-defined]
        yield c


@asynccontextmanager
async def watched(broker: Broker, level: int = 4, *, stays_online: bool = False) -> AsyncIterator[MQTTTestClient]:
    """A bystander subscribed to ``bystander/#``; the block's end proves it and the broker
    are unharmed: it got nothing it didn't ask for, a fresh client can connect and publish
    to it (and, with ``stays_online``, its session is still online)."""
    async with connected(broker, "bystander", level) as bystander:
        suback = await bystander.subscribe("bystander/#", qos=1)
        assert suback.reason_codes == [1]
        yield bystander
        assert await bystander.nothing_received(0.05), "the bystander got something it didn't ask for"
        await broker_is_healthy(broker, bystander, b"still here")
        if stays_online:
            assert is_online(broker, "bystander")


async def broker_is_healthy(broker: Broker, bystander: Any, payload: bytes) -> None:
    """A fresh client can connect and publish, and the bystander receives it."""
    async with connected(broker, "fresh-publisher", 4) as fresh:
        await fresh.publish(BYSTANDER_TOPIC, payload, qos=1)
    message = await bystander.receive()
    assert (message.topic, message.payload) == (BYSTANDER_TOPIC, payload)


async def packets_until_close(client: MQTTTestClient, timeout: float = 5.0) -> list[Any]:
    """Everything the broker sends until it closes the connection (fails if it doesn't)."""
    packets = []
    while (packet := await client.next_packet(timeout)) is not None:
        packets.append(packet)
    return packets


async def raw_until_close(client: MQTTTestClient, timeout: float = 5.0) -> bytes:
    """The raw bytes the broker sends until it closes (for answers our codec can't decode)."""
    received = b""
    with trio.fail_after(timeout):
        while True:
            try:
                data = await client.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return received
            if not data:
                return received
            received += data


async def expect_refused_close(client: MQTTTestClient, reason_code: int, timeout: float = 5.0) -> None:
    """The broker closes; an MQTT 5 client is told ``reason_code`` first, a 3.1.1 one nothing."""
    packets = await packets_until_close(client, timeout)
    if client.protocol_level == 5:
        assert [(type(p), p.reason_code) for p in packets] == [(Disconnect, reason_code)], packets
    else:
        assert packets == [], packets


# -- hook plugins ---------------------------------------------------------------------------


class Gate:
    """Holds a hook until the test releases it, to see what happened before and after."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.release = trio.Event()

    async def hold(self) -> None:
        self.entered.set()
        await self.release.wait()


class Recorder:
    """Base of notification-hook recorders: ``_record`` keeps each call (with a snapshot
    the subclass takes) and holds at the gate, if any; ``of(hook)`` lists one hook's calls."""

    def __init__(self, broker: Any = None, gate: Gate | None = None) -> None:
        self.broker = broker
        self.gate = gate
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def of(self, hook: str) -> list[dict[str, Any]]:
        return [kwargs for name, kwargs in self.calls if name == hook]

    async def _record(self, hook: str, **kwargs: Any) -> None:
        self.calls.append((hook, kwargs))
        if self.gate is not None:
            await self.gate.hold()


class DropRecorder:
    """Records on_message_drop notifications as ``(client_id, payload, reason)``."""

    def __init__(self) -> None:
        self.drops: list[tuple[str, bytes, str]] = []

    @hookimpl
    def on_message_drop(self, client_id: str, message: Message, reason: str) -> None:
        self.drops.append((client_id, message.payload, reason))


def client_info(
    broker: Any, client: MQTTTestClient, client_id: str, username: str | None = None, level: int = 5
) -> ClientInfo:
    """The ClientInfo the broker should pass for ``client``."""
    return ClientInfo(
        client_id,
        username=username,
        peer_host="127.0.0.1",
        peer_port=client.stream.socket.getsockname()[1],
        protocol_level=level,
        listener="test",
        mountpoint="",
        node=broker.node_name,
        tls_common_name=None,
    )


# -- paho ---------------------------------------------------------------------------------


def paho_props(packet_type: int, **values: Any) -> Properties:
    """paho Properties of ``packet_type`` (a PacketTypes member) with the given fields."""
    props = Properties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


# -- the broker-process helpers, for test files outside tests/kernel -----------------------


def plugin_samples() -> Any:
    """tests/kernel/plugin_samples.py (the broker-process helpers), imported by path:
    tests/kernel is only on sys.path while pytest runs the tests there."""
    name = "plugin_samples"
    if name not in sys.modules:
        path = Path(__file__).parent / "kernel" / "plugin_samples.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@asynccontextmanager
async def paho_subscriber(port: int, topic: str, protocol: int, qos: int = 1) -> AsyncIterator[list[Any]]:
    """A paho client in a thread, subscribed to ``topic`` when the block starts; the
    block's end waits (up to 10 s) for its first message. Yields the messages it got."""
    received: list[Any] = []
    subscribed = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def run() -> None:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"paho-{topic}", protocol=protocol)
        client.on_subscribe = lambda *args: token.run_sync_soon(subscribed.set)
        client.on_message = lambda c, u, message: received.append(message)
        client.connect("127.0.0.1", port)
        client.subscribe(topic, qos=qos)
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            client.loop(0.05)
        client.disconnect()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, run)
        await subscribed.wait()
        yield received


# -- Redis (the cluster's tests) ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server of the caller's own on a free port, with nothing kept on disk:
    ``redis://127.0.0.1:PORT/0``; stopped, and its folder removed, at the end."""
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    folder = tempfile.mkdtemp(prefix="tmq-redis-")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        eventually_sync(lambda: process.poll() is not None or answers_ping(port), 10, message="redis-server start")
        assert process.poll() is None, f"redis-server exited with {process.returncode}"
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        shutil.rmtree(folder, ignore_errors=True)


class StoreThatCannotCommit:
    """A store that takes records (kept here, across brokers, as a file would be) but does
    not make them durable while ``failing``: its commit raises (a full disk), or with
    ``hang`` never returns (register it with a short ``hook_timeout``: a timeout logs no
    traceback). Set ``failing`` to False for a disk that has room again."""

    def __init__(self, *, hang: bool = False) -> None:
        self.records: dict[tuple[str, str], bytes] = {}
        self.hang = hang
        self.failing = True

    @hookimpl
    async def record_load(self, namespace: str) -> dict[str, bytes]:
        return {key: value for (space, key), value in self.records.items() if space == namespace}

    @hookimpl
    def record_save(self, namespace: str, key: str, value: bytes) -> None:
        self.records[namespace, key] = value

    @hookimpl
    def record_delete(self, namespace: str, key: str) -> None:
        self.records.pop((namespace, key), None)

    @hookimpl
    async def store_commit(self) -> None:
        if not self.failing:
            return
        if self.hang:
            await trio.sleep_forever()
        raise OSError("disk full")


@asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[coredis.Redis[bytes]]:
    """A coredis client of the test's redis-server (bytes in, bytes out)."""
    async with coredis.Redis.from_url(url, decode_responses=False) as redis:
        yield redis


class ClusterNode:
    """One ``ternmq --config FILE`` process, a node of a cluster (``[cluster]``, quick
    heartbeats), with ``plugins`` (TOML tables) loaded before it: the retainer by default."""

    def __init__(
        self, directory: Path, name: str, redis_url: str, prefix: str, *, plugins: str = "[plugins.retainer]\n"
    ) -> None:
        samples = plugin_samples()
        self.name = name
        short = name.split("@")[0]
        self.config = directory / f"{short}.toml"
        self.config.write_text(f'''
[broker]
node_name = "{name}"
allow_anonymous = true
control_socket = "{directory / short}.sock"

[[listeners]]
name = "default"
port = 0

{plugins}
[cluster]
redis_url = "{redis_url}"
prefix = "{prefix}"
heartbeat_interval = 0.2
node_timeout = 1.0
''')
        self.env = samples.subprocess_env(directory)
        self.process = samples.BrokerProcess(["--config", str(self.config)], env=self.env, cwd=directory)

    @property
    def port(self) -> int:
        port: int = self.process.port
        return port

    def cluster_show(self) -> dict[str, str]:
        """``ternmq-admin cluster show`` as {node: running}, read off the table text."""
        result = self.admin("cluster", "show")
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
        rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
        assert rows and rows[0] == ["Node", "Running"], result.stdout
        return dict(rows[1:])

    def admin(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """``ternmq-admin ARGV...`` against this node."""
        result: subprocess.CompletedProcess[str] = plugin_samples().admin(
            "--config", str(self.config), *argv, env=self.env
        )
        return result

    def kill(self) -> None:
        self.process.process.send_signal(signal.SIGKILL)
        assert self.process.process.wait(10) == -signal.SIGKILL
        self.process.stop()  # closes its pipe; the process is gone already


@contextmanager
def cluster_processes(
    redis_url: str, prefix: str, *, plugins: str = "[plugins.retainer]\n"
) -> Iterator[list[ClusterNode]]:
    """Three nodes n1, n2, n3 as ``ternmq`` processes, ready (stopped at the end)."""
    with plugin_samples().short_dir() as directory:
        started: list[ClusterNode] = []
        try:
            for number in (1, 2, 3):
                started.append(ClusterNode(directory, f"n{number}@127.0.0.1", redis_url, prefix, plugins=plugins))
            for node in started:
                node.process.wait_ready()
            yield started
        finally:
            for node in started:
                node.process.stop()
