"""The admin commands of this node: metrics and status."""

from __future__ import annotations

from ternmq import __version__
from ternmq.kernel import AdminRegistry, Arguments, Service, Table, Text


def _metrics_show(service: Service, args: Arguments) -> Text:
    return Text("\n".join(f"{name} = {value}" for name, value in sorted(service.metrics().items())))


def _node_status(service: Service, args: Arguments) -> Table:
    values = service.metrics()
    online = values["gauge.clients_online"]
    rows = [
        ("node", service.node_name),
        ("num_online", online),
        ("num_offline", values["gauge.sessions"] - online),
        ("msg_in", values["counter.publish_received"]),
        ("msg_out", values["counter.deliveries"]),
        ("queue_drop", values["counter.messages_dropped"]),
        ("num_subscriptions", values["gauge.subscriptions"]),
        ("version", __version__),
    ]
    return Table(tuple({"Status": k, "Value": v} for k, v in rows), ("Status", "Value"))


def register(registry: AdminRegistry) -> None:
    registry.describe("metrics", "Show metrics.")
    registry.add("metrics show", _metrics_show, help="Print every counter and gauge.")
    registry.describe("node", "This broker node.")
    registry.add("node status", _node_status, help="Node status summary.")
