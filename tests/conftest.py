"""Shared fixtures: a real broker on 127.0.0.1:0 and real clients (paho, mosquitto)."""

from __future__ import annotations

import atexit
import logging
import queue
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio
from hypothesis.configuration import set_hypothesis_home_dir
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from ternmq.kernel.broker import Broker
from ternmq.kernel.testing import MQTTTestClient, open_broker, test_config

from helpers import redis_server

pytest_plugins: list[str] = []

# hypothesis keeps caches in .hypothesis/ under the working directory; the test run
# leaves the checkout as it found it, so they go to a temporary folder, removed at exit.
_hypothesis_home = tempfile.mkdtemp(prefix="ternmq-hypothesis-")
set_hypothesis_home_dir(_hypothesis_home)
atexit.register(shutil.rmtree, _hypothesis_home, ignore_errors=True)


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    """A broker with the test defaults (anonymous allowed, retainer loaded)."""
    async with open_broker() as running:
        yield running


@pytest.fixture
def broker_factory() -> Callable[..., Any]:
    """``async with broker_factory(**test_config_kwargs) as broker:`` for custom configs."""

    @asynccontextmanager
    async def factory(**kwargs: Any) -> AsyncIterator[Broker]:
        async with open_broker(test_config(**kwargs)) as running:
            yield running

    return factory


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test if a ternmq logger recorded an ERROR with a traceback during it
    (``pytestmark = pytest.mark.usefixtures("no_tracebacks")`` for a whole file)."""
    caplog.set_level(logging.INFO, logger="ternmq")
    yield
    records = caplog.get_records("setup") + caplog.get_records("call") + caplog.records
    tracebacks = [
        record
        for record in records
        if record.name.startswith("ternmq")
        and record.levelno >= logging.ERROR
        and (record.exc_info or "Traceback" in record.getMessage())
    ]
    assert not tracebacks, "unexpected tracebacks:\n" + "\n".join(
        f"{r.name}: {r.getMessage()} {r.exc_info[1]!r}" if r.exc_info else f"{r.name}: {r.getMessage()}"
        for r in tracebacks
    )


@pytest.fixture
def client(broker: Broker) -> Callable[..., Any]:
    """``async with client(protocol_level=5) as c:`` — an MQTTTestClient of ``broker``."""

    def factory(protocol_level: int = 5, **kwargs: Any) -> Any:
        return MQTTTestClient.open(broker.port(), protocol_level, **kwargs)

    return factory


# -- paho-mqtt, driven from trio through worker threads ---------------------------------


class PahoClient:
    """A paho-mqtt client with its network loop in paho's thread; calls block, so
    tests call them through ``await c.call(method, ...)`` or the async helpers."""

    def __init__(self, client_id: str, protocol: int, **kwargs: Any) -> None:
        self.protocol = protocol
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack: Any = None
        self.disconnect_reason: Any = None
        self.subacks: queue.Queue[Any] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda client, userdata, message: self.messages.put(message)
        self.client.on_subscribe = lambda client, userdata, mid, codes, props: self.subacks.put(codes)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.connack = (flags, reason_code, properties)
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.disconnect_reason = reason_code
        self.disconnected.set()

    async def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: function(*args, **kwargs))

    async def connect(
        self,
        port: int,
        *,
        clean: bool | None = None,
        properties: Properties | None = None,
        keepalive: int = 60,
        wait: bool = True,
    ) -> Any:
        kwargs: dict[str, Any] = {"keepalive": keepalive}
        if self.protocol == paho.MQTTv5:
            kwargs["clean_start"] = True if clean is None else clean
            if properties is not None:
                kwargs["properties"] = properties
        await self.call(self.client.connect, "127.0.0.1", port, **kwargs)
        self.client.loop_start()
        if wait:
            ok = await trio.to_thread.run_sync(self.connected.wait, 5)
            assert ok, "no CONNACK within 5 s"
        return self.connack

    async def subscribe(self, topic: Any, qos: int = 0, **kwargs: Any) -> Any:
        await self.call(self.client.subscribe, topic, qos, **kwargs)
        return await trio.to_thread.run_sync(lambda: self.subacks.get(timeout=5))

    async def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> Any:
        info = await self.call(self.client.publish, topic, payload, qos, retain, properties)
        if qos:
            await trio.to_thread.run_sync(lambda: info.wait_for_publish(5))
        return info

    async def receive(self, timeout: float = 5.0) -> paho.MQTTMessage:
        return await trio.to_thread.run_sync(lambda: self.messages.get(timeout=timeout))

    async def nothing_received(self, wait: float = 0.3) -> bool:
        try:
            await trio.to_thread.run_sync(lambda: self.messages.get(timeout=wait))
        except queue.Empty:
            return True
        return False

    async def disconnect(self) -> None:
        await self.call(self.client.disconnect)
        await trio.to_thread.run_sync(self.disconnected.wait, 5)
        self.client.loop_stop()

    def close(self) -> None:
        try:
            self.client.disconnect()
        except Exception:
            pass
        self.client.loop_stop()
        # paho keeps an internal wake-up socket pair open until the client is collected;
        # reinitialise() closes it now, so no ResourceWarning (an error here) surfaces
        # at the end of the session.
        self.client.reinitialise()


@pytest.fixture
def paho_client() -> Any:
    """``c = paho_client("id", paho.MQTTv5)``: a PahoClient closed after the test."""
    made: list[PahoClient] = []

    def factory(client_id: str = "", protocol: int = paho.MQTTv311, **kwargs: Any) -> PahoClient:
        c = PahoClient(client_id, protocol, **kwargs)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()


# -- mosquitto_pub / mosquitto_sub -------------------------------------------------------


@pytest.fixture
def mosquitto() -> Any:
    """Run Debian's mosquitto_pub/mosquitto_sub: ``await mosquitto("mosquitto_pub", "-p", ...)``."""
    missing = [tool for tool in ("mosquitto_pub", "mosquitto_sub") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: apt-get install mosquitto-clients (bash .ci/run does it)")

    async def run(*args: str, timeout: float = 10.0, check: bool = True) -> trio.CompletedProcess[bytes]:
        with trio.fail_after(timeout):
            return await trio.run_process(list(args), capture_stdout=True, capture_stderr=True, check=check)

    return run


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A redis-server of this test module's own: ``redis://127.0.0.1:PORT/0``."""
    with redis_server() as url:
        yield url


@pytest.fixture
def prefix() -> str:
    """This test's Redis key prefix (a cluster's name, in effect): no test sees another's
    keys in the module's redis-server."""
    return f"tmq{uuid.uuid4().hex[:12]}"
