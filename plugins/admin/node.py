"""The admin commands of this node: metrics and status."""

from __future__ import annotations

from typing import Any

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


def _cluster_show(service: Service, args: Arguments) -> Table:
    # One node until a cluster plugin joins others (VerneMQ's columns).
    return Table(({"Node": service.node_name, "Running": True},), ("Node", "Running"))


#: VerneMQ's netsplit switches: accepted and shown (``set allow_publish_during_netsplit=on``)
#: so that scripts written for a VerneMQ cluster run; a single node has no netsplit.
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
                "VerneMQ's cluster switch; no effect on a single node",
            )

    def _set(self, name: str, value: Any) -> None:
        words = {True: "on", False: "off", "on": "on", "off": "off", "true": "on", "false": "off"}
        if not isinstance(value, (bool, str)) or value not in words:
            raise ValueError(f"{name} must be on or off, not {value!r}")
        self.values[name] = words[value]


def register(registry: AdminRegistry) -> None:
    registry.describe("cluster", "The cluster this node is in (one node without a cluster plugin).")
    registry.add("cluster show", _cluster_show, help="The nodes and whether they run.")
    registry.describe("metrics", "Show metrics.")
    registry.add("metrics show", _metrics_show, help="Print every counter and gauge.")
    registry.describe("node", "This broker node.")
    registry.add("node status", _node_status, help="Node status summary.")
