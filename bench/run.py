"""Benchmark ternmq against Mosquitto and amqtt with one load generator on loopback.

    python bench/run.py [--quick] [--brokers ternmq,mosquitto,amqtt] [--scenarios ...]

For every broker and every scenario: start a fresh broker on a free 127.0.0.1 port,
run ``bench/loadgen.py`` against it in its own process (hard timeout), stop the broker.
With ternmq and the connects scenario, floor.py's trio-raw server (no MQTT in it) runs
the connects scenario too, right after ternmq, so that the goal "ternmq's CPU per
connect+disconnect ≤ 1.3 × trio-raw's" is checked within one run, same client, same
CPU accounting. Prints a markdown table (absolute numbers, generator and broker CPU,
ratios) and writes it to bench/results/latest.md (and the raw numbers to latest.json).
``--brokers ternmq,ternmq@REV`` adds ternmq as it was at git revision REV (before/after
in one run). Cluster mode: ``ternmq-workersN`` is ``ternmq --workers N`` with a Redis the
bench starts (broker CPU summed over the supervisor and its workers, Redis's apart), and
the ``forward`` scenario runs two ternmq nodes, publishers on one, the subscriber on the
other, for the CPU per cross-node message at each end. See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from brokers import (  # noqa: E402
    FLOOR,
    NAMES,
    Broker,
    Redis,
    ensure_amqtt_venv,
    is_ternmq,
    known,
    revision_of,
    version_of,
    workers_of,
)
from loadgen import PARAMS  # noqa: E402

# `forward` (two ternmq nodes of a cluster) runs only when asked for, and only for ternmq
# and ternmq@REV: the other brokers have no cluster to forward through.
SCENARIOS = ("fanin_qos0", "fanin_qos1", "fanout", "latency", "connects", "memory", "forward")
DEFAULT_SCENARIOS = SCENARIOS[:-1]
GEN_SATURATED = 0.90  # generator CPU at or above this marks a result as possibly generator-bound
# What "best" means when --repeat runs a scenario several times.
PRIMARY = {
    "fanin_qos0": ("value", True),
    "fanin_qos1": ("value", True),
    "fanout": ("value", True),
    "latency": ("p99_ms", False),
    "connects": ("value", True),
    "memory": ("value", False),
    "forward": ("value", True),
}
# Per-operation CPU costs a cell keeps for every repeated run (the CPU table shows the lowest).
COST_KEYS = ("broker_us_per_op", "sender_us_per_msg", "receiver_us_per_msg", "redis_us_per_op")
# Cluster goals: cross-node forwarding CPU per message at each end (µs, the forward
# scenario), and ternmq-workersN's connects/s against one ternmq process (N: ratio).
FORWARD_TARGETS = {"sender_us_per_msg": 10.0, "receiver_us_per_msg": 5.0}
WORKERS_TARGET = {2: 1.4}
# In a run with a ternmq-workersN, QoS 0 fan-in keeps at most this many messages published
# but not yet delivered, for every broker of the run (loadgen's `outstanding`, as in the
# forward scenario): nothing pushes back from one worker to another (forwarding is at most
# once; a peer's full queue drops), so open-loop publishers on the subscriber's other
# worker would measure how fast its forward queue (10,000) overflows. `--set
# outstanding=0` runs it open loop anyway.
CLUSTER_OUTSTANDING = PARAMS["forward"]["outstanding"]
# ternmq's broker CPU per connect+disconnect against the trio-raw floor's (the goal that
# replaced "≥ 10× amqtt connects/s": a ratio to what trio itself costs, on one core).
FLOOR_TARGET = 1.3


# (row label, scenario, key in the result, higher_is_better, target as (ratio, against) or None)
ROWS = [
    ("QoS 0 fan-in 8→1 (msg/s)", "fanin_qos0", "value", True, (5.0, "amqtt")),
    ("QoS 1 fan-in 8→1 (msg/s)", "fanin_qos1", "value", True, None),
    ("fan-out 1→50 (deliveries/s)", "fanout", "value", True, (3.0, "amqtt")),
    ("latency p50 @1k msg/s (ms, lower is better)", "latency", "p50_ms", False, None),
    ("latency p99 @1k msg/s (ms, lower is better)", "latency", "p99_ms", False, None),
    ("connects (conn/s)", "connects", "value", True, None),  # the goal is in the CPU table
    ("memory per idle connection (KiB, lower is better)", "memory", "value", False, ("15 KiB", None)),
    ("cross-node forward 8→1, node 1 → node 2 (msg/s)", "forward", "value", True, None),
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pinned(broker: str, scenario: str, brokers: list[str], pin: bool) -> bool:
    """Whether a cell pins its broker to CPU 0 and the generator to CPU 1. Never a
    ternmq-workersN (N workers need N cores) nor the forward scenario's two nodes; and in
    a run with a ternmq-workersN, not ternmq (nor ternmq@REV, nor the floor) either, so
    that one process and N are measured on the same terms: broker and generator free to
    share the machine's cores."""
    if not pin or workers_of(broker) or scenario == "forward":
        return False
    cluster_run = any(workers_of(b) for b in brokers)
    return not (cluster_run and (is_ternmq(broker) or broker == FLOOR))


# Counters of each ternmq node read after a cluster run (ternmq-admin metrics show).
NODE_METRICS = (
    "counter.connections_accepted",
    "counter.publish_received",
    "counter.deliveries",
    "counter.cluster_forwarded",
    "counter.cluster_received",
    "counter.cluster_dropped",
    "counter.cluster_frame_gaps",
)


def run_one(broker_name: str, scenario: str, args: argparse.Namespace, pin: bool) -> dict:
    redis = peer = None
    if scenario == "forward":  # two nodes, one Redis: publishers on node 1, subscriber on node 2
        redis = Redis()
        broker = Broker(broker_name, redis=redis, node="node1")
        peer = Broker(broker_name, redis=redis, node="node2")
    else:  # a ternmq-workersN starts (and stops) a Redis of its own
        broker = Broker(broker_name, cpus={0} if pin else None)
    try:
        if redis is not None:
            redis.start()
        broker.start()
        if peer is not None:
            peer.start()
    except Exception as exc:
        for b in (peer, broker):
            if b is not None:
                b.stop()
        if redis is not None:
            redis.stop()
        return {"error": f"broker did not start: {exc}"}
    redis = redis or broker.redis
    profiler = None
    try:
        cmd = [
            sys.executable,
            str(BENCH / "loadgen.py"),
            scenario,
            "--port",
            str(broker.port),
            "--broker-pid",
            str(broker.pid),
            "--deadline",
            str(max(5.0, args.timeout - 8.0)),
        ]
        if args.quick:
            cmd.append("--quick")
        for item in args.set:
            cmd += ["--set", item]
        if redis is not None:
            cmd += ["--cluster", "--watch", f"redis={redis.pid}"]
        if peer is not None:
            cmd += ["--peer-port", str(peer.port), "--peer-pid", str(peer.pid)]
        if args.profile and broker_name == "ternmq":
            profiler = start_profiler(broker.pid, scenario)
        started = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=args.timeout,
                preexec_fn=(lambda: os.sched_setaffinity(0, {1})) if pin else None,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"hard timeout after {args.timeout:.0f} s"}
        if proc.returncode != 0 or not proc.stdout.strip():
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            return {"error": "load generator failed: " + " | ".join(tail), "broker_log": broker.log_tail(5)}
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["elapsed"] = time.perf_counter() - started
        for b in (broker, peer):
            if b is not None and b.proc.poll() is not None:
                result["error"] = f"broker {b.node} exited with {b.proc.returncode} during the run"
        if redis is not None and "error" not in result:
            # Where the clients landed and what crossed between nodes (probes included).
            nodes = broker.metrics() + (peer.metrics() if peer is not None else [])
            result["nodes"] = [{k.split(".", 1)[1]: int(n.get(k, 0)) for k in NODE_METRICS} for n in nodes]
        return result
    finally:
        if profiler is not None:
            stop_profiler(profiler, scenario)
        broker.stop()
        if peer is not None:
            peer.stop()
        if scenario == "forward" and redis is not None:
            redis.stop()


# -- optional profiling of ternmq with py-spy ----------------------------------------------


def start_profiler(pid: int, scenario: str) -> subprocess.Popen | None:
    out = BENCH / "results" / f"profile-{scenario}.txt"
    out.parent.mkdir(exist_ok=True)
    try:
        proc = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--rate", "200", "--gil", "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        log("--profile needs py-spy (pip install py-spy)")
        return None
    time.sleep(0.5)  # let py-spy attach before the load starts
    return proc


def stop_profiler(proc: subprocess.Popen, scenario: str) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    path = BENCH / "results" / f"profile-{scenario}.txt"
    if path.exists():
        summary = summarize_profile(path)
        (BENCH / "results" / f"profile-{scenario}-top.txt").write_text(summary)
        log(f"  profile: {path.relative_to(BENCH.parent)} (top: profile-{scenario}-top.txt)")


def _ours(frame: str) -> bool:
    return any(m in frame for m in ("(kernel/", "(plugins/", "(api/", "ternmq/")) and not any(
        m in frame for m in ("__main__", "kernel/cli.py")
    )


def summarize_profile(path: Path, top: int = 25) -> str:
    """Where the broker's time goes, from py-spy's collapsed stacks (GIL-holding samples).

    Three views: self time per frame (anywhere), time charged to the deepest ternmq frame
    of each sample (so trio and stdlib work lands on the kernel line that caused it),
    and inclusive time per ternmq function.
    """
    own: collections.Counter[str] = collections.Counter()
    deepest: collections.Counter[str] = collections.Counter()
    incl_fn: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        mine = [f for f in frames if _ours(f)]
        deepest[mine[-1] if mine else "(outside ternmq: trio scheduler, I/O wait)"] += n
        for fn in {f.rsplit(":", 1)[0] + ")" for f in mine}:
            incl_fn[fn] += n
    if not total:
        return "no samples\n"

    def block(title: str, counter: collections.Counter[str]) -> list[str]:
        return ["", title] + [f"{100 * n / total:5.1f}%  {frame}" for frame, n in counter.most_common(top)]

    lines = [f"{total} samples while holding the GIL"]
    lines += block("self time per frame", own)
    lines += block("charged to the deepest ternmq frame (file:line)", deepest)
    lines += block("inclusive per ternmq function", incl_fn)
    return "\n".join(lines) + "\n"


# -- the table -----------------------------------------------------------------------------


def fmt_number(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def cell(result: dict | None, key: str, show_cpu: bool = True) -> str:
    if result is None:
        return "–"
    if "error" in result and result.get(key) is None:
        return "failed"
    value = result.get(key)
    text = fmt_number(value)
    gen, brk = result.get("gen_cpu"), result.get("broker_cpu")
    cpu = []
    if gen is not None:
        cpu.append(f"gen {100 * gen:.0f}%" + (" ⚠" if gen >= GEN_SATURATED else ""))
    if brk is not None:
        cpu.append(f"brk {100 * brk:.0f}%")
    if cpu and show_cpu:
        text += f" ({', '.join(cpu)})"
    if result.get("status") not in (None, "complete"):
        text += " †"
    return text


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def target_text(target, ours: float | None, ratios: dict[str, float | None], higher: bool) -> str:
    if target is None:
        return ""
    want, against = target
    if against is None:  # an absolute bound (memory)
        bound = float(want.split()[0])
        ok = ours is not None and ours <= bound
        return f"≤ {want} {'✓' if ok else '✗'}" if ours is not None else f"≤ {want}"
    r = ratios.get(against)
    if r is None:
        return f"≥ {want:g}× {against}"
    ok = r >= want if higher else r <= 1 / want
    return f"≥ {want:g}× {against} {'✓' if ok else '✗'}"


# (row label, scenario, key of the cost in the result)
CPU_ROWS = [
    ("QoS 0 fan-in (µs per message)", "fanin_qos0", "broker_us_per_op"),
    ("QoS 1 fan-in (µs per message)", "fanin_qos1", "broker_us_per_op"),
    ("fan-out (µs per delivery)", "fanout", "broker_us_per_op"),
    ("latency run (µs per message at 1k msg/s)", "latency", "broker_us_per_op"),
    ("connects (µs per connect+disconnect)", "connects", "broker_us_per_op"),
    ("cross-node forward: sender, node 1 (µs per message)", "forward", "sender_us_per_msg"),
    ("cross-node forward: receiver, node 2 (µs per message)", "forward", "receiver_us_per_msg"),
    ("cross-node forward: Redis (µs per message)", "forward", "redis_us_per_op"),
]


def cpu_cost(result: dict | None, key: str = "broker_us_per_op") -> float | None:
    """µs of CPU per operation: the lowest of the repeated runs (the least disturbed by
    other processes), not necessarily the run with the best rate."""
    if not result:
        return None
    runs = result.get("cost_runs", {}).get(key)
    if runs is None and key == "broker_us_per_op":
        runs = result.get("us_runs")
    costs = [c for c in (runs if runs is not None else [result.get(key)]) if c is not None]
    return min(costs) if costs else None


def compared_with(brokers: list[str]) -> list[str]:
    """The brokers ternmq gets a ratio column against: amqtt, Mosquitto, then any
    ternmq@REV (ternmq at another revision, for a before/after in one run). A
    ternmq-workersN has a table of its own (render_cluster)."""
    if "ternmq" not in brokers:
        return []
    return [b for b in ("amqtt", "mosquitto") if b in brokers] + [b for b in brokers if revision_of(b)]


def render_cpu(results: dict[str, dict[str, dict]], brokers: list[str], scenarios: list[str]) -> str:
    """Broker CPU per operation: the same runs, seen as cost instead of rate."""
    others = compared_with(brokers)
    floor = FLOOR in results and "ternmq" in brokers
    targets = floor or ("forward" in scenarios and "ternmq" in brokers)
    columns = brokers + ([f"{FLOOR} (floor)"] if floor else [])
    head = (
        ["broker CPU per operation (lower is better)"]
        + columns
        + [f"ternmq/{o}" for o in others]
        + ([f"ternmq/{FLOOR}"] if floor else [])
        + (["target"] if targets else [])
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, scenario, key in CPU_ROWS:
        if scenario not in scenarios:
            continue
        values = {b: cpu_cost(results.get(b, {}).get(scenario), key) for b in brokers + [FLOOR]}
        row = [label] + [fmt_number(values[b]) for b in brokers]
        if floor:
            row.append(fmt_number(values[FLOOR]))
        row += [f"{r:.2f}×" if (r := ratio(values.get("ternmq"), values[o])) is not None else "–" for o in others]
        r = ratio(values.get("ternmq"), values[FLOOR])
        if floor:
            row.append(f"{r:.2f}×" if r is not None else "–")
        if targets:
            if floor and scenario == "connects":
                mark = "" if r is None else (" ✓" if r <= FLOOR_TARGET else " ✗")
                row.append(f"≤ {FLOOR_TARGET:g}× {FLOOR}{mark}")
            elif key in FORWARD_TARGETS:
                bound, ours = FORWARD_TARGETS[key], values.get("ternmq")
                mark = "" if ours is None else (" ✓" if ours <= bound else " ✗")
                row.append(f"≤ {bound:g} µs{mark}")
            else:
                row.append("")
        lines.append("| " + " | ".join(row) + " |")
    if len(lines) == 2:
        return ""
    forward = results.get("ternmq", {}).get("forward")
    sender, receiver = cpu_cost(forward, "sender_us_per_msg"), cpu_cost(forward, "receiver_us_per_msg")
    local = cpu_cost(results.get("ternmq", {}).get("fanin_qos0"))
    if sender is not None and receiver is not None and local is not None:
        lines.append(
            f"\nForwarding's own cost: sender + receiver − ternmq's QoS 0 fan-in on one node = {sender:.1f} + "
            f"{receiver:.1f} − {local:.1f} = {sender + receiver - local:.1f} µs of broker CPU per cross-node message "
            "(the two nodes together do the MQTT work one node does, plus the forwarding)."
        )
    other = [r.get("other_cpu") for b in results.values() for r in b.values() if r.get("other_cpu") is not None]
    note = ""
    if other and max(other) >= 0.25:
        note = (
            f"\n⚠ Other load (other processes, kernel work charged to neither the generator nor the "
            f"broker) reached {max(other):.2f} cores during some runs (median "
            f"{sorted(other)[len(other) // 2]:.2f}): where it was high, rates above are lower than on an "
            "idle machine; the CPU costs in this table are less affected.\n"
        )
    return "\n".join(lines) + "\n" + note


def crossing(nodes: list[dict[str, int]]) -> str:
    """What went from one node to another: forwarded, dropped (a full forward queue),
    frame gaps, as a share of what the nodes received from publishers."""
    forwarded = sum(n["cluster_forwarded"] for n in nodes)
    dropped = sum(n["cluster_dropped"] for n in nodes)
    gaps = sum(n["cluster_frame_gaps"] for n in nodes)
    published = sum(n["publish_received"] for n in nodes)
    if not published:
        return ""
    text = f"; {forwarded + dropped:,} messages for another node ({100 * (forwarded + dropped) / published:.0f}%)"
    if dropped or gaps:
        text += f", ⚠ {dropped:,} of them dropped (forward queue full), {gaps} frame gaps"
    return text


def render_cluster(results: dict[str, dict[str, dict]], brokers: list[str], scenarios: list[str]) -> str:
    """ternmq-workersN next to one ternmq process: rates, broker CPU (supervisor and
    workers) and Redis CPU per operation, and where the clients landed."""
    clustered = [b for b in brokers if workers_of(b)]
    if not clustered:
        return ""
    base = "ternmq" if "ternmq" in brokers else None
    head = ["cluster mode", *([f"{base} (1 process)"] if base else []), *clustered]
    if base:
        head += [f"{b} ÷ {base}" for b in clustered] + ["target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [
        ("connects (conn/s)", "connects", "value", True),
        ("QoS 0 fan-in 8→1 (msg/s)", "fanin_qos0", "value", True),
        ("connects: broker CPU per connect+disconnect (µs)", "connects", "broker_us_per_op", False),
        ("connects: Redis CPU per connect+disconnect (µs)", "connects", "redis_us_per_op", False),
        ("QoS 0 fan-in: broker CPU per message (µs)", "fanin_qos0", "broker_us_per_op", False),
        ("QoS 0 fan-in: Redis CPU per message (µs)", "fanin_qos0", "redis_us_per_op", False),
    ]
    notes = []
    for label, scenario, key, is_rate in rows:
        if scenario not in scenarios:
            continue

        values = {}
        for b in ([base] if base else []) + clustered:
            r = results.get(b, {}).get(scenario)
            ok = r and not ("error" in r and r.get(key) is None)
            values[b] = (r.get(key) if is_rate else cpu_cost(r, key)) if ok else None
        row = [label] + [fmt_number(values[b]) for b in ([base] if base else []) + clustered]
        if base:
            ratios = [ratio(values[b], values[base]) if key != "redis_us_per_op" else None for b in clustered]
            row += [f"{x:.2f}×" if x is not None else "–" for x in ratios]
            target = ""
            if scenario == "connects" and key == "value":
                goals = [(b, WORKERS_TARGET.get(workers_of(b)), x) for b, x in zip(clustered, ratios, strict=True)]
                target = ", ".join(
                    f"{b} ≥ {want:g}×" + ("" if x is None else (" ✓" if x >= want else " ✗"))
                    for b, want, x in goals
                    if want is not None
                )
            row.append(target)
        lines.append("| " + " | ".join(row) + " |")
    for b in clustered:
        for scenario in scenarios:
            r = results.get(b, {}).get(scenario) or {}
            nodes = r.get("nodes")
            if not nodes:
                continue
            per = " / ".join(f"{n['connections_accepted']:,}" for n in nodes)
            text = f"- {b} / {scenario}: connections per worker {per}"
            if any(n["publish_received"] for n in nodes):
                text += "; publishes received per worker " + " / ".join(f"{n['publish_received']:,}" for n in nodes)
                text += "; deliveries per worker " + " / ".join(f"{n['deliveries']:,}" for n in nodes)
            notes.append(text + crossing(nodes) + ".")
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def render(results: dict[str, dict[str, dict]], brokers: list[str], scenarios: list[str]) -> str:
    others = compared_with(brokers)
    # The floor ran only the connects scenario; its column is "–" elsewhere.
    columns = brokers + ([FLOOR] if FLOOR in results else [])
    head = (
        ["scenario"]
        + [f"{b} (floor)" if b == FLOOR else b for b in columns]
        + [f"ternmq/{o}" for o in others]
        + ["target"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for label, scenario, key, higher, target in ROWS:
        if scenario not in scenarios:
            continue
        row = [label]
        for b in columns:
            # Memory is not a rate: the CPU spent opening the connections says nothing about it.
            row.append(cell(results.get(b, {}).get(scenario), key, show_cpu=scenario != "memory"))
        ours = results.get("ternmq", {}).get(scenario, {}).get(key)
        ratios = {o: ratio(ours, results.get(o, {}).get(scenario, {}).get(key)) for o in others}
        row += [f"{ratios[o]:.2f}×" if ratios[o] is not None else "–" for o in others]
        if scenario == "connects" and FLOOR in results:
            row.append(f"CPU ≤ {FLOOR_TARGET:g}× {FLOOR} (below)")
        else:
            row.append(target_text(target, ours, ratios, higher) if "ternmq" in brokers else "")
        lines.append("| " + " | ".join(row) + " |")
    for b in columns:
        for scenario in scenarios:
            r = results.get(b, {}).get(scenario)
            if r is None:
                continue
            if "error" in r:
                notes.append(f"- {b} / {scenario}: {r['error']}")
            elif r.get("status") not in (None, "complete"):
                why = {"lost": "the rest never arrived", "timeout": "stopped at the deadline"}.get(
                    r["status"], r["status"]
                )
                notes.append(
                    f"- † {b} / {scenario}: {r.get('received', 0):,} of {r.get('expected', 0):,} "
                    f"delivered ({why}); the rate counts what arrived."
                )
            if scenario == "forward" and r.get("nodes"):
                n1, n2 = r["nodes"][:2]
                notes.append(
                    f"- {b} / forward: node 1 received {n1['publish_received']:,} publishes (probes included), "
                    f"node 2 {n2['cluster_received']:,} forwarded messages" + crossing(r["nodes"]) + "."
                )
            if scenario == "memory" and "rss0_kib" in r:
                notes.append(
                    f"- {b} / memory: RSS {r['rss0_kib']:,} KiB idle → {r['rss1_kib']:,} KiB with "
                    f"{r['received']:,} connections"
                )
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def header(
    args: argparse.Namespace,
    brokers: list[str],
    pin: bool,
    floor: bool = False,
    scenarios: list[str] = (),
    cells: list[tuple[str, str]] = (),
) -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mode = "--quick" if args.quick else "full"
    p = PARAMS
    q = 1 if args.quick else 0
    free = sorted({b + (" (forward)" if s == "forward" else "") for b, s in cells if not pinned(b, s, brokers, pin)})
    if not pin:
        pinning = "No CPU pinning."
    elif free:
        pinning = (
            "Broker pinned to CPU 0, load generator to CPU 1, except (no pinning, broker and generator "
            f"share all cores): {', '.join(free)}."
        )
    else:
        pinning = "Broker pinned to CPU 0, load generator to CPU 1."
    cluster = any(workers_of(b) for b in brokers) or ("forward" in scenarios and "ternmq" in brokers)
    capped = (
        any(workers_of(b) for b in brokers)
        and "fanin_qos0" in scenarios
        and not any(i.startswith("outstanding=") for i in args.set)
    )
    lines = [
        f"Run {datetime.datetime.now().isoformat(timespec='seconds')} ({mode}) on {cpu}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; "
        + ", ".join(f"{b} {version_of(b)}" for b in brokers + ([FLOOR] if floor else []))
        + ".",
        pinning
        + f" Per-scenario hard timeout {args.timeout:.0f} s."
        + (
            f" Best of {args.repeat} rounds per cell (runs interleaved: each round runs every cell once;"
            " CPU per operation is the lowest of the rounds)."
            if args.repeat > 1
            else ""
        ),
        f"Parameters: fan-in {p['fanin_qos0']['publishers']} × {p['fanin_qos0']['messages'][q]:,} messages "
        f"of {p['fanin_qos0']['payload']} B (QoS 1: window {p['fanin_qos1']['window']} per publisher); "
        f"fan-out {p['fanout']['messages'][q]:,} messages × {p['fanout']['subscribers']} subscribers; "
        f"latency {p['latency']['rate']:,} msg/s for {p['latency']['seconds'][q]:g} s; "
        f"{p['connects']['connections'][q]:,} connects, {p['connects']['parallel']} in flight (C client); "
        f"{p['memory']['connections'][q]:,} idle connections"
        + (
            f"; forward {p['forward']['publishers']} × {p['forward']['messages'][q]:,} messages "
            f"of {p['forward']['payload']} B"
            if "forward" in scenarios
            else ""
        )
        + "."
        + (f" Overrides: {', '.join(args.set)}." if args.set else ""),
        *(
            [
                f"Cluster: redis-server {version_of('redis')} on 127.0.0.1 (no persistence), a fresh one per run. "
                "ternmq-workersN is `ternmq --workers N` (its brk: the supervisor and the N workers summed, "
                "up to N00%); forward runs two ternmq nodes, 8 publishers on node 1 and the subscriber on "
                "node 2 (brk: node 1). Redis's CPU is counted apart, not in brk. Publishers start once a "
                "probe from each reached the subscriber (routes propagated)."
                + (
                    f" QoS 0 fan-in keeps at most {CLUSTER_OUTSTANDING:,} messages published but not yet "
                    "delivered, for every broker of this run (as forward does; between nodes nothing pushes "
                    "back, a full forward queue drops)."
                    if capped
                    else ""
                )
            ]
            if cluster
            else []
        ),
        *(
            [
                f"Floor: {FLOOR} is bench/floor.py's trio server with no MQTT in it (accept, read the CONNECT, "
                "write a fixed CONNACK, read until the client closes, close), in the connects scenario only, "
                "right after ternmq in each round."
            ]
            if floor
            else []
        ),
        "Cells: value (gen = load generator CPU, brk = broker CPU, % of one core over the measured "
        "window; ⚠ = generator near saturation). Ratios are ternmq ÷ other: above 1 is better for "
        "throughput, below 1 is better for latency and memory.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ternmq vs Mosquitto vs amqtt on loopback.")
    parser.add_argument("--quick", action="store_true", help="smaller counts, 3 s latency run")
    parser.add_argument(
        "--brokers",
        default=",".join(NAMES),
        help="comma-separated, default: all three; also ternmq@REV and ternmq-workersN (cluster mode)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all but forward)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="hard limit per scenario run, seconds")
    parser.add_argument("--no-pin", action="store_true", help="do not pin broker and generator to CPUs 0/1")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="attach py-spy to ternmq during each scenario (bench/results/profile-*.txt)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a load generator parameter for every selected scenario that has it",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each scenario N times and keep the best run (for a busy machine)"
    )
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help=f"do not run the {FLOOR} floor server beside ternmq in the connects scenario",
    )
    parser.add_argument("--out", default=str(BENCH / "results" / "latest.md"))
    args = parser.parse_args(argv)

    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for b in brokers:
        if not known(b):
            parser.error(f"unknown broker {b!r} (known: {', '.join(NAMES)}, ternmq@REV, ternmq-workersN with N >= 2)")
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0)
    if "amqtt" in brokers:
        ensure_amqtt_venv(log)

    # forward is two nodes of a ternmq cluster: ternmq and ternmq@REV only.
    cells = [(b, s) for b in brokers for s in scenarios if s != "forward" or b == "ternmq" or revision_of(b)]
    cluster_run = any(workers_of(b) for b in brokers)
    floor = not args.no_floor and "ternmq" in brokers and "connects" in scenarios
    if floor:  # right after ternmq's connects run, so both see the same machine state
        cells.insert(cells.index(("ternmq", "connects")) + 1, (FLOOR, "connects"))
    # Rounds rather than N runs in a row: a noisy minute then spoils one run of every
    # cell, not all runs of one, and ternmq and the floor stay side by side.
    runs: dict[tuple[str, str], list[dict]] = {c: [] for c in cells}
    for round_no in range(args.repeat):
        for b, s in cells:
            log(f"{b:9} {s:11} ..." + (f" (round {round_no + 1}/{args.repeat})" if args.repeat > 1 else ""))
            # --set only reaches scenarios that have the parameter.
            scenario_args = argparse.Namespace(**vars(args))
            scenario_args.set = [i for i in args.set if i.partition("=")[0] in PARAMS[s]]
            if s == "fanin_qos0" and cluster_run and not any(i.startswith("outstanding=") for i in args.set):
                scenario_args.set.append(f"outstanding={CLUSTER_OUTSTANDING}")
            x = run_one(b, s, scenario_args, pinned(b, s, brokers, pin))
            runs[b, s].append(x)
            summary = x.get("error") or ", ".join(
                f"{k}={fmt_number(x[k])}"
                for k in (
                    "value",
                    "p50_ms",
                    "p99_ms",
                    "gen_cpu",
                    "broker_cpu",
                    "broker_us_per_op",
                    "sender_us_per_msg",
                    "receiver_us_per_msg",
                    "redis_us_per_op",
                )
                if isinstance(x.get(k), (int, float))
            )
            log(f"{'':21} {summary}")

    results: dict[str, dict[str, dict]] = {}
    for (b, s), cell_runs in runs.items():
        key, higher = PRIMARY[s]
        good = [x for x in cell_runs if isinstance(x.get(key), (int, float)) and "error" not in x]
        if good:
            r = (max if higher else min)(good, key=lambda x: x[key])
            if len(cell_runs) > 1:
                r["runs"] = [x.get(key) for x in cell_runs]
                r["us_runs"] = [x.get("broker_us_per_op") for x in good]
                r["cost_runs"] = {k: [x.get(k) for x in good] for k in COST_KEYS if any(k in x for x in good)}
        else:
            r = cell_runs[-1]
        results.setdefault(b, {})[s] = r

    text = header(args, brokers, pin, floor, scenarios, cells) + "\n" + render(results, brokers, scenarios)
    cpu_table = render_cpu(results, brokers, scenarios)
    if cpu_table:
        text += "\n" + cpu_table
    cluster_table = render_cluster(results, brokers, scenarios)
    if cluster_table:
        text += "\n" + cluster_table
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    log(f"wrote {out} and {out.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
