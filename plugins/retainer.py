"""Retained messages, kept in memory (the ``retainer`` built-in plugin).

Implements the provider hooks ``retain_store``, ``retain_lookup`` and ``retain_delete``;
while it is loaded the broker announces ``retain_available``. Expired messages (MQTT 5
message expiry) are skipped on lookup and removed.

Live settings (``ternmq-admin show --retainer.max_messages``, ``set``):
``retainer.max_messages`` and ``retainer.max_payload_size``. Metrics: ``retained_messages``
(gauge) and ``retained_refused`` (counter).

Config keys (``[plugins.retainer]``):

* ``max_messages`` (default 100000; 0 = unlimited): beyond it a new topic is not
  retained (an existing one is still replaced), and the refusal is logged.
* ``max_payload_size`` (default 0 = no limit beyond max_packet_size): larger payloads
  are not retained.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs

from ternmq.kernel import Message, hookimpl, topic_matches

log = logging.getLogger("ternmq.plugins.retainer")


@attrs.frozen
class Config:
    max_messages: int = attrs.field(default=100_000, validator=attrs.validators.ge(0))
    max_payload_size: int = attrs.field(default=0, validator=attrs.validators.ge(0))


class Plugin:
    """In-memory retained message store."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.messages: dict[str, Message] = {}
        self.refused = 0

    @hookimpl
    def register_metrics(self, registry: Any) -> None:
        registry.gauge("retained_messages", lambda: len(self.messages), "retained messages held")
        registry.counter("retained_refused", lambda: self.refused, "retained messages not kept (limits)")

    @hookimpl
    def register_config(self, settings: Any) -> None:
        for key in ("max_messages", "max_payload_size"):
            settings.add(
                f"retainer.{key}",
                lambda key=key: getattr(self.config, key),
                lambda value, key=key: self._set(key, value),
                f"see [plugins.retainer] {key}",
            )

    def _set(self, key: str, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError("must be a whole number >= 0")
        self.config = attrs.evolve(self.config, **{key: value})

    @hookimpl
    def retain_store(self, message: Message) -> None:
        config = self.config
        if config.max_payload_size and len(message.payload) > config.max_payload_size:
            self.refused += 1
            return
        if config.max_messages and message.topic not in self.messages and len(self.messages) >= config.max_messages:
            self.refused += 1
            log.warning("retainer full (%d messages): %s not retained", config.max_messages, message.topic)
            return
        self.messages[message.topic] = message

    @hookimpl
    def retain_delete(self, topic: str) -> None:
        self.messages.pop(topic, None)

    @hookimpl
    def retain_lookup(self, topic_filter: str) -> list[Message]:
        if "+" not in topic_filter and "#" not in topic_filter:
            message = self.messages.get(topic_filter)
            candidates = [message] if message is not None else []
        else:
            candidates = [m for topic, m in self.messages.items() if topic_matches(topic_filter, topic)]
        found = []
        for message in candidates:
            if message.expired():
                self.messages.pop(message.topic, None)
            else:
                found.append(message)
        return found
