"""The lean accept path and stream of kernel/transport/rawstream.py, over real sockets."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import outcome
import pytest
import trio

from ternmq.kernel.codec import Framer
from ternmq.kernel.protocol.connect import while_connected
from ternmq.kernel.transport.connection import Connection
from ternmq.kernel.transport.rawstream import RawSocketStream, ReceiveAborted, accept_loop
from ternmq.kernel.values.counters import Counters


def stream_pair() -> tuple[RawSocketStream, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return RawSocketStream(ours), theirs


async def test_receive_waits_for_data_and_returns_it() -> None:
    stream, peer = stream_pair()
    with peer:
        async with trio.open_nursery() as nursery:
            received: list[bytes] = []

            async def receive() -> None:
                received.append(await stream.receive_some())

            nursery.start_soon(receive)
            await trio.sleep(0.05)
            assert received == []  # still waiting: nothing was sent
            peer.sendall(b"hello")
        assert received == [b"hello"]
        await stream.aclose()


async def test_receive_returns_empty_bytes_at_end_of_stream() -> None:
    stream, peer = stream_pair()
    peer.sendall(b"last")
    peer.close()
    assert await stream.receive_some() == b"last"
    assert await stream.receive_some() == b""
    await stream.aclose()


async def test_send_all_delivers_more_than_the_kernel_buffer_holds() -> None:
    stream, peer = stream_pair()
    payload = bytes(range(256)) * 40_000  # 10 MB: send() blocks many times
    received = bytearray()

    def drain() -> None:
        with peer:
            while chunk := peer.recv(1 << 20):
                received.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, drain)
        await stream.send_all(payload)
        await stream.send_eof()
    assert bytes(received) == payload
    await stream.aclose()


async def test_two_tasks_sending_at_once_is_busy_resource_error() -> None:
    stream, peer = stream_pair()
    with peer:
        async with trio.open_nursery() as nursery:
            # The first sender fills the socket buffer and waits for the peer to read.
            nursery.start_soon(stream.send_all, b"x" * 10_000_000)
            await trio.sleep(0.05)
            # Room again, but the first sender has not run yet: a second send must
            # not slip its bytes in between.
            peer.recv(1 << 20)
            with pytest.raises(trio.BusyResourceError):
                await stream.send_all(b"y")
            nursery.cancel_scope.cancel()
    await stream.aclose()


async def test_closing_wakes_a_waiting_receiver_with_closed_resource_error() -> None:
    stream, peer = stream_pair()
    errors: list[BaseException] = []

    async def receive() -> None:
        try:
            await stream.receive_some()
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    with peer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.sleep(0.05)
            stream.close_now()
    assert len(errors) == 1


async def test_use_after_close_is_closed_resource_error() -> None:
    stream, peer = stream_pair()
    peer.close()
    await stream.aclose()
    await stream.aclose()  # twice is harmless
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"x")


async def test_send_to_a_reset_peer_is_broken_resource_error() -> None:
    stream, peer = stream_pair()
    peer.close()
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):  # the first send may still be buffered
            await stream.send_all(b"x" * 65536)
    await stream.aclose()


async def test_a_cancelled_receive_leaves_the_stream_usable() -> None:
    stream, peer = stream_pair()
    with peer:
        with trio.move_on_after(0.05) as scope:
            await stream.receive_some()
        assert scope.cancelled_caught
        peer.sendall(b"after")
        assert await stream.receive_some() == b"after"
    await stream.aclose()


async def test_accept_loop_hands_each_client_and_its_address_to_the_handler() -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    listening.setblocking(False)
    port = listening.getsockname()[1]
    seen: list[tuple[bytes, int, int]] = []

    async def handler(stream: RawSocketStream, address: tuple) -> None:
        nodelay = stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        seen.append((await stream.receive_some(), address[1], nodelay))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, listening, handler, nursery)
        local_ports = []
        for i in range(3):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            local_ports.append(client.socket.getsockname()[1])
            await client.send_all(b"client %d" % i)
            assert await client.receive_some() == b""  # the handler closed it
            await client.aclose()
        nursery.cancel_scope.cancel()
    assert seen == [(b"client %d" % i, local_ports[i], 1) for i in range(3)]
    # Leaving the accept loop closed the listening socket: nobody else gets in.
    assert listening.fileno() == -1
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


# -- the reader's off switch and the connect path's reads (kernel/transport/connection.py) ------------


async def test_abort_receive_wakes_a_waiting_receiver_and_leaves_the_socket_open() -> None:
    stream, peer = stream_pair()
    errors: list[BaseException] = []

    async def receive() -> None:
        try:
            await stream.receive_some()
        except ReceiveAborted as exc:
            errors.append(exc)

    with peer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.sleep(0.05)
            stream.abort_receive()
        assert len(errors) == 1
        assert isinstance(errors[0], trio.ClosedResourceError)
        await stream.send_all(b"still open")  # sends go on: a DISCONNECT, a CONNACK refusal
        assert peer.recv(100) == b"still open"
        await stream.aclose()


@pytest.mark.parametrize("way", ["receive_some", "receive_after_wait", "receive_now"])
async def test_a_receive_after_abort_raises_at_once_and_reads_nothing(way: str) -> None:
    stream, peer = stream_pair()
    with peer:
        peer.sendall(b"unread")
        stream.abort_receive()
        with pytest.raises(ReceiveAborted):
            result = getattr(stream, way)()
            if way != "receive_now":
                await result
        assert stream.socket.recv(100) == b"unread"
        await stream.aclose()


async def test_an_abort_during_the_checkpoint_after_a_read_drops_what_was_read() -> None:
    stream, peer = stream_pair()
    with peer:
        peer.sendall(b"read, then dropped")
        receive = stream.receive_some()
        receive.send(None)  # it has read and waits at its checkpoint, as the scheduler would see
        stream.abort_receive()
        with pytest.raises(ReceiveAborted):
            receive.send(outcome.Value(None))  # what the scheduler resumes it with
        await stream.aclose()


async def test_abort_receive_does_not_stop_a_sender_waiting_for_room() -> None:
    stream, peer = stream_pair()
    payload = b"x" * 5_000_000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, payload)  # fills the buffer and waits for room

        async def receive() -> None:
            with pytest.raises(ReceiveAborted):
                await stream.receive_some()

        nursery.start_soon(receive)
        await trio.sleep(0.05)
        stream.abort_receive()  # wakes both waiters: the sender waits again
        received = bytearray()

        def drain() -> None:
            while len(received) < len(payload):
                received.extend(peer.recv(1 << 20))

        await trio.to_thread.run_sync(drain)
    assert bytes(received) == payload
    peer.close()
    await stream.aclose()


async def test_receive_now_neither_waits_nor_checkpoints() -> None:
    stream, peer = stream_pair()
    assert stream.receive_now() is None  # nothing yet
    peer.sendall(b"here")
    assert stream.receive_now() == b"here"
    peer.close()
    assert stream.receive_now() == b""  # end of stream
    await stream.aclose()


async def test_receive_after_wait_waits_for_data() -> None:
    stream, peer = stream_pair()
    with peer:
        async with trio.open_nursery() as nursery:
            received: list[bytes] = []

            async def receive() -> None:
                received.append(await stream.receive_after_wait())

            nursery.start_soon(receive)
            await trio.sleep(0.05)
            assert received == []
            peer.sendall(b"answer")
        assert received == [b"answer"]
        await stream.aclose()


async def test_send_nowait_sends_what_the_kernel_takes() -> None:
    stream, peer = stream_pair()
    with peer:
        assert stream.send_nowait(b"ack") == 3
        assert peer.recv(10) == b"ack"
        total = 0
        while sent := stream.send_nowait(b"y" * 65536):
            total += sent
        assert stream.send_nowait(b"z") == 0  # full: nothing taken, nothing waited for
        assert total > 0
    await stream.aclose()


async def test_closing_with_nobody_waiting_leaves_trio_nothing_to_forget() -> None:
    # close_now skips notify_closing when no task waits in the stream: a socket that
    # gets the same descriptor next must still be waited on as usual.
    stream, peer = stream_pair()
    peer.sendall(b"x")
    assert await stream.receive_after_wait() == b"x"  # waited once, so trio knew the fd
    fd = stream.socket.fileno()
    stream.close_now()
    assert stream.socket.fileno() == -1
    peer.close()
    reused, other = stream_pair()
    with other:
        assert reused.socket.fileno() == fd
        other.sendall(b"y")
        with trio.fail_after(5):
            assert await reused.receive_after_wait() == b"y"
    await reused.aclose()


class _Watched:
    """What connect.while_connected uses of a connection, with the real reading method."""

    receive_cancellable = Connection.receive_cancellable

    def __init__(self, stream: RawSocketStream) -> None:
        self.stream = stream
        self.framer = Framer()
        self.broker = SimpleNamespace(metrics=Counters())


@pytest.mark.parametrize("waits", [False, True])
async def test_while_connected_loses_no_byte_when_its_call_ends(waits: bool) -> None:
    """The watcher is cancelled when the call ends; bytes that arrived meanwhile are in
    the framer or still in the socket, never dropped (receive_some would read them
    before its checkpoint and lose them to the cancel)."""
    stream, peer = stream_pair()
    with peer:
        peer.sendall(b"\x30\x03\x00\x01x")

        async def call() -> str:
            if waits:
                await trio.sleep(0.05)
            return "answer"

        watched = _Watched(stream)
        assert await while_connected(watched, call) == "answer"  # type: ignore[arg-type]
        buffered = watched.framer.buffered()
        try:
            rest = stream.socket.recv(100)
        except BlockingIOError:
            rest = b""
        assert buffered + len(rest) == 5
        await stream.aclose()


async def test_while_connected_ends_the_call_when_the_peer_closes() -> None:
    stream, peer = stream_pair()
    ended = trio.Event()

    async def call() -> str:
        try:
            await trio.sleep_forever()
        finally:
            ended.set()
        return "never"

    peer.close()
    with pytest.raises(trio.BrokenResourceError):
        await while_connected(_Watched(stream), call)  # type: ignore[arg-type]
    assert ended.is_set()
    await stream.aclose()
