"""Accepted TCP connections as a lean trio Stream over the standard library socket.

trio's SocketStream and SocketListener are general: conflict detectors on every call,
a trio socket object per connection, error-translating context managers around each
system call. For a broker, connect+disconnect is a hot path (the connects/s goal of
bench/), and the profile showed most of its CPU in those layers, not in MQTT. So the
listeners accept and read with the stdlib socket in non-blocking mode and wait with
trio.lowlevel.wait_readable / wait_writable.

What this stream gives up, on purpose: a send that the kernel buffer takes at once is
not a checkpoint (every receive is, so a busy client still lets the scheduler run
others). Two tasks sending at once is still an error, as in trio (BusyResourceError),
checked with a flag instead of a conflict detector object. TLS and WebSocket layers
wrap it like any trio Stream.

What it adds, for the connect path (kernel/transport/connection.py says why): ``abort_receive()``,
an off switch for the one task that reads, cheaper than a cancel scope around it (the
receive waiting now, or the next one, raises ReceiveAborted; sends go on: a waiting
sender is woken by trio too, and waits again); ``receive_now()``, a read that is no
checkpoint, for a task that the scheduler has just started; ``receive_after_wait()``,
which waits before it reads, for a reader that has just answered; ``send_nowait()``.
``close_now()`` skips trio's notify_closing when no task waits in the stream.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from trio.lowlevel import checkpoint, checkpoint_if_cancelled, notify_closing, wait_readable, wait_writable

from ..protocol.ports import RECEIVE_SIZE

log = logging.getLogger("ternmq.listeners")


# accept() errors that mean "out of resources now", not "this listener is broken"
# (the same set trio.serve_listeners retries).
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class ReceiveAborted(trio.ClosedResourceError):
    """A receive of a RawSocketStream after ``abort_receive()``: the reader was stopped."""


class RawSocketStream(trio.abc.HalfCloseableStream):
    """A connected non-blocking stdlib socket as a trio Stream (see module docstring)."""

    __slots__ = ("socket", "_sending", "_receiving", "_send_waiting", "_aborted")

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self._sending = False  # a send_all is under way (it waits for room)
        self._receiving = False  # a receive waits for the socket
        self._send_waiting = False  # a send waits for the socket
        self._aborted = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        # The checkpoint is the wait, or, when data was there at once, one after the
        # read: as in trio's own sockets, a wait is not followed by another schedule
        # point (that would be one more pass of the scheduler per wake-up). A cancel
        # that came with the wake-up is still raised before anything is read, so a
        # cancelled reader never goes on to handle what it read; so is an abort.
        if self._aborted:
            raise ReceiveAborted("receiving was aborted")
        try:
            data = self.socket.recv(max_bytes or RECEIVE_SIZE)
        except BlockingIOError:
            return await self.receive_after_wait(max_bytes, cancel_point=True)
        except OSError as exc:
            raise _broken(exc) from exc
        await checkpoint()
        if self._aborted:
            raise ReceiveAborted("receiving was aborted")
        return data

    async def receive_after_wait(self, max_bytes: int | None = None, *, cancel_point: bool = False) -> bytes:
        """receive_some that waits for the socket before it reads: for a reader that
        expects nothing yet (it has just answered), which spares a read that fails.

        As trio's own sockets, it reads what woke it even if a cancel came with the
        wake-up (the next checkpoint raises it), unless ``cancel_point`` (receive_some).
        An abort_receive is always seen before the read.
        """
        sock = self.socket
        size = max_bytes or RECEIVE_SIZE
        while True:
            if self._aborted:
                raise ReceiveAborted("receiving was aborted")
            self._receiving = True
            try:
                await wait_readable(sock)
            except trio.ClosedResourceError:
                if self._aborted and sock.fileno() >= 0:
                    raise ReceiveAborted("receiving was aborted") from None
                raise
            finally:
                self._receiving = False
            if cancel_point:
                await checkpoint_if_cancelled()
            if self._aborted:
                raise ReceiveAborted("receiving was aborted")
            try:
                return sock.recv(size)
            except BlockingIOError:  # woken without data (it can happen): wait again
                continue
            except OSError as exc:
                raise _broken(exc) from exc

    def receive_now(self, max_bytes: int | None = None) -> bytes | None:
        """What the socket holds now, without a wait or a checkpoint (None: nothing yet).

        For the first read of a task that the scheduler has only just started.
        """
        if self._aborted:
            raise ReceiveAborted("receiving was aborted")
        try:
            return self.socket.recv(max_bytes or RECEIVE_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _broken(exc) from exc

    def abort_receive(self) -> None:
        """Make the receive that waits now, or the next one, raise ReceiveAborted.

        No checkpoint, no cancel scope; the socket stays open and sends go on. Data
        read but not yet returned by a receive that is at its checkpoint is dropped,
        as a cancel would drop it.
        """
        self._aborted = True
        if self._receiving:
            # Wakes every task waiting on the socket: a sender waits again (_wait).
            notify_closing(self.socket)

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Send what the kernel buffer takes now, without waiting: the bytes sent."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this connection")
        try:
            return self.socket.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _broken(exc) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            # Bytes of two senders would interleave on the wire.
            raise trio.BusyResourceError("another task is sending on this connection")
        sock = self.socket
        # Most sends (a CONNACK, a batch of acks) fit in the kernel buffer: one call, no
        # await, so no other sender can come in between and no flag or view is needed.
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise _broken(exc) from exc
        if sent == len(data):
            return
        self._sending = True
        try:
            with memoryview(data) as view:
                total = len(view)
                while sent < total:
                    try:
                        sent += sock.send(view[sent:])
                    except BlockingIOError:
                        await self._wait(wait_writable)
                    except OSError as exc:
                        raise _broken(exc) from exc
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await self._wait(wait_writable)

    async def send_eof(self) -> None:
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise _broken(exc) from exc
        await checkpoint()

    def close_now(self) -> None:
        """Close without a checkpoint: wakes any task waiting on the socket first."""
        sock = self.socket
        if self._receiving or self._send_waiting:
            close_socket(sock)
        else:
            # Nobody waits in this stream, so trio holds no registration of the socket
            # and notify_closing has nothing to do but an epoll_ctl that fails.
            sock.close()

    async def aclose(self) -> None:
        self.close_now()
        await checkpoint()

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        sock = self.socket
        while True:
            if sock.fileno() < 0:
                raise trio.ClosedResourceError("the connection was closed")
            self._send_waiting = True
            try:
                await wait(sock)
                return
            except trio.ClosedResourceError:
                if not self._aborted or sock.fileno() < 0:
                    raise
                # woken by abort_receive, which is not for senders: wait again
            finally:
                self._send_waiting = False


def _broken(exc: OSError) -> Exception:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the connection was closed")
    return trio.BrokenResourceError(f"connection broken: {os.strerror(exc.errno or 0)}")


class ListeningSocket(socket.socket):
    """A listening stdlib socket whose accept() skips two conversions per call.

    socket.accept() makes the new socket with ``self.family`` and ``self.type``,
    properties that turn the numbers into enums (IntEnum calls) every time: on the
    connects hot path (bench/) the largest cost of accept() outside the system call.
    Here they are looked up once, when the listener opens.
    """

    def __init__(self, fileno: int) -> None:
        super().__init__(fileno=fileno)
        self._family = super().family
        self._type = super().type

    @property
    def family(self) -> socket.AddressFamily:
        return self._family

    @property
    def type(self) -> socket.SocketKind:
        return self._type


# The listen backlog trio uses: the most Linux takes (it caps it at net.core.somaxconn).
LISTEN_BACKLOG = 0xFFFF


async def open_listening_sockets(host: str, port: int, *, reuse_port: bool = False) -> list[ListeningSocket]:
    """Listening non-blocking sockets on ``host``:``port``, one per address the host
    resolves to, as trio.open_tcp_listeners opens them (SO_REUSEADDR, IPv6 sockets
    IPv6-only, address families the system lacks skipped). ``reuse_port`` sets
    SO_REUSEPORT on each before it binds: processes that all do so share the port, and
    Linux spreads new connections over them (``ternmq --workers``)."""
    addresses = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    opened: list[ListeningSocket] = []
    unsupported: OSError | None = None
    try:
        for family, kind, proto, _, address in addresses:
            try:
                sock = ListeningSocket(socket.socket(family, kind, proto).detach())
            except OSError as exc:
                if exc.errno != errno.EAFNOSUPPORT:
                    raise
                unsupported = exc
                continue
            opened.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    if not opened:
        raise unsupported or OSError(errno.EADDRNOTAVAIL, f"{host} has no address")
    return opened


async def accept_loop(
    listening: socket.socket,
    handler: Callable[[RawSocketStream, tuple[Any, ...]], Awaitable[None]],
    connections: trio.Nursery,
) -> None:
    """Accept forever on a non-blocking listening socket, one task per client in ``connections``.

    Unlike trio.serve_listeners, no aclose_forcefully runs after each handler: the
    connection closes its own socket.
    """
    try:
        while True:
            try:
                sock, address = listening.accept()
            except BlockingIOError:
                await wait_readable(listening)
                continue
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.error("accept failed: %s; retrying in 100 ms", os.strerror(exc.errno or 0))
                await trio.sleep(0.1)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connections.start_soon(handler, RawSocketStream(sock), address)
            await checkpoint()  # a full backlog must not starve the clients already in
    finally:
        # A stopped listener refuses new clients at once, while its clients stay.
        close_socket(listening)


def close_socket(sock: socket.socket) -> None:
    """Close a socket trio may be waiting on, without a checkpoint; twice is harmless."""
    if sock.fileno() >= 0:
        notify_closing(sock)
        sock.close()
