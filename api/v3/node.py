"""EMQX 3's brokers, nodes, figures (stats, metrics, listeners) and plugins (load, unload,
reload) on /api/v3."""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ternmq import __version__
from ternmq.kernel import PluginError, Service

from .. import model
from . import LOADED, UNKNOWN, UNLOADED, Call, Fail, Handler, done, ok

if TYPE_CHECKING:
    from .. import Plugin


def uptime() -> str:
    """EMQX 3's words: ``1 days,18 hours, 45 minutes, 1 seconds``."""
    secs = int(time.time() - model.STARTED_AT)
    text = f"{secs % 60} seconds"
    for bound, part in ((60, f"{secs // 60 % 60} minutes, "), (3600, f"{secs // 3600 % 24} hours, ")):
        text = part + text if secs >= bound else text
    return f"{secs // 86400} days," + text if secs >= 86400 else text


class NodeHandlers:
    """The handlers of the node's endpoints: brokers, nodes, figures and plugins."""

    def __init__(self, plugin: Plugin, service: Service) -> None:
        self.plugin, self.service = plugin, service
        self.node = service.node_name
        self.stopped = plugin.stopped_plugins

    def each_node(self, data: Any, key: str | None = None) -> Any:
        return [{"node": self.node, **(data if key is None else {key: data})}]

    # -- brokers, nodes, figures ---------------------------------------------------------------

    def broker(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "sysdescr": "ternmq MQTT broker",
            "uptime": uptime(),
            "datetime": model.local_time(time.time()),
            "otp_release": f"Python/{platform.python_version()}",
            "node_status": "Running",
        }

    def node_info(self, human: bool) -> dict[str, Any]:
        try:
            loads = [f"{load:.2f}" for load in os.getloadavg()]
        except OSError:
            loads = ["0.00"] * 3
        used, peak = model.resident_memory()
        return {
            **self.broker(),
            "name": self.node,
            "memory_total": model.human_size(peak) if human else peak,
            "memory_used": model.human_size(used) if human else used,
            "max_fds": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "connections": model.node(self.service)["connections"],
            **dict(zip(("load1", "load5", "load15"), loads, strict=True)),
        }

    def stats(self) -> dict[str, int]:
        figures = model.stats(self.service)
        persistent = sum(1 for info in self.service.sessions() if info.expiry_interval != 0)
        names = "connections sessions topics suboptions subscribers subscriptions subscriptions.shared routes retained"
        kept = {f"{name}.{s}": figures[f"{name}.{s}"] for name in names.split() for s in ("count", "max")}
        return kept | {"sessions.persistent.count": persistent, "sessions.persistent.max": persistent}

    def metrics(self) -> dict[str, int | float]:
        m = model.metrics(self.service)
        raw = model.totals(self.service)
        connects = raw.get("connections_accepted", 0) + raw.get("connect_refused", 0)
        names = "bytes.received bytes.sent packets.received packets.sent messages.received messages.sent"
        return {name: m[name] for name in (*names.split(), "messages.dropped", "messages.retained")} | {
            "packets.connect.received": connects,
            "packets.connack.sent": connects,
            "packets.connack.auth_error": raw.get("connect_refused", 0),
            "packets.publish.received": raw.get("publish_received", 0),
            "packets.publish.auth_error": raw.get("publish_denied", 0),
            "packets.publish.sent": raw.get("deliveries", 0),
        }

    def listeners(self) -> list[dict[str, Any]]:
        return [
            {
                "protocol": "mqtt:" + {"tls": "ssl"}.get(info.type, info.type),
                "listen_on": f"{info.address}:{info.port}",
                "acceptors": 1,
                "max_conns": info.max_connections,
                "current_conns": info.active_connections,
                "shutdown_count": [],
            }
            for info in self.service.listeners()
            if info.status == "running"
        ]

    # -- plugins (EMQX 3's load and unload are ours) ---------------------------------------------

    def plugins(self) -> list[dict[str, Any]]:
        """Loaded plugins, those stopped in this run, and the built-in ones not loaded."""
        from ternmq.plugins import BUILTIN, ESSENTIAL

        rows = model.plugin_listing(self.service, lambda: self.stopped)
        listed = [(r["name"], r["version"], r["description"], r["running"], r["source"]) for r in rows]
        known = {row["name"] for row in rows} | set(ESSENTIAL)
        listed += [(name, __version__, "", False, "builtin") for name in BUILTIN if name not in known]
        return [dict(zip(("name", "version", "description", "active", "type"), row, strict=True)) for row in listed]

    def answered_first(self, call: Call, action: Callable[[], Awaitable[object]], what: str) -> dict[str, Any]:
        """The API unloading itself: answered first, done once the answer is sent."""
        from ..routes import run_after_answer

        run_after_answer(self.service, action, f"api: {what}")
        call.close = True
        return ok()

    async def plugin_load(self, call: Call) -> dict[str, Any]:
        service, stopped = self.service, self.stopped
        name = model.plugin_name(service, stopped, call.bindings["plugin"])
        try:
            await model.start_plugin(service, stopped, name)
        except model.ControlError as exc:
            raise Fail(LOADED if exc.kind == "running" else UNKNOWN, str(exc)) from None
        return ok()

    async def plugin_unload(self, call: Call) -> dict[str, Any]:
        service, stopped = self.service, self.stopped
        name = model.plugin_name(service, stopped, call.bindings["plugin"])
        if name == service.plugin_name_of(self.plugin):
            return self.answered_first(call, lambda: model.stop_plugin(service, stopped, name), f"unload {name}")
        try:
            await model.stop_plugin(service, stopped, name)
        except model.ControlError as exc:
            gone = exc.kind == "stopped" or exc.kind == "not_found" and name in {r["name"] for r in self.plugins()}
            raise Fail(UNLOADED if gone else UNKNOWN, str(exc)) from None
        return ok()

    async def plugin_reload(self, call: Call) -> dict[str, Any]:
        service = self.service
        name = model.plugin_name(service, self.stopped, call.bindings["plugin"])
        if not any(info.name == name for info in service.plugins()):
            return await self.plugin_load(call)  # EMQX 3 loads an inactive plugin
        if name == service.plugin_name_of(self.plugin):
            return self.answered_first(call, lambda: service.reload_plugin(name), f"reload {name}")
        try:
            await service.reload_plugin(name)
        except PluginError as exc:
            raise Fail(UNKNOWN, str(exc)) from None
        return ok()

    # -- the handlers, by ENDPOINTS' first column ------------------------------------------------

    def table(self) -> dict[str, Handler]:
        node = self.node
        return {
            "brokers": lambda c: done(self.each_node(self.broker())),
            "broker": lambda c: done(self.broker()),
            "listeners": lambda c: done(self.each_node(self.listeners(), "listeners")),
            "node_listeners": lambda c: done(self.listeners()),
            "metrics": lambda c: done(self.each_node(self.metrics(), "metrics")),
            "node_metrics": lambda c: done(self.metrics()),
            "nodes": lambda c: done([{**self.node_info(True), "node": node}]),
            "node": lambda c: done(self.node_info(False)),
            "plugins": lambda c: done(self.each_node(self.plugins(), "plugins")),
            "node_plugins": lambda c: done(self.plugins()),
            "load": self.plugin_load,
            "unload": self.plugin_unload,
            "reload": self.plugin_reload,
            "stats": lambda c: done(self.each_node(self.stats())),
            "node_stats": lambda c: done(self.stats()),
        }
