"""The floor of connects/s: servers that do nothing but accept, answer CONNECT, close.

Why: the connects scenario compares whole brokers. This asks how fast a Python server
on one core can be at all with no MQTT in it, so that a goal stated as a ratio to
another broker can be checked against what the event loop alone allows. Each server
reads the CONNECT, writes a fixed CONNACK, reads until the client closes, and closes:

- trio-raw: trio, one task per connection, stdlib sockets with wait_readable, read as
  RawSocketStream.receive_some reads (kernel/transport/rawstream.py): the floor of the goal;
- trio-raw-lean: trio-raw with the four socket shortcuts of ternmq's connect path (the
  first read of a new task is no checkpoint, the read after the answer waits first, the
  close skips notify_closing when nobody waits, accept() without its two enum
  conversions): what those are worth on their own;
- trio-stream: trio, one task per connection, trio's SocketListener/SocketStream;
- asyncio-protocol: asyncio callbacks, no task per connection.

The same C client (connstorm.c) drives them, pinned like run.py pins brokers (server on
CPU 0, client on CPU 1). Usage: python bench/floor.py [--connections N] [--repeat R]

``--serve KIND --listen PORT`` only serves, on 127.0.0.1:PORT, until SIGTERM: that is how
run.py starts trio-raw beside ternmq in the connects scenario, so that both are measured
in the same run by the same generator and the same /proc CPU accounting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from loadgen import build_connstorm  # noqa: E402

CONNACK = b"\x20\x02\x00\x00"
SERVERS = ("trio-raw", "trio-raw-lean", "trio-stream", "asyncio-protocol")


def storm(binary: Path, port: int, total: int, pin: bool) -> tuple[int, float]:
    prefix = ["taskset", "-c", "1"] if pin else []
    out = subprocess.run(
        [*prefix, str(binary), "127.0.0.1", str(port), str(total), "32", "60"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), float(out[2])


def measure(port: int, binary: Path, total: int, repeat: int, pin: bool) -> dict:
    """Best of ``repeat`` runs: this process's CPU per connection and the rate."""
    storm(binary, port, 500, pin)  # warm up
    best: dict = {}
    for _ in range(repeat):
        before = os.times()
        ok, wall = storm(binary, port, total, pin)
        after = os.times()
        cpu = (after.user - before.user) + (after.system - before.system)
        run = {"conn_per_s": ok / wall, "cpu_us": cpu / max(ok, 1) * 1e6}
        if not best or run["conn_per_s"] > best["conn_per_s"]:
            best = run
    return best


def serve_trio(kind: str, binary: Path | None, total: int, repeat: int, pin: bool, listen: int = 0) -> dict | None:
    import trio
    from trio.lowlevel import checkpoint, checkpoint_if_cancelled, notify_closing, wait_readable

    async def recv(sock: socket.socket) -> bytes:
        # As RawSocketStream.receive_some: the checkpoint is the wait, or one after a
        # read that found data at once (and a cancel check after a wait).
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            pass
        else:
            await checkpoint()
            return data
        while True:
            await wait_readable(sock)
            await checkpoint_if_cancelled()
            try:
                return sock.recv(65536)
            except BlockingIOError:
                continue

    async def recv_after_wait(sock: socket.socket) -> bytes:
        # As RawSocketStream.receive_after_wait: the wait first, then the read.
        while True:
            await wait_readable(sock)
            try:
                return sock.recv(65536)
            except BlockingIOError:
                continue

    async def handle_raw(sock: socket.socket) -> None:
        await recv(sock)
        sock.send(CONNACK)
        while await recv(sock):
            pass
        notify_closing(sock)
        sock.close()

    async def handle_lean(sock: socket.socket) -> None:
        try:
            sock.recv(65536)  # the CONNECT, most often there already: no checkpoint
        except BlockingIOError:
            await recv_after_wait(sock)
        sock.send(CONNACK)
        while await recv_after_wait(sock):
            pass
        sock.close()  # nobody waits on it: no notify_closing

    async def accept_raw(listening: socket.socket, nursery: trio.Nursery) -> None:
        handle = handle_lean if kind == "trio-raw-lean" else handle_raw
        while True:
            try:
                sock, _ = listening.accept()
            except BlockingIOError:
                await wait_readable(listening)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nursery.start_soon(handle, sock)
            await checkpoint()

    async def handle_stream(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(CONNACK)
        while await stream.receive_some(65536):
            pass
        stream.socket.close()

    async def accept_stream(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            nursery.start_soon(handle_stream, await listener.accept())

    async def main() -> dict | None:
        async with trio.open_nursery() as nursery:
            if kind in ("trio-raw", "trio-raw-lean"):
                listening = socket.create_server(("127.0.0.1", listen or 0), backlog=1024)
                if kind == "trio-raw-lean":  # the listening socket ternmq's listeners use
                    from ternmq.kernel.transport.rawstream import ListeningSocket

                    listening = ListeningSocket(listening.detach())
                listening.setblocking(False)
                port = listening.getsockname()[1]
                nursery.start_soon(accept_raw, listening, nursery)
            else:
                listener = (await trio.open_tcp_listeners(listen or 0, host="127.0.0.1", backlog=1024))[0]
                port = listener.socket.getsockname()[1]
                nursery.start_soon(accept_stream, listener, nursery)
            if listen:
                await trio.sleep_forever()  # until SIGTERM
            assert binary is not None
            result = await trio.to_thread.run_sync(measure, port, binary, total, repeat, pin)
            nursery.cancel_scope.cancel()
        return result

    return trio.run(main)


def serve_asyncio(binary: Path, total: int, repeat: int, pin: bool) -> dict:
    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.answered = False

        def data_received(self, data: bytes) -> None:
            if not self.answered:
                self.answered = True
                self.transport.write(CONNACK)  # type: ignore[attr-defined]

    async def main() -> dict:
        server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        result = await asyncio.to_thread(measure, port, binary, total, repeat, pin)
        server.close()
        return result

    return asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serve", choices=SERVERS, help="run one server only (used by run.py and by itself)")
    parser.add_argument(
        "--listen",
        type=int,
        default=0,
        metavar="PORT",
        help="with --serve and a trio server: serve on this port until SIGTERM, no client",
    )
    args = parser.parse_args()
    if args.listen:
        if args.serve is None or not args.serve.startswith("trio-"):
            parser.error("--listen needs --serve and a trio server")
        serve_trio(args.serve, None, 0, 0, False, listen=args.listen)
        return 0
    binary = build_connstorm()
    if binary is None:
        parser.error("needs gcc to build connstorm.c")
    pin = len(os.sched_getaffinity(0)) >= 2
    if args.serve:
        # The client runs in a thread of this process only to start connstorm; its
        # waiting costs no CPU, so os.times() here is the server's.
        if pin:
            os.sched_setaffinity(0, {0})
        if args.serve == "asyncio-protocol":
            result = serve_asyncio(binary, args.connections, args.repeat, pin)
        else:
            result = serve_trio(args.serve, binary, args.connections, args.repeat, pin)
        print(json.dumps(result))
        return 0
    print("| server (no MQTT logic) | conn/s | CPU µs per connection |\n|---|---|---|")
    for kind in SERVERS:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--serve",
                kind,
                "--connections",
                str(args.connections),
                "--repeat",
                str(args.repeat),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout)
        print(f"| {kind} | {result['conn_per_s']:,.0f} | {result['cpu_us']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
