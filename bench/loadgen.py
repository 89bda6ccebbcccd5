"""The benchmark's load generator: a minimal MQTT 3.1.1 client on raw asyncio sockets.

One process, one event loop, every simulated client an ``asyncio.Protocol``. Packets are
encoded by hand once, before the clock starts (a QoS 0 publisher just writes prebuilt
batches); incoming frames are split with a short inline loop that only looks at what
the scenario needs (type, packet id, the timestamp in a latency payload). The same
generator drives every broker, so the ratios compare brokers, not clients.

Run by ``bench/run.py``, one scenario per process::

    python bench/loadgen.py SCENARIO --port P --broker-pid PID [--quick] [--deadline S]
        [--watch NAME=PID ...] [--cluster] [--peer-port P2 --peer-pid PID2]

It prints one JSON object on stdout: the scenario's numbers, plus ``gen_cpu`` and
``broker_cpu`` (CPU seconds / wall seconds over the measured window, 1.0 = one core
busy) so a reader can tell whether the generator or the broker was the limit. The
broker's CPU and RSS are those of the process and its descendants (``ternmq --workers
N``: the supervisor and its workers). ``--watch redis=PID`` also reports ``redis_cpu``
and ``redis_us_per_op``. ``--cluster`` (a broker made of several nodes) makes every
publisher send probes until one is delivered before the clock starts: a subscription
reaches the other nodes through Redis, a few milliseconds after its SUBACK. ``forward``
publishes on ``--port`` (node 1) to a subscriber on ``--peer-port`` (node 2).
Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DISCONNECT = b"\xe0\x00"
IDLE_END = 3.0  # seconds without a delivery after the publishers finished = the rest is lost

# Scenario parameters: (full, --quick).
PARAMS = {
    # outstanding: > 0 keeps at most that many messages published but not yet delivered
    # (0: no cap, the publishers write as fast as TCP takes them).
    "fanin_qos0": {"publishers": 8, "messages": (25_000, 5_000), "payload": 64, "outstanding": 0},
    "fanin_qos1": {"publishers": 8, "messages": (25_000, 5_000), "payload": 64, "window": 20},
    "fanout": {"subscribers": 50, "messages": (10_000, 2_000), "payload": 64},
    "latency": {"rate": 1000, "seconds": (10.0, 3.0), "payload": 64, "warmup": 200},
    "connects": {"connections": (20_000, 5_000), "parallel": 32},
    "memory": {"connections": (2_000, 2_000), "keep_alive": 3600},
    # Two nodes of a cluster: the fan-in publishers on node 1, the subscriber on node 2.
    # Capped below the cluster's forward_queue (10,000 per peer node): nothing pushes back
    # from node 2 to node 1 (forwarding is at most once), so open-loop publishers would
    # fill node 1's queue and measure how fast it drops.
    "forward": {"publishers": 8, "messages": (25_000, 5_000), "payload": 64, "outstanding": 4_000},
}


# -- encoding (MQTT 3.1.1, by hand) ------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def connect_packet(client_id: str, keep_alive: int = 600) -> bytes:
    body = _str("MQTT") + b"\x04\x02" + keep_alive.to_bytes(2, "big") + _str(client_id)
    return b"\x10" + _varint(len(body)) + body


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    body = packet_id.to_bytes(2, "big") + _str(topic_filter) + bytes([qos])
    return b"\x82" + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    body = _str(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body


def publish_qos1_parts(topic: str, payload: bytes) -> tuple[bytes, bytes]:
    """(prefix, payload) such that prefix + packet_id(2) + payload is a QoS 1 PUBLISH."""
    body_len = 2 + len(topic.encode()) + 2 + len(payload)
    return b"\x32" + _varint(body_len) + _str(topic), payload


# -- measuring CPU -------------------------------------------------------------------------


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat from field 3 (state) on; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``ternmq --workers N``: the supervisor and its
    workers), from the ppid field of every /proc/*/stat (this kernel may have no
    /proc/PID/task/TID/children)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def proc_cpu(pid: int | None, pids: list[int] | None = None) -> float | None:
    """utime + stime from /proc/PID/stat (all threads), in seconds: of ``pid``, or summed
    over ``pids`` (a process tree listed once, at the start of a measurement)."""
    if not pid:
        return None
    total = 0
    for p in pids or [pid]:
        fields = _stat_fields(p)
        if fields is None:
            if p == pid:
                return None
            continue  # a worker that ended: the run fails anyway (its broker stops)
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def proc_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and its descendants, in KiB."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            if p == pid:
                raise RuntimeError(f"no VmRSS for pid {pid}") from None
    return total


def machine_busy() -> float:
    """CPU seconds all processes on the machine have used (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


# Other processes whose CPU a scenario reports beside the broker's (--watch NAME=PID, and
# --peer-pid as "peer"): each gets NAME_cpu, NAME_cpu_s and NAME_us_per_op in the result.
WATCH: dict[str, int] = {}


class Window:
    """Wall time plus generator and broker CPU over a measured interval.

    CPU is sampled every 0.1 s, so that a scenario ending with an idle wait (the
    generator waiting to see whether more messages come) reports the CPU use up to its
    last delivery, not diluted by the wait. The broker's CPU is its process tree's
    (listed once, here); the processes in WATCH are measured the same way, each apart.
    """

    def __init__(self, broker_pid: int | None) -> None:
        self.broker_pid = broker_pid
        self.trees = {name: process_tree(pid) for name, pid in WATCH.items()}
        self.broker_tree = process_tree(broker_pid) if broker_pid else None
        self.t0 = time.perf_counter()
        self.gen0 = own_cpu()
        self.brk0 = proc_cpu(broker_pid, self.broker_tree)
        self.watched0 = self._watched()
        self.busy0 = machine_busy()
        self.samples: list[tuple[float, float, float | None, float, dict[str, float | None]]] = []
        self._task = asyncio.ensure_future(self._sample())

    def _watched(self) -> dict[str, float | None]:
        return {name: proc_cpu(WATCH[name], tree) for name, tree in self.trees.items()}

    def _take(self) -> None:
        self.samples.append(
            (
                time.perf_counter(),
                own_cpu(),
                proc_cpu(self.broker_pid, self.broker_tree),
                machine_busy(),
                self._watched(),
            )
        )

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self._take()

    def close(self, t_end: float | None = None) -> dict:
        self._task.cancel()
        self._take()
        now = self.samples[-1][0]
        t_end = now if t_end is None else t_end
        t, gen, brk, busy, watched = next(s for s in self.samples if s[0] >= t_end)
        span = max(t - self.t0, 1e-9)
        gen_s = gen - self.gen0
        brk_s = brk - self.brk0 if brk is not None and self.brk0 is not None else None
        extra: dict[str, float | None] = {}
        for name, cpu in watched.items():
            cpu0 = self.watched0[name]
            used = cpu - cpu0 if cpu is not None and cpu0 is not None else None
            extra[f"{name}_cpu_s"] = used
            extra[f"{name}_cpu"] = used / span if used is not None else None
        others = sum(v for k, v in extra.items() if k.endswith("_cpu_s") and v is not None)
        return {
            "wall": t_end - self.t0,
            "gen_cpu": gen_s / span,
            "broker_cpu": brk_s / span if brk_s is not None else None,
            "broker_cpu_s": brk_s,
            **extra,
            # Everything else the machine ran meanwhile (other processes, kernel work not
            # charged to either), in cores: a noisy neighbour shows up here.
            "other_cpu": max(0.0, (busy - self.busy0) - gen_s - (brk_s or 0.0) - others) / span,
        }


# -- the client ----------------------------------------------------------------------------


class Tally:
    """Deliveries counted across a scenario's subscribers."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.received = 0
        self.last_rx = 0.0
        self.done = asyncio.get_running_loop().create_future()
        self.latencies: list[int] | None = None
        self.on_receive = None  # callable() after each batch of deliveries


class Client(asyncio.Protocol):
    """One MQTT connection; ``data_received`` is the only per-message code path."""

    def __init__(self, tally: Tally | None = None, ack_qos1: bool = False, stamp_offset: int = -1) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.tally = tally
        self.ack_qos1 = ack_qos1
        self.stamp_offset = stamp_offset  # >= 0: payload starts with a perf_counter_ns stamp
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future = loop.create_future()
        self.suback: asyncio.Future | None = None
        self.lost: asyncio.Future = loop.create_future()
        self._drain: asyncio.Future | None = None
        self.paused = False
        self.on_puback = None  # callable(count) for QoS 1 publishers

    # asyncio.Protocol

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport
        transport.set_write_buffer_limits(high=262_144)

    def connection_lost(self, exc):  # type: ignore[override]
        if not self.lost.done():
            self.lost.set_result(exc)
        for fut in (self.connack, self.suback, self._drain):
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("connection closed by the broker"))

    def pause_writing(self):  # type: ignore[override]
        self.paused = True

    def resume_writing(self):  # type: ignore[override]
        self.paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        if self.paused:
            self._drain = self.loop.create_future()
            await self._drain
        else:
            await asyncio.sleep(0)

    def data_received(self, data):  # type: ignore[override]
        buf = self.buf
        buf += data
        n = len(buf)
        pos = 0
        count = 0
        pubacks = 0
        acks = bytearray() if self.ack_qos1 else None
        stamp = self.stamp_offset
        stamps = [] if stamp >= 0 else None
        while n - pos >= 2:
            h = buf[pos]
            b = buf[pos + 1]
            if b < 0x80:
                start = pos + 2
                end = start + b
            else:
                rl = b & 0x7F
                mult = 128
                i = pos + 2
                while i < n:
                    b = buf[i]
                    i += 1
                    rl += (b & 0x7F) * mult
                    if b < 0x80:
                        break
                    mult <<= 7
                else:
                    break  # length not complete yet
                start = i
                end = start + rl
            if end > n:
                break
            kind = h >> 4
            if kind == 3:
                count += 1
                if h & 0x06:
                    if acks is not None:
                        p = start + 2 + ((buf[start] << 8) | buf[start + 1])
                        acks += b"\x40\x02"
                        acks += buf[p : p + 2]
                if stamps is not None:
                    p = start + 2 + ((buf[start] << 8) | buf[start + 1]) + (2 if h & 0x06 else 0)
                    stamps.append(struct.unpack_from(">q", buf, p)[0])
            elif kind == 4:
                pubacks += 1
            elif kind == 2:
                if not self.connack.done():
                    self.connack.set_result(buf[start + 1])
            elif kind == 9:
                if self.suback is not None and not self.suback.done():
                    self.suback.set_result(bytes(buf[start + 2 : end]))
            pos = end
        if pos:
            del buf[:pos]
        if acks:
            self.transport.write(acks)
        if pubacks and self.on_puback is not None:
            self.on_puback(pubacks)
        if count:
            tally = self.tally
            if tally is not None:
                now = time.perf_counter()
                tally.received += count
                tally.last_rx = now
                if stamps:
                    now_ns = time.perf_counter_ns()
                    tally.latencies.extend(now_ns - s for s in stamps)
                if tally.received >= tally.target and not tally.done.done():
                    tally.done.set_result(now)
                if tally.on_receive is not None:
                    tally.on_receive()

    # helpers

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def subscribe(self, topic_filter: str, qos: int) -> None:
        self.suback = self.loop.create_future()
        self.transport.write(subscribe_packet(1, topic_filter, qos))
        codes = await self.suback
        if not codes or codes[0] >= 0x80:
            raise RuntimeError(f"subscription to {topic_filter!r} refused: {codes!r}")

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(DISCONNECT)
            self.transport.close()


async def open_client(port: int, client_id: str, keep_alive: int = 600, **kwargs) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: Client(**kwargs), HOST, port)
    client.write(connect_packet(client_id, keep_alive))
    code = await client.connack
    if code != 0:
        client.transport.close()
        raise RuntimeError(f"CONNACK return code {code} for {client_id}")
    return client


async def wait_delivered(tally: Tally, publishers_done: asyncio.Future, deadline: float) -> tuple[float, str]:
    """Until every message arrived, or the rest is clearly lost, or the deadline."""
    while True:
        if tally.done.done():
            return tally.done.result(), "complete"
        now = time.perf_counter()
        if now >= deadline:
            return tally.last_rx or now, "timeout"
        if publishers_done.done() and now - max(tally.last_rx, publishers_done.result()) > IDLE_END:
            return tally.last_rx or now, "lost"
        await asyncio.wait([tally.done], timeout=min(0.25, max(deadline - now, 0.001)))


# -- scenarios -----------------------------------------------------------------------------

# --cluster: the broker is several nodes (ternmq --workers N, or the forward scenario's
# two nodes), and a subscription reaches the other nodes through Redis some milliseconds
# after its SUBACK; a message published on a node that does not know it yet goes nowhere.
CLUSTER = {"on": False}
PROBE_WAIT = 0.2  # seconds a probe has to arrive before it is sent again
PROBE_DEADLINE = 10.0  # seconds for all probes of a scenario


async def await_routes(tally: Tally, senders: list[tuple[Client, str]], per_probe: int = 1) -> None:
    """In a cluster, before the clock starts: each (client, topic) in turn publishes one
    QoS 0 probe until ``per_probe`` deliveries of it arrive (all of a fan-out's
    subscribers), so that every publisher's node has every subscriber's route. The probes
    are then forgotten (tally reset). Nothing happens on a single node."""
    if not CLUSTER["on"]:
        return
    give_up = time.perf_counter() + PROBE_DEADLINE
    arrived = asyncio.Event()
    wanted = {"count": 0}

    def on_receive() -> None:
        if tally.received >= wanted["count"]:
            arrived.set()

    tally.on_receive = on_receive
    for client, topic in senders:
        frame = publish_packet(topic, b"p" * 64, 0)
        while True:
            arrived.clear()
            wanted["count"] = tally.received + per_probe
            client.write(frame)
            try:
                await asyncio.wait_for(arrived.wait(), PROBE_WAIT)
                break
            except TimeoutError:
                if time.perf_counter() > give_up:
                    raise RuntimeError(
                        f"a probe on {topic!r} never reached every subscriber: routes not propagated"
                    ) from None
    tally.on_receive = None
    await asyncio.sleep(PROBE_WAIT)  # the late copies of probes sent twice
    tally.received = 0
    tally.last_rx = 0.0
    if tally.latencies is not None:
        tally.latencies.clear()


class Gate:
    """At most ``cap`` messages published but not yet delivered, over all publishers
    (QoS 0 has no acknowledgement to pace a publisher with; this one waits for the
    subscriber instead)."""

    def __init__(self, tally: Tally, cap: int) -> None:
        self.tally = tally
        self.cap = cap
        self.sent = 0
        self.more = asyncio.Event()
        tally.on_receive = self.more.set

    async def reserve(self, k: int) -> None:
        while self.sent + k - self.tally.received > self.cap:
            self.more.clear()
            await self.more.wait()
        self.sent += k


async def publish_qos0(
    client: Client, topic: str, payload: bytes, count: int, batch_n: int, gate: Gate | None = None
) -> None:
    """Write ``count`` prebuilt QoS 0 PUBLISH frames in batches, respecting flow control
    (and ``gate``'s cap, if any)."""
    frame = publish_packet(topic, payload, 0)
    batch = frame * batch_n
    sent = 0
    while sent < count:
        k = min(batch_n, count - sent)
        if gate is not None:
            await gate.reserve(k)
        client.write(batch if k == batch_n else frame * k)
        sent += k
        await client.drain()


def rate_result(tally: Tally, result: dict, status: str, unit: str) -> dict:
    """A throughput scenario's report: what arrived over the measured window."""
    return {
        "value": tally.received / result["wall"] if result["wall"] > 0 else 0.0,
        "unit": unit,
        "received": tally.received,
        "expected": tally.target,
        "status": status,
        **result,
    }


async def fanin(
    port: int, pid: int | None, quick: bool, deadline: float, qos: int, scenario: str = "", sub_port: int = 0
) -> dict:
    """8 publishers -> 1 subscriber; ``sub_port``: the subscriber on another node (forward)."""
    p = PARAMS[scenario or ("fanin_qos1" if qos else "fanin_qos0")]
    publishers = p["publishers"]
    per_pub = p["messages"][quick]
    payload = b"x" * p["payload"]
    tally = Tally(publishers * per_pub)
    sub = await open_client(sub_port or port, "bench-sub", tally=tally, ack_qos1=bool(qos))
    await sub.subscribe("bench/fanin/+", qos)
    pubs = [await open_client(port, f"bench-pub-{i}") for i in range(publishers)]
    await await_routes(tally, [(c, f"bench/fanin/{i}") for i, c in enumerate(pubs)])
    loop = asyncio.get_running_loop()
    publishers_done = loop.create_future()
    gate = Gate(tally, p["outstanding"]) if not qos and p.get("outstanding") else None
    window = Window(pid)

    async def qos0_publisher(i: int, client: Client) -> None:
        await publish_qos0(client, f"bench/fanin/{i}", payload, per_pub, 256, gate)

    # QoS 1: each publisher keeps up to `window` PUBACKs outstanding, and the generator
    # never lets more than publishers * window messages be published but not yet
    # delivered: the brokers acknowledge a PUBLISH on receipt, so without that cap the
    # publishers would outrun the subscriber's 32-message in-flight window and measure
    # how fast a broker fills (and drops from) its 1,000-message queue instead.
    win = p.get("window", 0)
    cap = publishers * win
    sent = [0] * publishers
    acked = [0] * publishers
    totals = {"sent": 0}
    finished = [loop.create_future() for _ in range(publishers)]
    qos1_frames = []

    def try_send(i: int) -> None:
        k = min(win - (sent[i] - acked[i]), cap - (totals["sent"] - tally.received), per_pub - sent[i])
        if k <= 0:
            return
        prefix, body = qos1_frames[i]
        start = sent[i]
        pubs[i].write(b"".join([prefix + ((j % 65535) + 1).to_bytes(2, "big") + body for j in range(start, start + k)]))
        sent[i] = start + k
        totals["sent"] += k

    def on_puback(i: int, k: int) -> None:
        acked[i] += k
        try_send(i)
        if acked[i] >= per_pub and not finished[i].done():
            finished[i].set_result(None)

    def on_receive() -> None:
        for i in range(publishers):
            try_send(i)

    async def qos1_publisher(i: int, client: Client) -> None:
        client.on_puback = lambda k: on_puback(i, k)
        try_send(i)
        await asyncio.wait([finished[i], client.lost], return_when=asyncio.FIRST_COMPLETED)

    if qos:
        qos1_frames[:] = [publish_qos1_parts(f"bench/fanin/{i}", payload) for i in range(publishers)]
        tally.on_receive = on_receive

    run = qos1_publisher if qos else qos0_publisher
    tasks = [asyncio.ensure_future(run(i, c)) for i, c in enumerate(pubs)]

    async def all_published() -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        publishers_done.set_result(time.perf_counter())

    watcher = asyncio.ensure_future(all_published())
    t_end, status = await wait_delivered(tally, publishers_done, deadline)
    result = window.close(t_end)
    for t in tasks:
        t.cancel()
    watcher.cancel()
    for c in pubs + [sub]:
        c.close()
    return rate_result(tally, result, status, "msg/s")


async def fanout(port: int, pid: int | None, quick: bool, deadline: float) -> dict:
    p = PARAMS["fanout"]
    n_subs = p["subscribers"]
    messages = p["messages"][quick]
    tally = Tally(n_subs * messages)
    subs = []
    for i in range(n_subs):
        c = await open_client(port, f"bench-sub-{i}", tally=tally)
        await c.subscribe("bench/fanout", 0)
        subs.append(c)
    pub = await open_client(port, "bench-pub")
    await await_routes(tally, [(pub, "bench/fanout")], per_probe=n_subs)
    loop = asyncio.get_running_loop()
    publishers_done = loop.create_future()
    window = Window(pid)

    async def publisher() -> None:
        try:
            await publish_qos0(pub, "bench/fanout", b"x" * p["payload"], messages, 64)
        finally:
            publishers_done.set_result(time.perf_counter())

    task = asyncio.ensure_future(publisher())
    t_end, status = await wait_delivered(tally, publishers_done, deadline)
    result = window.close(t_end)
    task.cancel()
    for c in subs + [pub]:
        c.close()
    return rate_result(tally, result, status, "deliveries/s")


async def latency(port: int, pid: int | None, quick: bool, deadline: float) -> dict:
    p = PARAMS["latency"]
    rate = p["rate"]
    total = int(rate * p["seconds"][quick])
    pad = b"x" * (p["payload"] - 8)
    tally = Tally(total)
    tally.latencies = []
    sub = await open_client(port, "bench-lat-sub", tally=tally, stamp_offset=0)
    await sub.subscribe("bench/latency", 0)
    pub = await open_client(port, "bench-lat-pub")
    await await_routes(tally, [(pub, "bench/latency")])
    topic = _str("bench/latency")
    header = b"\x30" + _varint(len(topic) + p["payload"]) + topic
    loop = asyncio.get_running_loop()
    publishers_done = loop.create_future()
    window = Window(pid)

    async def publisher() -> None:
        t0 = time.perf_counter()
        k = 0
        try:
            while k < total:
                now = time.perf_counter()
                due = min(total, int((now - t0) * rate) + 1)
                if due > k:
                    out = []
                    for _ in range(due - k):
                        out.append(header + struct.pack(">q", time.perf_counter_ns()) + pad)
                    pub.write(b"".join(out))
                    k = due
                next_at = t0 + k / rate
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        finally:
            publishers_done.set_result(time.perf_counter())

    task = asyncio.ensure_future(publisher())
    t_end, status = await wait_delivered(tally, publishers_done, deadline)
    result = window.close(t_end)
    task.cancel()
    sub.close()
    pub.close()
    lat = sorted(tally.latencies[p["warmup"] :] or tally.latencies)
    if not lat:
        return {"value": None, "status": "no messages", **result}
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6  # noqa: E731 (ns -> ms)
    return {
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "max_ms": lat[-1] / 1e6,
        "mean_ms": statistics.fmean(lat) / 1e6,
        "unit": "ms",
        "received": tally.received,
        "expected": total,
        "status": status,
        **result,
    }


class _Churn(asyncio.Protocol):
    """CONNECT on connect, DISCONNECT + close on CONNACK."""

    def __init__(self, client_id: str, done: asyncio.Future) -> None:
        self.packet = connect_packet(client_id, 600)
        self.done = done
        self.buf = b""
        self.transport = None

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport
        transport.write(self.packet)

    def data_received(self, data):  # type: ignore[override]
        self.buf += data
        if len(self.buf) >= 4 and not self.done.done():
            ok = self.buf[0] == 0x20 and self.buf[3] == 0
            self.transport.write(DISCONNECT)
            self.transport.close()
            self.done.set_result(ok)

    def connection_lost(self, exc):  # type: ignore[override]
        if not self.done.done():
            self.done.set_result(False)


def build_connstorm() -> Path | None:
    """Compile bench/connstorm.c once (gcc); None where there is no C compiler."""
    source = Path(__file__).with_name("connstorm.c")
    binary = Path(__file__).with_name(".build") / "connstorm"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    if shutil.which("gcc") is None:
        return None
    binary.parent.mkdir(exist_ok=True)
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


async def connects(port: int, pid: int | None, quick: bool, deadline: float) -> dict:
    """Connect/CONNACK/disconnect churn, driven by the C client when gcc is here.

    The asyncio client below spends about 250 µs of CPU per connection, which saturates
    the generator's core at ~3-4k connects/s, below what Mosquitto and ternmq do.
    """
    binary = build_connstorm()
    if binary is None:
        return await connects_asyncio(port, pid, quick, deadline)
    p = PARAMS["connects"]
    total = p["connections"][quick]
    window = Window(pid)
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        HOST,
        str(port),
        str(total),
        str(p["parallel"]),
        str(max(1.0, deadline - time.perf_counter())),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    result = window.close()
    ok, failed, wall, cpu = out.split()
    result["wall"] = float(wall)
    # The generator's CPU is the C client's: this process only waited for it.
    result["gen_cpu"] = float(cpu) / max(float(wall), 1e-9)
    ok_count = int(ok)
    return {
        "value": ok_count / float(wall),
        "unit": "conn/s",
        "received": ok_count,
        "expected": total,
        "generator": "connstorm.c",
        "status": "complete" if ok_count == total else ("failed" if int(failed) else "timeout"),
        **result,
    }


async def connects_asyncio(port: int, pid: int | None, quick: bool, deadline: float) -> dict:
    p = PARAMS["connects"]
    total = p["connections"][quick]
    parallel = p["parallel"]
    loop = asyncio.get_running_loop()
    counts = {"ok": 0, "failed": 0, "next": 0}
    window = Window(pid)

    async def worker(w: int) -> None:
        while counts["next"] < total and time.perf_counter() < deadline:
            i = counts["next"]
            counts["next"] += 1
            done = loop.create_future()
            try:
                await loop.create_connection(lambda i=i, done=done: _Churn(f"bench-c{w}-{i}", done), HOST, port)
                ok = await asyncio.wait_for(done, max(0.1, deadline - time.perf_counter()))
            except (TimeoutError, OSError):
                ok = False
            counts["ok" if ok else "failed"] += 1

    await asyncio.gather(*(worker(w) for w in range(parallel)))
    result = window.close()
    return {
        "value": counts["ok"] / result["wall"],
        "unit": "conn/s",
        "received": counts["ok"],
        "expected": total,
        "status": "complete" if counts["ok"] == total else ("timeout" if counts["next"] < total else "failed"),
        **result,
    }


async def memory(port: int, pid: int | None, quick: bool, deadline: float) -> dict:
    if not pid:
        raise SystemExit("memory needs --broker-pid")
    p = PARAMS["memory"]
    total = p["connections"][quick]
    # Warm up: let the broker load whatever it loads on a first connection.
    for i in range(20):
        c = await open_client(port, f"bench-warm-{i}")
        c.close()
        await c.lost
    await asyncio.sleep(1.0)
    rss0 = proc_rss_kib(pid)
    window = Window(pid)
    clients: list[Client] = []
    batch = 100
    status = "complete"
    for start in range(0, total, batch):
        if time.perf_counter() > deadline:
            status = "timeout"
            break
        clients += await asyncio.gather(
            *(
                open_client(port, f"bench-idle-{i}", keep_alive=p["keep_alive"])
                for i in range(start, min(total, start + batch))
            )
        )
    connected_in = time.perf_counter() - window.t0
    result = window.close()
    await asyncio.sleep(1.5)
    rss1 = proc_rss_kib(pid)
    for c in clients:
        c.close()
    n = len(clients)
    return {
        "value": (rss1 - rss0) / n if n else None,
        "unit": "KiB/conn",
        "rss0_kib": rss0,
        "rss1_kib": rss1,
        "connect_seconds": connected_in,
        "received": n,
        "expected": total,
        "status": status,
        **result,
    }


async def forward(port: int, pid: int | None, quick: bool, deadline: float) -> dict:
    """Cross-node forwarding: QoS 0 fan-in with the publishers on node 1 (``--port``,
    ``--broker-pid``) and the subscriber on node 2 (``--peer-port``, ``--peer-pid``):
    every message goes node 1 -> Redis -> node 2. The broker CPU per message of each
    node, apart: ``sender_us_per_msg`` (node 1's CPU per message published) and
    ``receiver_us_per_msg`` (node 2's per message delivered)."""
    if not PEER["port"] or "peer" not in WATCH:
        raise SystemExit("forward needs --peer-port and --peer-pid (node 2)")
    result = await fanin(port, pid, quick, deadline, 0, scenario="forward", sub_port=PEER["port"])
    if result.get("broker_cpu_s") is not None and result["expected"]:
        result["sender_us_per_msg"] = result["broker_cpu_s"] / result["expected"] * 1e6
    if result.get("peer_cpu_s") is not None and result["received"]:
        result["receiver_us_per_msg"] = result["peer_cpu_s"] / result["received"] * 1e6
    return result


PEER = {"port": 0}

SCENARIOS = {
    "fanin_qos0": lambda port, pid, quick, dl: fanin(port, pid, quick, dl, 0),
    "fanin_qos1": lambda port, pid, quick, dl: fanin(port, pid, quick, dl, 1),
    "fanout": fanout,
    "latency": latency,
    "connects": connects,
    "memory": memory,
    "forward": forward,
}


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def amain(args: argparse.Namespace) -> dict:
    deadline = time.perf_counter() + args.deadline
    return await asyncio.wait_for(
        SCENARIOS[args.scenario](args.port, args.broker_pid, args.quick, deadline), args.deadline + 5.0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--broker-pid", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--deadline", type=float, default=50.0, help="seconds after which the scenario stops and reports what it has"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario parameter (e.g. --set window=10), for experiments",
    )
    parser.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="NAME=PID",
        help="also report this process's (and its descendants') CPU as NAME_cpu (e.g. redis=PID)",
    )
    parser.add_argument(
        "--cluster", action="store_true", help="the broker is several nodes: probe the routes before the clock starts"
    )
    parser.add_argument("--peer-port", type=int, default=0, help="forward: node 2's port (the subscriber's)")
    parser.add_argument("--peer-pid", type=int, default=None, help="forward: node 2's pid")
    args = parser.parse_args(argv)
    for item in args.watch:
        name, _, pid = item.partition("=")
        if not name or not pid.isdigit():
            parser.error(f"--watch wants NAME=PID, not {item!r}")
        WATCH[name] = int(pid)
    if args.peer_pid:
        WATCH["peer"] = args.peer_pid
    PEER["port"] = args.peer_port
    CLUSTER["on"] = args.cluster or args.scenario == "forward"
    for item in args.set:
        key, _, value = item.partition("=")
        params = PARAMS[args.scenario]
        if key not in params:
            parser.error(f"{args.scenario} has no parameter {key!r} (has: {', '.join(params)})")
        number = float(value) if "." in value else int(value)
        params[key] = (number, number) if isinstance(params[key], tuple) else number
    raise_nofile()
    try:
        result = asyncio.run(amain(args))
    except TimeoutError:
        print(
            f"{args.scenario}: no result within {args.deadline + 5:.0f} s (the broker never answered "
            "a CONNECT or SUBSCRIBE?)",
            file=sys.stderr,
        )
        return 1
    except (OSError, RuntimeError) as exc:
        print(f"{args.scenario}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    result["scenario"] = args.scenario
    if result.get("broker_cpu_s") is not None and result.get("received"):
        # Broker CPU per delivered message / per connection: less sensitive than a rate to
        # a busy machine, since it does not count the time the broker waited for a core.
        result["broker_us_per_op"] = result["broker_cpu_s"] / result["received"] * 1e6
    for name in WATCH:
        if result.get(f"{name}_cpu_s") is not None and result.get("received"):
            result[f"{name}_us_per_op"] = result[f"{name}_cpu_s"] / result["received"] * 1e6
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
