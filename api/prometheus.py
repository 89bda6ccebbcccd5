"""Prometheus' text format of every metric of the broker, written by prometheus-client.

Each metric of ``service.metric_list()`` becomes one family named ``<namespace><name>``
(characters Prometheus does not allow become ``_``), labelled with ``node`` and the
metric's own labels; counters get prometheus-client's ``_total`` samples.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ternmq.kernel import Service

_NOT_ALLOWED = re.compile(r"[^a-zA-Z0-9_:]")
_VALID = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
log = logging.getLogger("ternmq.api")


class _BrokerCollector:
    def __init__(self, service: Service, namespace: str) -> None:
        self.service = service
        self.namespace = namespace

    def collect(self) -> Iterator[Metric]:
        node = self.service.node_name
        names: set[str] = set()
        for metric in self.service.metric_list():
            name = _NOT_ALLOWED.sub("_", f"{self.namespace}{metric.name}").removesuffix("_total")
            if name in names or not _VALID.fullmatch(name):
                log.debug("metric %s not exported: its name %r is taken or invalid", metric.name, name)
                continue
            # Prometheus' convention for a label that clashes with one the exporter adds.
            labels = ["exported_node" if label == "node" else label for label in metric.labels]
            kind = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
            family = kind(name, metric.help or metric.name.replace("_", " "), labels=["node", *labels])
            reading = metric.reading()
            if reading is None:  # a plugin's broken reader must not take the page down
                log.debug("metric %s not exported: its reader failed or read no number", metric.name)
                continue
            samples = reading.items() if isinstance(reading, dict) else [((), reading)]
            for values, value in samples:
                family.add_metric([node, *values], value)
            names.add(name)
            yield family


def exposition(service: Service, namespace: str) -> tuple[bytes, str]:
    """The page's bytes and content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_BrokerCollector(service, namespace))
    return generate_latest(registry), CONTENT_TYPE_LATEST
