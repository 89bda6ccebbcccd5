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

log = logging.getLogger("ternmq.listeners")

RECEIVE_SIZE = 65536

# accept() errors that mean "out of resources now", not "this listener is broken"
# (the same set trio.serve_listeners retries).
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class RawSocketStream(trio.abc.HalfCloseableStream):
    """A connected non-blocking stdlib socket as a trio Stream (see module docstring)."""

    __slots__ = ("socket", "_sending")

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        # The checkpoint is the wait, or, when data was there at once, one after the
        # read: as in trio's own sockets, a wait is not followed by another schedule
        # point (that would be one more pass of the scheduler per wake-up). A cancel
        # that came with the wake-up is still raised before anything is read, so a
        # cancelled reader never goes on to handle what it read.
        sock = self.socket
        size = max_bytes or RECEIVE_SIZE
        try:
            data = sock.recv(size)
        except BlockingIOError:
            pass
        except OSError as exc:
            raise _broken(exc) from exc
        else:
            await checkpoint()
            return data
        while True:
            # Not self._wait: a socket that just said "would block" is open.
            await wait_readable(sock)
            await checkpoint_if_cancelled()
            try:
                return sock.recv(size)
            except BlockingIOError:  # woken without data (it can happen): wait again
                continue
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
        close_socket(self.socket)

    async def aclose(self) -> None:
        self.close_now()
        await checkpoint()

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        if self.socket.fileno() < 0:
            raise trio.ClosedResourceError("the connection was closed")
        await wait(self.socket)


def _broken(exc: OSError) -> Exception:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the connection was closed")
    return trio.BrokenResourceError(f"connection broken: {os.strerror(exc.errno or 0)}")


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
