"""The ``$SYS`` tree (the ``sys`` built-in plugin).

Every ``interval`` seconds the broker's metrics are published as the broker itself:

* VerneMQ's tree: each metric under ``$SYS/<node_name>/`` with every ``_`` of its name
  a topic level (``publish_received`` → ``$SYS/<node>/publish/received``); a metric with
  labels (the webhooks' per-endpoint counts) as the sum over them. The payload is the
  value as decimal text.
* Mosquitto's familiar topics: ``$SYS/broker/version``, ``uptime`` ("N seconds"),
  ``clients/connected``, ``clients/disconnected``, ``clients/total``,
  ``messages/received``, ``messages/sent``, ``subscriptions/count``,
  ``retained messages/count``.

Config keys (``[plugins.sys]``): ``interval`` (10.0 seconds; Mosquitto's
``sys_interval``), ``retain`` (true: as Mosquitto, a new subscriber gets the last values
at once; VerneMQ's default is false), ``qos`` (0), ``vernemq_tree`` (true),
``mosquitto_tree`` (true). Clients may subscribe to ``$SYS/#`` but not publish under it.
"""

from __future__ import annotations

import logging
import time

import attrs
import trio

from ternmq import __version__
from ternmq.kernel import Service

log = logging.getLogger("ternmq.plugins.sys")


@attrs.frozen
class Config:
    interval: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    retain: bool = True
    qos: int = attrs.field(default=0, validator=attrs.validators.in_((0, 1, 2)))
    vernemq_tree: bool = True
    mosquitto_tree: bool = True


class Plugin:
    """Publishes the ``$SYS`` tree (module docstring)."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.started = time.monotonic()

    def topics(self, service: Service) -> dict[str, str]:
        """Topic -> payload of one tick."""
        values: dict[str, float] = {}
        for metric in service.metric_list():
            total = metric.total()
            if total is not None:  # a plugin's broken reader must not stop the tree
                values[metric.name] = total
        topics: dict[str, str] = {}
        if self.config.vernemq_tree:
            node = service.node_name
            for name, value in values.items():
                levels = [level for level in name.replace(".", "_").split("_") if level]
                topics[f"$SYS/{node}/{'/'.join(levels)}"] = _text(value)
        if self.config.mosquitto_tree:
            online = values.get("clients_online", 0)
            sessions = values.get("sessions", 0)
            retained = values.get("retained_messages")
            broker = {
                "version": f"ternmq version {__version__}",
                "uptime": f"{int(time.monotonic() - self.started)} seconds",
                "clients/connected": _text(online),
                "clients/disconnected": _text(sessions - online),
                "clients/total": _text(sessions),
                "messages/received": _text(values.get("publish_received", 0)),
                "messages/sent": _text(values.get("deliveries", 0)),
                "subscriptions/count": _text(values.get("subscriptions", 0)),
            }
            if retained is not None:
                broker["retained messages/count"] = _text(retained)
            topics.update({f"$SYS/broker/{topic}": payload for topic, payload in broker.items()})
        return topics

    async def publish_once(self, service: Service) -> None:
        retain = self.config.retain and service.retain_available
        for topic, payload in self.topics(service).items():
            try:
                await service.publish(topic, payload.encode(), qos=self.config.qos, retain=retain)
            except ValueError as exc:  # a plugin's metric whose name is no topic level
                log.debug("$SYS: %s not published: %s", topic, exc)

    async def serve(self, service: Service, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.publish_once(service)
            except Exception:  # one bad tick must not end the tree
                log.exception("$SYS: publishing failed")
            await trio.sleep(self.config.interval)


def _text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"
