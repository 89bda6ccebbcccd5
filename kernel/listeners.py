"""Listeners: TCP, TLS, MQTT over WebSocket (plain and TLS), each from the config.

Each listener is a start-able task: it binds, reports its bound port through
``task_status``, and serves until its cancel scope is cancelled. Connections run in
the listener's own handler nursery, so stopping a listener can either keep or close
its clients.
"""

from __future__ import annotations

import functools
import logging
import ssl
from typing import TYPE_CHECKING

import attrs
import trio
import trio_websocket

from .connection import Connection

if TYPE_CHECKING:
    from .broker import Broker
    from .config import ListenerConfig

log = logging.getLogger("ternmq.listeners")
TLS_HANDSHAKE_TIMEOUT = 10.0


@attrs.define
class RunningListener:
    """A listener as it runs: its config, bound port, live connection count."""

    config: ListenerConfig
    port: int = 0
    active: int = 0
    total: int = 0
    status: str = "starting"
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)


def make_ssl_context(config: ListenerConfig) -> ssl.SSLContext:
    """The server TLS context of a tls/wss listener (client certificates optional)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    assert config.certfile and config.keyfile
    context.load_cert_chain(config.certfile, config.keyfile)
    if config.cafile:
        context.load_verify_locations(config.cafile)
        context.verify_mode = ssl.CERT_REQUIRED if config.require_certificate else ssl.CERT_OPTIONAL
    return context


def _common_name(stream: trio.SSLStream[trio.SocketStream]) -> str | None:
    cert = stream.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


async def serve_listener(
    broker: Broker, running: RunningListener, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Bind one listener and serve it until cancelled."""
    config = running.config
    with running.scope:
        try:
            if config.type in ("tcp", "tls"):
                await _serve_stream_listener(broker, running, task_status)
            else:
                await _serve_websocket_listener(broker, running, task_status)
        finally:
            running.status = "stopped"


async def _run_connection(broker: Broker, running: RunningListener, connection: Connection) -> None:
    running.active += 1
    running.total += 1
    connection.over_capacity = running.active > running.config.max_connections
    try:
        await connection.serve()
    except Exception:
        log.exception("connection from %s:%d failed", connection.peer_host, connection.peer_port)
    finally:
        running.active -= 1


async def _serve_stream_listener(broker: Broker, running: RunningListener, task_status: trio.TaskStatus[int]) -> None:
    config = running.config
    tcp_listeners = await trio.open_tcp_listeners(config.port, host=config.address)
    running.port = tcp_listeners[0].socket.getsockname()[1]
    context = make_ssl_context(config) if config.uses_tls else None

    async def handle(stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        common_name = None
        client_stream: trio.abc.Stream = stream
        if context is not None:
            tls_stream = trio.SSLStream(stream, context, server_side=True)
            try:
                with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
                    await tls_stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                log.info("TLS handshake with %s:%d failed: %s", peer[0], peer[1], exc)
                await trio.aclose_forcefully(tls_stream)
                return
            common_name = _common_name(tls_stream)
            client_stream = tls_stream
        await _run_connection(broker, running, Connection(broker, client_stream, config, peer[0], peer[1], common_name))

    running.status = "running"
    log.info("listener %s (%s) ready on %s:%d", config.name, config.type, config.address, running.port)
    task_status.started(running.port)
    await trio.serve_listeners(handle, tcp_listeners)


class WebSocketStream(trio.abc.Stream):
    """MQTT over WebSocket as a byte stream: binary messages carry MQTT bytes."""

    def __init__(self, websocket: trio_websocket.WebSocketConnection) -> None:
        self.websocket = websocket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            message = await self.websocket.get_message()
        except trio_websocket.ConnectionClosed:
            return b""
        if isinstance(message, str):
            # MQTT over WebSocket must use binary frames (MQTT 5 §6).
            raise trio.BrokenResourceError("text frame on an MQTT WebSocket")
        return message

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.websocket.send_message(bytes(data))
        except trio_websocket.ConnectionClosed as exc:
            raise trio.BrokenResourceError("websocket closed") from exc

    async def wait_send_all_might_not_block(self) -> None:
        return None

    async def send_eof(self) -> None:
        return None

    async def aclose(self) -> None:
        await self.websocket.aclose()


async def _serve_websocket_listener(broker: Broker, running: RunningListener, task_status: trio.TaskStatus[int]) -> None:
    config = running.config
    context = make_ssl_context(config) if config.uses_tls else None

    async def handle(request: trio_websocket.WebSocketRequest) -> None:
        if config.path and request.path.split("?")[0] != config.path:
            await request.reject(404, body=b"no MQTT endpoint here")
            return
        proposed = request.proposed_subprotocols
        subprotocol = next((p for p in ("mqtt", "mqttv3.1") if p in proposed), None)
        websocket = await request.accept(subprotocol=subprotocol)
        remote = request.remote
        host = getattr(remote, "address", "") or ""
        port = getattr(remote, "port", 0) or 0
        connection = Connection(broker, WebSocketStream(websocket), config, str(host), int(port))
        await _run_connection(broker, running, connection)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(functools.partial(
            trio_websocket.serve_websocket, handle, config.address, config.port, context,
            # A WebSocket message may carry a whole MQTT packet; our own framer then
            # applies max_packet_size with the proper MQTT reason code.
            max_message_size=broker.settings.limits.max_packet_size + 16,
            connect_timeout=broker.settings.limits.connect_timeout))
        running.port = server.port
        running.status = "running"
        log.info("listener %s (%s) ready on %s:%d%s", config.name, config.type, config.address,
                 running.port, config.path)
        task_status.started(running.port)
