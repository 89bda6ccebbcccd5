"""Listeners: TCP, TLS, MQTT over WebSocket (plain and TLS), each from the config.

Each listener is a start-able task: it binds, reports its bound port through
``task_status``, and accepts until its cancel scope is cancelled. Connections run in
a nursery outside that scope, so stopping a listener keeps its clients unless
``kill_sessions`` asks to close them. Every listener type shares one accept path:
TCP accept, then (tls/wss) the TLS handshake, then (ws/wss) the WebSocket handshake.
Nothing a client does there (bad TLS, bad HTTP, silence) can reach the broker.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio
import trio_websocket

from ..codec import ReasonCode
from ..values.config import ConfigError
from .connection import Connection
from .rawstream import RawSocketStream, accept_loop, close_socket, open_listening_sockets

if TYPE_CHECKING:
    from ..protocol.ports import BrokerCore
    from ..values.config import ListenerConfig

log = logging.getLogger("ternmq.listeners")
WEBSOCKET_SUBPROTOCOLS = ("mqtt", "mqttv3.1")


@attrs.define
class RunningListener:
    """A listener as it runs: its config, bound port, live connections."""

    config: ListenerConfig
    port: int = 0
    total: int = 0
    status: str = "starting"
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    connections: set[Connection] = attrs.field(factory=set)
    # The connections of every listener (the broker's, which its watchdog reads): a
    # listener started again under the same name keeps its old clients watched.
    live: set[Connection] = attrs.field(factory=set)
    stopped: trio.Event = attrs.field(factory=trio.Event)  # set when it accepts no more

    @property
    def active(self) -> int:
        """Connections open now."""
        return len(self.connections)

    def mark_stopped(self) -> None:
        self.status = "stopped"
        self.stopped.set()

    def stop(self, kill_sessions: bool = False) -> None:
        """Stop accepting; with ``kill_sessions`` also close this listener's clients."""
        self.scope.cancel()
        if kill_sessions:
            for connection in list(self.connections):
                connection.kick(ReasonCode.ADMINISTRATIVE_ACTION, "listener_stopped")


class _Encrypted(Exception):
    """Raised instead of letting OpenSSL ask for a pass phrase on the terminal."""


def _no_pass_phrase() -> str:
    raise _Encrypted


def _read(source: str, table: str, key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ConfigError(source, table, key, f"no such file: {path}") from None
    except IsADirectoryError:
        raise ConfigError(source, table, key, f"{path} is a folder, not a file") from None
    except OSError as exc:
        raise ConfigError(source, table, key, f"cannot read {path}: {exc.strerror or exc}") from None


def make_ssl_context(config: ListenerConfig, source: str = "<listener>") -> ssl.SSLContext:
    """The server TLS context of a tls/wss listener (client certificates optional).

    A missing, unreadable or wrong file is a :class:`ConfigError` naming the listener
    and the key at fault (certfile, keyfile or cafile).
    """
    table = f"listeners.{config.name}"
    if not (config.certfile and config.keyfile):  # parse_config checks it; `listener start` may not
        raise ConfigError(source, table, "certfile", f"a {config.type} listener needs certfile and keyfile")
    certfile, keyfile = config.certfile, config.keyfile
    contents = {
        key: _read(source, table, key, path)
        for key in ("certfile", "keyfile", "cafile")
        if (path := getattr(config, key)) is not None
    }
    # OpenSSL's own errors name neither the file nor what is wrong with it ("[SSL] PEM
    # lib"), so the certificate is loaded alone first: what fails after it is the key.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=certfile)
    except ssl.SSLError:
        raise ConfigError(
            source, table, "certfile", f"{certfile} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ) from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_pass_phrase)
    except _Encrypted:
        raise ConfigError(
            source, table, "keyfile", f"{keyfile} is protected by a pass phrase; give an unencrypted key"
        ) from None
    except ssl.SSLError as exc:
        if b"PRIVATE KEY-----" not in contents["keyfile"]:
            message = f"{keyfile} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"
        else:
            message = f"the private key in {keyfile} does not match the certificate in {certfile}"
            if exc.reason != "KEY_VALUES_MISMATCH":  # some OpenSSL versions only say "PEM lib"
                message += " (or it is damaged)"
        raise ConfigError(source, table, "keyfile", message) from None
    except OSError as exc:
        raise ConfigError(source, table, "keyfile", f"cannot load {keyfile}: {exc.strerror or exc}") from None
    if config.cafile:
        try:
            context.load_verify_locations(config.cafile)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) else None
            raise ConfigError(
                source, table, "cafile", f"cannot load {config.cafile}: {reason or 'it holds no PEM CA certificate'}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED if config.require_certificate else ssl.CERT_OPTIONAL
    return context


def _common_name(stream: trio.SSLStream[RawSocketStream]) -> str | None:
    cert = stream.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


async def serve_listener(
    broker: BrokerCore, running: RunningListener, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Bind one listener and serve it until its scope is cancelled.

    Errors before ``task_status.started`` (port in use, bad certificate files) are
    raised bare, so that ``nursery.start`` hands them to the caller unchanged.
    """
    config = running.config
    try:
        context = make_ssl_context(config, broker.config.source) if config.uses_tls else None
        try:
            # Several workers (ternmq --workers) share the port.
            listening = await open_listening_sockets(
                config.address, config.port, reuse_port=broker.settings.workers > 1
            )
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"listener {config.name} cannot listen on {config.address}:{config.port}: {exc.strerror or exc}",
            ) from None
    except BaseException:
        running.mark_stopped()
        raise
    # The accept path runs on the stdlib sockets (rawstream.py says why).
    running.port = listening[0].getsockname()[1]
    try:
        async with trio.open_nursery() as connections:
            # The clock's own current_time: trio.current_time() without two calls around it.
            now = trio.lowlevel.current_clock().current_time
            # Looked up once: the level is set when the process starts, and the check costs
            # a call per connection on the connects hot path (bench/).
            debug = log.isEnabledFor(logging.DEBUG)
            handler = functools.partial(_accept, broker, running, context, connections, now, debug)
            with running.scope:
                running.status = "running"
                suffix = config.path if config.type in ("ws", "wss") else ""
                log.info(
                    "listener %s (%s) ready on %s:%d%s", config.name, config.type, config.address, running.port, suffix
                )
                task_status.started(running.port)
                async with trio.open_nursery() as accepting:
                    for sock in listening:
                        accepting.start_soon(accept_loop, sock, handler, connections)
            running.mark_stopped()  # accepting no more; clients stay until they leave
    finally:
        running.mark_stopped()
        for sock in listening:
            close_socket(sock)


async def _accept(
    broker: BrokerCore,
    running: RunningListener,
    context: ssl.SSLContext | None,
    connections: trio.Nursery,
    now: Callable[[], float],
    debug: bool,
    stream: RawSocketStream,
    address: tuple[Any, ...],
) -> None:
    """One accepted TCP connection, through TLS and WebSocket handshakes to MQTT."""
    config = running.config
    try:
        host = address[0]
        port = address[1]
        if debug:
            log.debug("connection from %s:%d on listener %s", host, port, config.name)
        common_name = None
        client_stream: trio.abc.Stream = stream
        if context is not None:
            tls_stream = trio.SSLStream(stream, context, server_side=True, https_compatible=config.type == "wss")
            try:
                with trio.fail_after(broker.settings.limits.connect_timeout):
                    await tls_stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
                cause = exc.__cause__ or exc
                log.info(
                    "TLS handshake with %s:%d on %s failed: %s",
                    host,
                    port,
                    config.name,
                    str(cause) or type(cause).__name__,
                )
                await trio.aclose_forcefully(tls_stream)
                return
            common_name = _common_name(tls_stream)
            client_stream = tls_stream
        if config.type in ("ws", "wss"):
            await _serve_websocket(broker, running, client_stream, host, port, common_name)
            return
        connection = Connection(broker, client_stream, config, host, port, common_name, nursery=connections, now=now)
        # _run_connection's body, inline: one coroutine less to create and to pass
        # through at every resume of the connects hot path.
        _count_in(running, connection)
        try:
            await connection.serve()
        except Exception:
            log.exception("connection from %s:%d failed", host, port)
        finally:
            _count_out(running, connection)
    except Exception:
        # Whatever a client managed to break stays with its own connection.
        log.exception("connection on listener %s failed", config.name)
        await trio.aclose_forcefully(stream)


async def _run_connection(running: RunningListener, connection: Connection) -> None:
    _count_in(running, connection)
    try:
        await connection.serve()
    except Exception:
        log.exception("connection from %s:%d failed", connection.peer_host, connection.peer_port)
    finally:
        _count_out(running, connection)


def _count_in(running: RunningListener, connection: Connection) -> None:
    running.total += 1
    running.connections.add(connection)
    running.live.add(connection)
    connection.over_capacity = len(running.connections) > running.config.max_connections


def _count_out(running: RunningListener, connection: Connection) -> None:
    running.connections.discard(connection)
    running.live.discard(connection)


async def _serve_websocket(
    broker: BrokerCore, running: RunningListener, stream: trio.abc.Stream, host: str, port: int, common_name: str | None
) -> None:
    config = running.config
    limits = broker.settings.limits
    async with trio.open_nursery() as nursery:
        request = None
        with trio.move_on_after(limits.connect_timeout):
            request = await trio_websocket.wrap_server_stream(
                nursery,
                stream,
                # A WebSocket message may carry a whole MQTT packet; our own framer
                # then applies max_packet_size with the proper MQTT reason code.
                max_message_size=limits.max_packet_size + 16,
            )
        try:
            if request is None:
                log.info("no WebSocket handshake from %s:%d on %s", host, port, config.name)
            elif config.path and request.path.split("?")[0] != config.path:
                await request.reject(404, body=b"no MQTT endpoint here")
            else:
                proposed = request.proposed_subprotocols
                subprotocol = next((p for p in WEBSOCKET_SUBPROTOCOLS if p in proposed), None)
                websocket = await request.accept(subprotocol=subprotocol)
                connection = Connection(
                    broker, WebSocketStream(websocket), config, host, port, common_name, nursery=nursery
                )
                await _run_connection(running, connection)
        finally:
            nursery.cancel_scope.cancel()
            await trio.aclose_forcefully(stream)


class WebSocketStream(trio.abc.Stream):
    """MQTT over WebSocket as a byte stream: binary messages carry MQTT bytes."""

    def __init__(self, websocket: trio_websocket.WebSocketConnection) -> None:
        self.websocket = websocket
        self._pending = b""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._pending:
            try:
                message = await self.websocket.get_message()
            except trio_websocket.ConnectionClosed:
                return b""
            if isinstance(message, str):
                # MQTT over WebSocket must use binary frames (MQTT 5 §6.0.0-1).
                raise trio.BrokenResourceError("text frame on an MQTT WebSocket")
            self._pending = message
        if max_bytes is None or len(self._pending) <= max_bytes:
            data, self._pending = self._pending, b""
        else:
            data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

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
