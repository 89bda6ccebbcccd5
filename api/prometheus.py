"""Prometheus' text format of every metric of the broker, written by prometheus-client.

Each metric of ``service.metric_list()`` becomes one family named ``<namespace><name>``
(characters Prometheus does not allow become ``_``), labelled with ``node`` and the
metric's own labels; counters get prometheus-client's ``_total`` samples.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ternmq.kernel import Service

_NOT_ALLOWED = re.compile(r"[^a-zA-Z0-9_:]")


class _BrokerCollector:
    def __init__(self, service: Service, namespace: str) -> None:
        self.service = service
        self.namespace = namespace

    def collect(self) -> Iterator[Metric]:
        node = self.service.node_name
        for metric in self.service.metric_list():
            name = _NOT_ALLOWED.sub("_", f"{self.namespace}{metric.name}")
            kind = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
            family = kind(name, metric.help or metric.name.replace("_", " "), labels=["node", *metric.labels])
            try:
                reading = metric.read()
            except Exception:  # a plugin's broken reader must not take the page down
                continue
            if isinstance(reading, Mapping):
                for values, value in reading.items():
                    family.add_metric([node, *values], value)
            else:
                family.add_metric([node], reading)
            yield family


def exposition(service: Service, namespace: str) -> tuple[bytes, str]:
    """The page's bytes and content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_BrokerCollector(service, namespace))
    return generate_latest(registry), CONTENT_TYPE_LATEST
