"""The node's figures of /api/v2 (``management/nodes`` and ``monitoring/...``: the broker,
the process, the listeners, EMQ 2's metrics and stats) and its plugins, listed and
loaded or unloaded.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ternmq import __version__
from ternmq.kernel import Service

from .. import model
from ..routes import run_after_answer
from .envelope import LOADED, UNKNOWN, UNLOADED, Call, Handlers, Refused, moment, param

if TYPE_CHECKING:
    from .. import Plugin

# EMQ 2's packet counters: publish and its acks both ways, the others one way.
_ACKED = ("publish", "puback", "pubrec", "pubrel", "pubcomp")
_ONE_WAY = {
    "received": ("connect", "subscribe", "unsubscribe", "pingreq", "disconnect"),
    "sent": ("connack", "suback", "unsuback", "pingresp"),
}
_UNCOUNTED = (
    *(f"packets/{kind}/missed" for kind in _ACKED[1:]),
    *(f"messages/qos{qos}/{way}" for qos in range(3) for way in ("received", "sent")),
    "messages/qos2/dropped",
)


def uptime(seconds: int) -> str:
    """EMQ 2's ``1 hours, 17 minutes, 1 seconds`` (leading zero units left out)."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    parts = [(days, "days"), (hours, "hours"), (rest // 60, "minutes")]
    while parts and parts[0][0] == 0:
        parts.pop(0)
    return ", ".join(f"{value} {unit}" for value, unit in [*parts, (rest % 60, "seconds")])


def tasks() -> int:
    """The trio tasks running (EMQ 2 counted Erlang processes)."""
    root = trio.lowlevel.current_root_task()
    count, todo = 0, [root] if root is not None else []
    while todo:
        task = todo.pop()
        count += 1
        todo += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return count


def broker_info() -> dict[str, Any]:
    """EMQ 2's ``management/nodes`` entry."""
    return {
        "version": __version__,
        "sysdescr": "ternmq",
        "uptime": uptime(int(time.time() - model.STARTED_AT)),
        "datetime": moment(time.time()),
        "otp_release": f"Python {platform.python_version()}",
        "node_status": "Running",
    }


def vm_info(service: Service) -> dict[str, Any]:
    """EMQ 2's ``monitoring/nodes`` entry: the process's memory, tasks, files, load."""
    used, total = model.resident_memory()
    try:
        loads = [f"{load:.2f}" for load in os.getloadavg()]
    except OSError:
        loads = ["0.00"] * 3
    return {
        "name": service.node_name,
        "otp_release": f"Python {platform.python_version()}",
        "memory_total": model.human_size(total),
        "memory_used": model.human_size(used),
        "process_available": "infinity",
        "process_used": tasks(),
        "max_fds": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "clients": model.node(service)["live_connections"],
        "node_status": "Running",
        **dict(zip(("load1", "load5", "load15"), loads, strict=True)),
    }


def listeners(service: Service) -> list[dict[str, Any]]:
    return [
        {
            "protocol": "mqtt:" + ("ssl" if info.type == "tls" else info.type),
            "listen": f"{info.address}:{info.port}",
            "acceptors": 1,
            "max_clients": info.max_connections,
            "current_clients": info.active_connections,
            "shutdown_count": [],
        }
        for info in service.listeners()
        if info.status == "running"
    ]


def metrics(service: Service) -> dict[str, int | float]:
    """EMQ 2's metric names (the per-QoS and ``missed`` counts are not kept: 0)."""
    figures = model.metrics(service)
    values: dict[str, int | float] = dict.fromkeys(_UNCOUNTED, 0)
    values |= {f"packets/{kind}/{way}": 0 for kind in _ACKED for way in ("received", "sent")}
    values |= {f"packets/{kind}": 0 for kinds in _ONE_WAY.values() for kind in kinds}
    for way, kinds in _ONE_WAY.items():
        for (packet_type,), value in model.by_label(service, f"packets_{way}").items():
            kind = packet_type.lower()
            if kind in _ACKED:
                values[f"packets/{kind}/{way}"] += value
            elif kind in kinds:
                values[f"packets/{kind}"] += value
    for what in ("bytes", "packets", "messages"):
        for way in ("received", "sent"):
            values[f"{what}/{way}"] = figures[f"{what}.{way}"]
    values |= {"messages/dropped": figures["messages.dropped"], "messages/retained": figures["messages.retained"]}
    return dict(sorted(values.items()))


def stats(service: Service) -> dict[str, int]:
    figures = model.stats(service)
    names = ("retained", "routes", "sessions", "subscribers", "subscriptions", "topics")
    pairs = [("clients", "live_connections"), *((name, name) for name in names)]
    return {f"{ours}/{end}": figures[f"{theirs}.{end}"] for ours, theirs in pairs for end in ("count", "max")}


#: What ``management/nodes``, ``monitoring/nodes`` and ``monitoring/...`` report of a node.
FIGURES: dict[str, Callable[[Service], Any]] = {
    "management/nodes": lambda service: broker_info(),
    "monitoring/nodes": vm_info,
    "monitoring/listeners": listeners,
    "monitoring/metrics": metrics,
    "monitoring/stats": stats,
}
#: The paths of ``FIGURES``, as a route's pattern (the first part of its params).
FIGURE_PATHS = "(management/nodes|monitoring/(?:nodes|listeners|metrics|stats))"


class Nodes(Handlers):
    """The nodes' figures (the nodes' list, or one per node, or one node's) and plugins."""

    def __init__(self, plugin: Plugin, service: Service) -> None:
        super().__init__(plugin, service)
        self.stopped = plugin.stopped_plugins

    def of_all(self, call: Call) -> Any:
        what = call.params[0]
        if what == "management/nodes":
            return [{"name": self.node, **broker_info()}]
        return [vm_info(self.service)] if what == "monitoring/nodes" else {self.node: FIGURES[what](self.service)}

    def of_node(self, call: Call) -> Any:
        self.on_node(call.params[1])
        return FIGURES[call.params[0]](self.service)

    # -- plugins ----------------------------------------------------------------------------------

    def plugin_list(self, call: Call) -> Any:
        self.on_node(call.params[0])
        rows = model.plugin_listing(self.service, lambda: self.stopped)
        return [
            {key: row[key] for key in ("name", "version", "description")} | {"active": row["running"]} for row in rows
        ]

    async def plugin_active(self, call: Call) -> Any:
        service, stopped = self.service, self.stopped
        self.on_node(call.params[0])
        active = param(call.body, "active", bool)
        name = model.plugin_name(service, stopped, call.params[1])
        try:
            if active:
                await model.start_plugin(service, stopped, name)
            elif name == service.plugin_name_of(self.plugin):
                # Unloading the API cancels its requests: this one is answered first.
                run_after_answer(service, lambda: model.stop_plugin(service, stopped, name), f"api: unload {name}")
            else:
                await model.stop_plugin(service, stopped, name)
        except model.ControlError as exc:
            codes = {"running": LOADED, "stopped": UNLOADED, "not_found": UNKNOWN if active else UNLOADED}
            raise Refused(codes.get(exc.kind, UNKNOWN), str(exc)) from None
        return []
