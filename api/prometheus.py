"""Prometheus' text format of every metric of the broker, written by prometheus-client.

Each metric of ``service.metric_list()`` becomes one family named ``<namespace><name>``
(characters Prometheus does not allow become ``_``), labelled with ``node`` and the
metric's own labels; counters get prometheus-client's ``_total`` samples.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping

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
            try:
                samples = _samples(metric.read(), len(labels))
            except Exception:  # a plugin's broken reader must not take the page down
                log.debug("metric %s not exported: its reader failed", metric.name, exc_info=True)
                continue
            for values, value in samples:
                family.add_metric([node, *values], value)
            names.add(name)
            yield family


def _samples(reading: object, label_count: int) -> list[tuple[tuple[str, ...], float]]:
    """(label values, value) pairs of a reading; ValueError for one that does not fit."""
    if not label_count:
        return [((), _number(reading))]
    if not isinstance(reading, Mapping):
        raise ValueError("a metric with labels must read a mapping")
    samples = []
    for values, value in reading.items():
        if not isinstance(values, tuple) or len(values) != label_count:
            raise ValueError(f"label values {values!r} for {label_count} labels")
        samples.append((tuple(str(v) for v in values), _number(value)))
    return samples


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    return value


def exposition(service: Service, namespace: str) -> tuple[bytes, str]:
    """The page's bytes and content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_BrokerCollector(service, namespace))
    return generate_latest(registry), CONTENT_TYPE_LATEST
