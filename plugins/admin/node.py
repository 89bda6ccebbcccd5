"""The admin commands of this node: metrics and status."""

from __future__ import annotations

from typing import Any

from ternmq import __version__
from ternmq.kernel import AdminRegistry, Arguments, CommandError, Service, Table, Text, label_text

_METRICS_FLAGS = ("aggregate", "with-descriptions")


def _metrics_show(service: Service, args: Arguments) -> Text:
    """VerneMQ's ``metrics show``: ``kind.name = value`` lines; a labelled metric summed
    over its labels unless ``--aggregate=false``; ``--<label>=<value>`` keeps the
    samples with that label value; ``--with-descriptions`` puts each help above."""
    aggregate = "aggregate" not in args.flags or args.bool_flag("aggregate")
    describe = args.bool_flag("with-descriptions")
    metrics = sorted(service.metric_list(), key=lambda metric: (metric.kind, metric.name))
    wanted = {name: value for name, value in args.flags.items() if name not in _METRICS_FLAGS}
    known_labels = {label for metric in metrics for label in metric.labels}
    for name, value in wanted.items():
        if name not in known_labels:
            raise args.usage_error(f"unknown flag --{name} (labels: {', '.join(sorted(known_labels)) or 'none'})")
        if not isinstance(value, str):
            raise args.usage_error(f"--{name} filters by a label: --{name}=<value>")
    lines = []
    for metric in metrics:
        if any(label not in metric.labels for label in wanted):
            continue  # a label filter keeps only the metrics that have that label
        reading = metric.reading()
        shown: list[tuple[str, Any]]
        if reading is None:  # a broken reader reads -1, as on /metrics and in $SYS
            shown = [(metric.name, -1)]
        elif isinstance(reading, dict):
            samples = {
                values: value
                for values, value in reading.items()
                if all(dict(zip(metric.labels, values, strict=True)).get(k) == v for k, v in wanted.items())
            }
            if aggregate:
                shown = [(metric.name, sum(samples.values()))] if samples or not wanted else []
            else:
                shown = [(f"{metric.name}{{{label_text(metric.labels, k)}}}", v) for k, v in samples.items()]
        else:
            shown = [(metric.name, reading)]
        if describe and metric.help and shown:
            lines.append(f"# {metric.help}")
        lines += [f"{metric.kind}.{name} = {value}" for name, value in shown]
    return Text("\n".join(lines))


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


def register(registry: AdminRegistry) -> None:
    registry.describe("cluster", "The cluster this node is in (one node without a cluster plugin).")
    registry.add("cluster show", _cluster_show, help="The nodes and whether they run.")
    # VerneMQ's cluster commands, answered with why they cannot run on a single node.
    registry.add(
        "cluster join",
        _not_clustered,
        help="Join a cluster (needs a cluster plugin).",
        keys={"discovery-node": "a node of the cluster"},
    )
    registry.add(
        "cluster leave",
        _not_clustered,
        help="Leave the cluster (needs a cluster plugin).",
        keys={"node": "the node"},
        flags={"kill_sessions": "", "summary-interval": "", "timeout": ""},
    )
    registry.describe("metrics", "Show metrics.")
    registry.add(
        "metrics show",
        _metrics_show,
        any_flags=True,
        help="Print every counter and gauge. --aggregate=false: a line per label value; "
        "--<label>=<value>: only those samples; --with-descriptions: each metric's help above it.",
    )
    registry.describe("node", "This broker node.")
    registry.add("node status", _node_status, help="Node status summary.")
