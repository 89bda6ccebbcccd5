"""The admin commands of this node: metrics and status."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ternmq import __version__
from ternmq.kernel import AdminRegistry, Arguments, CommandError, Service, Table, Text, label_text

Number = int | float

_METRICS_FLAGS = ("aggregate", "with-descriptions", "node", "per-node")
#: Gauges that count what every node holds its own copy of (the retained messages, which
#: the cluster replicates; the ACL and password files and the bans, usually the same on
#: every node): over a cluster these show the largest node's value, not a sum.
COPIED_GAUGES = frozenset({"retained_messages", "acl_rules", "passwd_users", "banned_entries"})

Samples = Mapping[tuple[str, ...], Number] | None


async def _metrics_show(service: Service, args: Arguments) -> Text:
    """VerneMQ's ``metrics show``, over every node of the cluster: ``kind.name = value``
    lines, each summed over the nodes (a copied gauge: the largest, COPIED_GAUGES);
    ``--node=NAME`` one node's alone, ``--per-node`` a line per node (labelled
    ``node``). A labelled metric summed over its labels unless ``--aggregate=false``;
    ``--<label>=<value>`` keeps the samples with that label value;
    ``--with-descriptions`` puts each help above."""
    aggregate = "aggregate" not in args.flags or args.bool_flag("aggregate")
    describe = args.bool_flag("with-descriptions")
    per_node = args.bool_flag("per-node")
    only = args.text_flag("node")
    everything = await service.all_metrics()
    if only is not None:
        everything = tuple(node for node in everything if node.node == only)
        if not everything:
            raise CommandError(f"no node {only} answered (cluster show lists the nodes)")
    # (kind, name, labels) -> the help and each node's samples, in the nodes' order
    metrics: dict[tuple[str, str, tuple[str, ...]], tuple[str, list[tuple[str, Samples]]]] = {}
    for node in everything:
        for reading in node.metrics:
            key = (reading.kind, reading.name, reading.labels)
            metrics.setdefault(key, (reading.help, []))[1].append((node.node, reading.samples))
    wanted = {name: value for name, value in args.flags.items() if name not in _METRICS_FLAGS}
    known_labels = {label for _, _, labels in metrics for label in labels}
    for name, value in wanted.items():
        if name not in known_labels:
            raise args.usage_error(f"unknown flag --{name} (labels: {', '.join(sorted(known_labels)) or 'none'})")
        if not isinstance(value, str):
            raise args.usage_error(f"--{name} filters by a label: --{name}=<value>")
    lines = []
    for (kind, name, labels), (help_text, by_node) in sorted(metrics.items()):
        if any(label not in labels for label in wanted):
            continue  # a label filter keeps only the metrics that have that label
        if per_node:
            shown = [
                line
                for node, samples in by_node
                for line in _shown(name, labels, samples, wanted, aggregate, ("node", node))
            ]
        else:
            combine = max if kind == "gauge" and name in COPIED_GAUGES else sum
            shown = _shown(name, labels, _combined([s for _, s in by_node], combine), wanted, aggregate, None)
        if describe and help_text and shown:
            lines.append(f"# {help_text}")
        lines += [f"{kind}.{sample} = {value}" for sample, value in shown]
    return Text("\n".join(lines))


def _combined(
    each: list[Samples], combine: Callable[[Iterable[Number]], Number]
) -> Mapping[tuple[str, ...], Number] | None:
    """The nodes' samples of one metric as one (None when every node's reader failed):
    per label values, ``combine`` (sum, or max) over the nodes that have them."""
    read = [samples for samples in each if samples is not None]
    if not read:
        return None
    keys = dict.fromkeys(key for samples in read for key in samples)
    return {key: combine(samples[key] for samples in read if key in samples) for key in keys}


def _shown(
    name: str,
    labels: tuple[str, ...],
    samples: Samples,
    wanted: Mapping[str, Any],
    aggregate: bool,
    node: tuple[str, str] | None,
) -> list[tuple[str, Number]]:
    """The (sample name, value) lines of one metric; ``node``: its ("node", name) label."""
    extra_names, extra_values = (("node",), (node[1],)) if node else ((), ())

    def named(names: tuple[str, ...], values: tuple[str, ...]) -> str:
        names, values = (*extra_names, *names), (*extra_values, *values)
        return f"{name}{{{label_text(names, values)}}}" if names else name

    if samples is None:  # a broken reader reads -1, as on /metrics and in $SYS
        return [(named((), ()), -1)]
    if not labels:
        return [(named((), ()), value) for value in samples.values()]
    kept = {
        values: value
        for values, value in samples.items()
        if all(dict(zip(labels, values, strict=True)).get(k) == v for k, v in wanted.items())
    }
    if aggregate:
        return [(named((), ()), sum(kept.values()))] if kept or not wanted else []
    return [(named(labels, values), value) for values, value in kept.items()]


def _node_status(service: Service, args: Arguments) -> Table:
    values = service.metrics()
    online = values["gauge.clients_online"]
    deliveries = values["counter.deliveries"]
    rows = [
        ("node", service.node_name),
        ("num_online", online),
        ("num_offline", values["gauge.sessions"] - online),
        ("msg_in", values["counter.publish_received"]),
        ("msg_out", deliveries),
        # VerneMQ's queue counters: every message for a session passes its queue here;
        # those dropped (queue full, expired...) never come out.
        ("queue_in", deliveries + values["counter.messages_dropped"]),
        ("queue_out", deliveries),
        ("queue_drop", values["counter.messages_dropped"]),
        ("queue_unhandled", 0),
        ("num_subscriptions", values["gauge.subscriptions"]),
        ("num_retained", values.get("gauge.retained_messages", 0)),
        # Subscriptions a message matched on this node, and (in a cluster) on others.
        ("matches_local", deliveries),
        ("matches_remote", 0),
        ("version", __version__),
    ]
    return Table(tuple({"Status": k, "Value": v} for k, v in rows), ("Status", "Value"))


async def _cluster_show(service: Service, args: Arguments) -> Table:
    # This node alone, unless a cluster plugin knows others (VerneMQ's columns).
    nodes = await service.nodes()
    return Table(tuple({"Node": node.name, "Running": node.running} for node in nodes), ("Node", "Running"))


#: VerneMQ's netsplit switches (``set allow_publish_during_netsplit=on``): the cluster
#: plugin puts them in force while its node has lost Redis; a single node has no netsplit.
NETSPLIT_SETTINGS = tuple(
    f"allow_{action}_during_netsplit" for action in ("register", "publish", "subscribe", "unsubscribe")
)


class NetsplitSettings:
    """The values of NETSPLIT_SETTINGS, "on" or "off" (VerneMQ's default: off)."""

    def __init__(self) -> None:
        self.values = dict.fromkeys(NETSPLIT_SETTINGS, "off")

    def register(self, settings: Any) -> None:
        for name in NETSPLIT_SETTINGS:
            settings.add(
                name,
                lambda name=name: self.values[name],
                lambda value, name=name: self._set(name, value),
                "VerneMQ's netsplit switch: in force while a cluster node has lost Redis (no effect on a single node)",
            )

    def _set(self, name: str, value: Any) -> None:
        words = {True: "on", False: "off", "on": "on", "off": "off", "true": "on", "false": "off"}
        if not isinstance(value, (bool, str)) or value not in words:
            raise ValueError(f"{name} must be on or off, not {value!r}")
        self.values[name] = words[value]


def _not_clustered(service: Service, args: Arguments) -> Text:
    raise CommandError(
        f"{service.node_name} runs as a single node: joining and leaving a cluster needs a cluster plugin"
    )


def _clustered(service: Service, hook: str) -> bool:
    """Whether a cluster plugin is loaded that implements ``hook``."""
    return any(hook in info.hooks for info in service.plugins())


async def _cluster_join(service: Service, args: Arguments) -> Text:
    if not _clustered(service, "cluster_nodes"):
        return _not_clustered(service, args)
    raise CommandError("a node joins the cluster at its start, through its [cluster] table's redis_url")


async def _cluster_leave(service: Service, args: Arguments) -> Text:
    if not _clustered(service, "cluster_leave"):
        return _not_clustered(service, args)
    node = args.keys.get("node")
    if not node:
        raise args.usage_error("node=NAME: the node to remove (one that is down)")
    try:
        taken = await service.leave_cluster(node)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return Text(f"Done: {node} removed; {taken} of its sessions are {service.node_name}'s now")


def register(registry: AdminRegistry) -> None:
    registry.describe("cluster", "The cluster this node is in (one node without a cluster plugin).")
    registry.add("cluster show", _cluster_show, help="The nodes and whether they run.")
    # VerneMQ's cluster commands, answered with why they cannot run on a single node.
    registry.add(
        "cluster join",
        _cluster_join,
        help="Join a cluster (a node joins through its [cluster] table).",
        keys={"discovery-node": "a node of the cluster"},
    )
    registry.add(
        "cluster leave",
        _cluster_leave,
        help="Remove a node that is down from the cluster; this node takes over its sessions.",
        keys={"node": "the node"},
        flags={"kill_sessions": "", "summary-interval": "", "timeout": ""},
    )
    registry.describe("metrics", "Show metrics.")
    registry.add(
        "metrics show",
        _metrics_show,
        any_flags=True,
        help="Print every counter and gauge, summed over the nodes of the cluster. --node=NAME: one node's; "
        "--per-node: a line per node; --aggregate=false: a line per label value; "
        "--<label>=<value>: only those samples; --with-descriptions: each metric's help above it.",
    )
    registry.describe("node", "This broker node.")
    registry.add("node status", _node_status, help="Node status summary.")
