"""Testing helpers for ternmq and for plugin authors (also a pytest plugin).

* :func:`open_broker` runs a real broker on ``127.0.0.1`` with an ephemeral port.
* :class:`MQTTTestClient` is a small MQTT client over a real TCP connection that
  speaks through ternmq's own codec: it can send anything, including bad packets.
* :func:`registered` registers a plugin object for the duration of a ``with`` block.
* Fixtures (with pytest-trio): ``ternmq_broker`` (allow_anonymous on, retainer loaded)
  and ``ternmq_client`` (a connected MQTT 5 test client of that broker).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
import trio

from .broker import Broker
from .codec import (
    FIRST_FAILURE_CODE,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Framer,
    Pingreq,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
    Will,
    decode_packet,
    encode,
)
from .manager import KernelSettings, LoadedPlugin
from .values.config import BrokerSettings, Config, Limits, ListenerConfig, PluginEntry

__all__ = ["open_broker", "serving", "test_config", "MQTTTestClient", "registered"]


def test_config(
    *,
    allow_anonymous: bool = True,
    no_match: str = "allow",
    plugins: Mapping[str, Mapping[str, Any]] | None = None,
    listeners: tuple[ListenerConfig, ...] | None = None,
    control_socket: str = "off",
    **limits: Any,
) -> Config:
    """A config for tests: one TCP listener on 127.0.0.1:0, the retainer, given limits."""
    plugin_tables = {"retainer": {}} if plugins is None else plugins
    return Config(
        source="<test>",
        broker=BrokerSettings(
            allow_anonymous=allow_anonymous, no_match=no_match, control_socket=control_socket, limits=Limits(**limits)
        ),
        listeners=listeners or (ListenerConfig(name="test", port=0),),
        plugins=tuple(PluginEntry(name, True, dict(table)) for name, table in plugin_tables.items()),
    )


test_config.__test__ = False  # type: ignore[attr-defined]  # not a test, despite the name


@asynccontextmanager
async def open_broker(config: Config | None = None) -> AsyncIterator[Broker]:
    """Run a broker for the duration of the block; ``broker.port()`` is its port."""
    async with serving(Broker(config or test_config())) as broker:
        yield broker


@asynccontextmanager
async def serving(broker: Broker) -> AsyncIterator[Broker]:
    """Run an already built broker for the block: for plugins that must be registered
    before it starts (a session store is asked for its sessions at start)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.serve)
        try:
            yield broker
        finally:
            broker.stop()


@asynccontextmanager
async def registered(
    broker: Broker, plugin: Any, name: str | None = None, **settings: Any
) -> AsyncIterator[LoadedPlugin]:
    """Register ``plugin`` (an object with ``@hookimpl`` methods) for one block."""
    plugin_name = name or f"test-{type(plugin).__name__}-{id(plugin):x}"
    loaded = await broker.plugins.register(plugin_name, plugin, settings=KernelSettings(**settings))
    try:
        yield loaded
    finally:
        if plugin_name in broker.plugins.loaded:
            await broker.plugins.unload(plugin_name)


_PacketT = TypeVar("_PacketT")


class MQTTTestClient:
    """An MQTT client for tests; packets are ternmq codec objects.

    ``await client.connect(...)`` returns the CONNACK; ``publish``/``subscribe`` wait
    for their acknowledgements; ``receive()`` returns the next PUBLISH (QoS 1/2 ones are
    acknowledged automatically unless ``auto_ack`` is False); ``next_packet()`` returns
    whatever comes next, and ``send``/``send_raw`` put anything on the wire.
    """

    def __init__(self, stream: trio.abc.Stream, protocol_level: int = 5, *, auto_ack: bool = True) -> None:
        self.stream = stream
        self.protocol_level = protocol_level
        self.auto_ack = auto_ack
        self._framer = Framer()
        self._next_id = 0
        self._pending: list[Any] = []

    @classmethod
    @asynccontextmanager
    async def open(
        cls, port: int, protocol_level: int = 5, *, host: str = "127.0.0.1", auto_ack: bool = True
    ) -> AsyncIterator[MQTTTestClient]:
        stream = await trio.open_tcp_stream(host, port)
        client = cls(stream, protocol_level, auto_ack=auto_ack)
        try:
            yield client
        finally:
            await trio.aclose_forcefully(stream)

    def packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    async def send(self, packet: Any) -> None:
        await self.stream.send_all(encode(packet, self.protocol_level))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_packet(self, timeout: float = 5.0) -> Any:
        """The next packet from the broker; None if the broker closed the connection."""
        if self._pending:
            return self._pending.pop(0)
        with trio.fail_after(timeout):
            while (frame := self._framer.next_frame()) is None:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                if not data:
                    return None
                self._framer.feed(data)
        return decode_packet(frame[0], frame[1], self.protocol_level)

    async def expect(self, kind: type[_PacketT], timeout: float = 5.0) -> _PacketT:
        """The next packet of type ``kind``; publishes met on the way are kept."""
        skipped = []
        try:
            while True:
                packet = await self.next_packet(timeout)
                if packet is None:
                    raise AssertionError(f"connection closed while waiting for {kind.__name__}")
                if isinstance(packet, kind):
                    return packet
                skipped.append(packet)
        finally:
            self._pending = skipped + self._pending

    async def closed(self, timeout: float = 5.0) -> Any:
        """Wait until the broker closes; returns the DISCONNECT it sent first, if any."""
        disconnect = None
        while True:
            packet = await self.next_packet(timeout)
            if packet is None:
                return disconnect
            if isinstance(packet, Disconnect):
                disconnect = packet

    async def connect(
        self,
        client_id: str = "",
        *,
        clean_start: bool = True,
        keep_alive: int = 60,
        username: str | None = None,
        password: bytes | None = None,
        will: Will | None = None,
        properties: dict[str, Any] | None = None,
    ) -> Connack | Any:
        await self.send(
            Connect(
                client_id,
                self.protocol_level,
                clean_start,
                keep_alive,
                username,
                password,
                will,
                properties or {},
                "MQIsdp" if self.protocol_level == 3 else "MQTT",
            )
        )
        return await self.next_packet()

    async def publish(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        properties: dict[str, Any] | None = None,
    ) -> Any:
        """Publish; returns the PUBACK (QoS 1), the PUBCOMP or refusing PUBREC (QoS 2)."""
        packet_id = self.packet_id() if qos else None
        await self.send(Publish(topic, payload, qos, retain, False, packet_id, properties or {}))
        if qos == 1:
            return await self.expect(Puback)
        if qos == 2:
            pubrec = await self.expect(Pubrec)
            if pubrec.reason_code >= FIRST_FAILURE_CODE:
                return pubrec
            await self.send(Pubrel(pubrec.packet_id))
            return await self.expect(Pubcomp)
        return None

    async def subscribe(
        self, *filters: str | SubscriptionRequest, qos: int = 0, properties: dict[str, Any] | None = None
    ) -> Suback:
        requests = [f if isinstance(f, SubscriptionRequest) else SubscriptionRequest(f, qos) for f in filters]
        await self.send(Subscribe(self.packet_id(), requests, properties or {}))
        return await self.expect(Suback)

    async def unsubscribe(self, *filters: str) -> Unsuback:
        await self.send(Unsubscribe(self.packet_id(), list(filters)))
        return await self.expect(Unsuback)

    async def receive(self, timeout: float = 5.0) -> Publish:
        """The next PUBLISH (acknowledged per QoS when auto_ack is on)."""
        packet = await self.expect(Publish, timeout)
        packet_id = packet.packet_id  # None at QoS 0
        if self.auto_ack and packet.qos == 1 and packet_id is not None:
            await self.send(Puback(packet_id))
        elif self.auto_ack and packet.qos == 2 and packet_id is not None:
            await self.send(Pubrec(packet_id))
            await self.expect(Pubrel, timeout)
            await self.send(Pubcomp(packet_id))
        return packet

    async def nothing_received(self, wait: float = 0.3) -> bool:
        """True if no packet arrives within ``wait`` seconds."""
        with trio.move_on_after(wait):
            packet = await self.next_packet(wait + 1)
            self._pending.insert(0, packet)
            return False
        return True

    async def ping(self) -> None:
        await self.send(Pingreq())

    async def disconnect(self, reason_code: int = 0, properties: dict[str, Any] | None = None) -> None:
        await self.send(Disconnect(reason_code, properties or {}))

    async def auth(self, reason_code: int, properties: dict[str, Any]) -> None:
        await self.send(Auth(reason_code, properties))


# -- pytest fixtures (registered through the pytest11 entry point) ----------------------


@pytest.fixture
async def ternmq_broker() -> AsyncIterator[Broker]:
    """A running broker (anonymous allowed, retainer loaded) on an ephemeral port."""
    async with open_broker() as broker:
        yield broker


@pytest.fixture
async def ternmq_client(ternmq_broker: Broker) -> AsyncIterator[MQTTTestClient]:
    """An MQTT 5 test client connected to ``ternmq_broker``."""
    async with MQTTTestClient.open(ternmq_broker.port()) as client:
        connack = await client.connect("ternmq-test-client")
        assert connack.reason_code == 0, connack
        yield client
