"""Retained messages, in memory and, with a store, in its records (the ``retainer``
built-in plugin).

Implements the provider hooks ``retain_store``, ``retain_lookup`` and ``retain_delete``;
while it is loaded the broker announces ``retain_available``. Expired messages (MQTT 5
message expiry) are skipped on lookup and removed.

Where they live: always in memory (the index every lookup reads). With a store plugin
loaded before it (``sqlite_store``; ``Service.records_available`` when the retainer
starts), each retained message is also a record of the namespace ``retainer`` (key: the
topic, value: ``message_to_bytes``), saved when retained and deleted when cleared or
found expired; at start they are read back before the retainer reports started, so a
restarted broker (or a reloaded retainer) has them again. Records that expired meanwhile
are deleted; one that cannot be read is logged with its key and skipped; beyond
``max_messages`` the newest are dropped (and deleted). The store's writer makes them
durable in batches; the PUBACK/PUBREC of a retained QoS 1/2 PUBLISH waits for that
commit. A store loaded after the
retainer (listed after it, or at run time) is taken up when it loads: its records come
back and what is in memory is written. Without a store they are in memory only and gone
at a restart; a store unloaded at run time leaves them in memory only until one is
loaded again.

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
import time
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from ternmq.kernel import Message, Service, hookimpl, message_from_bytes, message_to_bytes, topic_matches

log = logging.getLogger("ternmq.plugins.retainer")

NAMESPACE = "retainer"  # the store's records of retained messages: topic -> message_to_bytes


@attrs.frozen
class Config:
    max_messages: int = attrs.field(default=100_000, validator=attrs.validators.ge(0))
    max_payload_size: int = attrs.field(default=0, validator=attrs.validators.ge(0))


def decoded_records(records: Mapping[str, bytes]) -> tuple[list[Message], dict[str, str]]:
    """The messages of the store's records, and why each record that is none is not
    (key -> reason): bytes that are no message, or one of another topic than its key."""
    messages: list[Message] = []
    unreadable: dict[str, str] = {}
    for topic, value in records.items():
        try:
            message = message_from_bytes(value)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
            unreadable[topic] = str(exc) or type(exc).__name__
            continue
        if message.topic != topic:
            unreadable[topic] = f"a message of topic {message.topic!r}"
            continue
        messages.append(message)
    return messages, unreadable


class Plugin:
    """Retained message store: in memory, and in the store's records when one is loaded."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.messages: dict[str, Message] = {}
        self.refused = 0
        self.store: Service | None = None  # the records' keeper while a store is loaded
        self.service: Service | None = None

    async def serve(self, service: Service, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.service = service
        if service.records_available:
            await self._restore(service)
            self.store = service
        task_status.started()

    async def _restore(self, service: Service) -> None:
        """Read the retained messages back from the store's records (module docstring)."""
        records = await service.load_records(NAMESPACE)
        if not records:
            return
        # Decoded in a worker thread: a reload of the retainer must not stall the broker.
        messages, unreadable = await trio.to_thread.run_sync(decoded_records, records)
        for topic, reason in unreadable.items():
            log.error("retainer: record %r cannot be read, skipped: %s", topic, reason)
        now = time.time()
        expired = [m.topic for m in messages if m.expired(now)]
        for topic in expired:
            service.delete_record(NAMESPACE, topic)
        # Oldest first, as they were retained: beyond max_messages the newest go, as a
        # new topic would be refused by a full retainer.
        live = sorted((m for m in messages if not m.expired(now)), key=lambda m: (m.created_at, m.topic))
        limit = self.config.max_messages
        if limit and len(live) > limit:
            dropped = live[limit:]
            live = live[:limit]
            for message in dropped:
                service.delete_record(NAMESPACE, message.topic)
            self.refused += len(dropped)
            log.warning("retainer full (%d messages): %d stored messages not restored", limit, len(dropped))
        for message in live:
            self.messages.setdefault(message.topic, message)
        log.info(
            "retainer: %d retained messages restored from the store (%d expired, %d unreadable)",
            len(live),
            len(expired),
            len(unreadable),
        )

    def _stored(self) -> bool:
        """True while the store keeps the records; once it is gone (unloaded at run
        time), memory only, until a store is loaded again (``on_plugin_loaded``)."""
        if self.store is None:
            return False
        if self.store.records_available:
            return True
        log.warning("retainer: the store was unloaded; retained messages are kept in memory only")
        self.store = None
        return False

    @hookimpl
    async def on_plugin_loaded(self, name: str) -> None:
        """A store loaded after the retainer (at run time, or listed after it) keeps the
        retained messages from now on: its records come back as at start (what is in
        memory wins for a topic), and what is in memory is written. Nothing is deleted:
        a message cleared while no store was loaded may come back."""
        service = self.service
        if self.store is not None or service is None or not service.records_available:
            return
        await self._restore(service)
        for topic, message in self.messages.items():
            service.save_record(NAMESPACE, topic, message_to_bytes(message))
        await service.commit_store()
        self.store = service
        log.info("retainer: %d retained messages handed to the store (plugin %s)", len(self.messages), name)

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
        if self._stored():
            assert self.store is not None
            self.store.save_record(NAMESPACE, message.topic, message_to_bytes(message))

    @hookimpl
    def retain_delete(self, topic: str) -> None:
        self.messages.pop(topic, None)
        if self._stored():
            assert self.store is not None
            # even for a topic not in memory: it may be a record that could not be read
            self.store.delete_record(NAMESPACE, topic)

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
                self.retain_delete(message.topic)
            else:
                found.append(message)
        return found
