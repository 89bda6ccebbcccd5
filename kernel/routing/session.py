"""Session state that outlives a connection: subscriptions, QoS 1/2 in flight, queue.

A state machine with no sockets in it. The connection that is attached (if any) is an
:class:`AttachedConnection`: what this layer needs of one, written down as a Protocol
type (transport/connection.py's Connection is the kernel's; tests use plain objects).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ..codec import ProtocolError, Publish, Pubrel, encode, encode_publish_parts
from ..values.types import ClientInfo, Message, SessionSnapshot, TopicSubscription

if TYPE_CHECKING:
    import trio

    from ..values.config import ListenerConfig
    from .scheduler import Timer


class AttachedConnection(Protocol):
    """What the routing layer uses of the connection a session is attached to: where
    to write a client's packets, how much it accepts, who it is, how to end it."""

    protocol_level: int
    client_info: ClientInfo
    outbound_bytes: int
    outbound_limit: int
    client_receive_maximum: int
    client_maximum_packet_size: int
    outbound_alias_maximum: int
    session: Session | None
    will: Message | None
    disconnect_reason: str
    peer_host: str
    peer_port: int
    keep_alive: int

    @property
    def listener(self) -> ListenerConfig: ...

    @property
    def closed(self) -> trio.Event:
        """Set once the connection is closed and its session detached."""
        ...

    def write(self, data: bytes) -> None:
        """Queue bytes for the client; never blocks."""

    def encode_with_alias(self, message: Message, qos: int, retain: bool, props: dict[str, Any]) -> tuple[bytes, bytes]:
        """A PUBLISH encoded as head and tail (the packet id goes between), with an
        outbound topic alias where the client allows them (MQTT 5)."""
        ...

    def kick(self, reason_code: int, reason: str) -> None:
        """Close from outside (takeover, admin, shutdown): DISCONNECT for v5, then close."""


class Journal(Protocol):
    """Where a stored session reports each change of its QoS 1/2 messages (the
    store's journal, journal.py's MessageJournal)."""

    def save(self, client_id: str, delivery: Delivery, state: str, packet_id: int | None = None) -> None: ...

    def received(self, client_id: str, packet_id: int) -> int: ...

    def delete(self, client_id: str, entry_id: int) -> None: ...


class Delivered(IntEnum):
    """What happened to one delivery; the router fires hooks for the ones worth one.

    ``reason`` is the ``on_message_drop`` reason of a drop ("" for the others);
    ``counted`` says the subscriber gets the message, now or later (a matching
    subscriber for PUBACK's "no matching subscribers"); ``quiet`` outcomes fire no hook
    (``QUEUED_OFFLINE`` fires ``on_offline_message``, the drops ``on_message_drop``).
    An IntEnum: members compare and hash as ints, at C speed on the hot path.
    """

    reason: str
    counted: bool
    quiet: bool

    def __new__(cls, value: int, reason: str = "", counted: bool = False, quiet: bool = False) -> Delivered:
        member = int.__new__(cls, value)
        member._value_ = value
        member.reason = reason
        member.counted = counted
        member.quiet = quiet
        return member

    SENT = 0, "", True, True
    QUEUED = 1, "", True, True
    QUEUED_OFFLINE = 2, "", True, False
    DROPPED_QUEUE_FULL = 3, "queue_full"
    DROPPED_TOO_LARGE = 4, "max_packet_size_exceeded"
    DROPPED_SLOW_CONSUMER = 5, "slow_consumer"
    # QoS 0 for a session that is offline (or not persistent): no hook, as MQTT says.
    DROPPED_OFFLINE_QOS0 = 6, "", False, True
    DROPPED_EXPIRED = 7, "expired"
    DROPPED_DENIED = 8, "denied"  # by on_deliver


# Reading an enum class's attribute is slow on Python 3.11 (EnumType has __getattr__,
# ~50 ns): the per-delivery path reads this module global instead.
_SENT = Delivered.SENT


# A wire form of one routed message: (MQTT 5?, QoS, retain flag, subscription ids). The
# deliveries of one message share a cache of (head, tail) encodings under these keys.
WireKey = tuple[bool, int, bool, tuple[int, ...]]
WireCache = dict[WireKey, tuple[bytes, bytes]]

# Properties a subscriber receives from the publisher; everything else is per hop.
FORWARDED_PROPERTIES = (
    "payload_format_indicator",
    "content_type",
    "response_topic",
    "correlation_data",
    "user_property",
)


def outbound_properties(message: Message, sub_ids: tuple[int, ...]) -> dict[str, Any]:
    """The MQTT 5 properties of a PUBLISH to a subscriber (remaining expiry, sub ids)."""
    source = message.properties
    props = {name: source[name] for name in FORWARDED_PROPERTIES if name in source}
    remaining = message.remaining_expiry()
    if remaining is not None:
        props["message_expiry_interval"] = remaining
    if sub_ids:
        props["subscription_identifier"] = list(sub_ids)
    return props


@attrs.define(slots=True)
class Delivery:
    """One message on its way to one session, at the QoS and retain flag it gets."""

    message: Message
    qos: int
    retain: bool
    sub_ids: tuple[int, ...] = ()
    # QoS 2 only: True once PUBREC arrived and PUBREL was sent.
    released: bool = False
    # False for messages queued while the session was offline: on_deliver has not
    # seen them yet (it runs when the session comes back, before they are sent).
    hooked: bool = True
    # Its id in the session store's journal (0: not saved there).
    entry_id: int = 0


class Session:
    """A client's session (see module docstring)."""

    def __init__(
        self,
        client_id: str,
        *,
        username: str | None,
        protocol_level: int,
        expiry_interval: int | None,
        max_inflight: int,
        max_queued: int,
        mountpoint: str = "",
    ) -> None:
        self.client_id = client_id
        self.username = username
        # The topic namespace of the session's clients (topics.mounted): its
        # subscriptions are kept as the client sent them, routed under the mountpoint.
        self.mountpoint = mountpoint
        self.protocol_level = protocol_level
        # Seconds the session outlives its connection: 0 ends it at disconnect, None
        # means never (MQTT 5's 0xFFFFFFFF, or an MQTT 3 session with no expiry set).
        self.expiry_interval = expiry_interval
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.subscriptions: dict[str, TopicSubscription] = {}
        self.connection: AttachedConnection | None = None
        self.inflight: dict[int, Delivery] = {}
        self.queue: deque[Delivery] = deque()
        # The client's QoS 2 PUBLISH packet ids awaiting PUBREL -> their journal entry ids.
        self.incoming_qos2: dict[int, int] = {}
        self._next_packet_id = 1
        # Wall-clock times (time.time()): when the session began (or was restored), when
        # a client last attached to it, when its last client left.
        self.created_at = time.time()
        self.connected_at: float | None = None
        self.disconnected_at: float | None = None
        # Handles of the broker's scheduler: a pending delayed will, the expiry timer.
        self.will_timer: Timer | None = None
        # True once a session store was given this session (it must then be deleted there).
        self.stored = False
        # Where each QoS 1/2 message change goes while a store keeps the session (journal.py).
        self.journal: Journal | None = None
        self.expiry_timer: Timer | None = None
        # A will waiting for its delay (published when the timer fires): a store keeps it.
        self.delayed_will: Message | None = None

    @property
    def persistent(self) -> bool:
        return self.expiry_interval != 0

    # -- packet identifiers ------------------------------------------------------------

    def _allocate_packet_id(self) -> int:
        packet_id = self._next_packet_id
        inflight = self.inflight
        while packet_id in inflight:
            packet_id = packet_id % 65535 + 1
        self._next_packet_id = packet_id % 65535 + 1
        return packet_id

    # -- outbound ----------------------------------------------------------------------

    def deliver(
        self,
        message: Message,
        qos: int,
        retain: bool,
        sub_ids: tuple[int, ...],
        wire_cache: WireCache | None,
    ) -> Delivered:
        """Send, queue or drop one message for this session; returns what happened.

        ``wire_cache`` is shared by all deliveries of one routed message, so a fan-out
        encodes each distinct wire form once.
        """
        connection = self.connection
        if connection is None:
            if qos == 0 or not self.persistent:
                return Delivered.DROPPED_OFFLINE_QOS0
            if len(self.queue) >= self.max_queued:
                return Delivered.DROPPED_QUEUE_FULL
            delivery = Delivery(message, qos, retain, sub_ids, hooked=False)
            self.queue.append(delivery)
            if self.journal is not None:
                self.journal.save(self.client_id, delivery, "queued")
            return Delivered.QUEUED_OFFLINE
        if qos == 0:
            if connection.outbound_bytes > connection.outbound_limit:
                return Delivered.DROPPED_SLOW_CONSUMER
            return self._send_publish(connection, message, 0, retain, sub_ids, None, wire_cache)
        if len(self.inflight) >= self.window(connection) or self.queue:
            if len(self.queue) >= self.max_queued:
                return Delivered.DROPPED_QUEUE_FULL
            delivery = Delivery(message, qos, retain, sub_ids)
            self.queue.append(delivery)
            if self.journal is not None:
                self.journal.save(self.client_id, delivery, "queued")
            return Delivered.QUEUED
        return self._send_tracked(connection, Delivery(message, qos, retain, sub_ids), wire_cache)

    def _send_tracked(
        self, connection: AttachedConnection, delivery: Delivery, wire_cache: WireCache | None
    ) -> Delivered:
        """Send a QoS 1/2 delivery under a new packet id, in flight once it is sent."""
        packet_id = self._allocate_packet_id()
        status = self._send_publish(
            connection, delivery.message, delivery.qos, delivery.retain, delivery.sub_ids, packet_id, wire_cache
        )
        if status is _SENT:
            self.inflight[packet_id] = delivery
            if self.journal is not None:
                self.journal.save(self.client_id, delivery, "inflight", packet_id)
        else:
            self.forget(delivery)
        return status

    def window(self, connection: AttachedConnection) -> int:
        """How many QoS 1/2 messages may be in flight to the attached client."""
        return min(self.max_inflight, connection.client_receive_maximum)

    def _send_publish(
        self,
        connection: AttachedConnection,
        message: Message,
        qos: int,
        retain: bool,
        sub_ids: tuple[int, ...],
        packet_id: int | None,
        wire_cache: WireCache | None,
        dup: bool = False,
    ) -> Delivered:
        level = connection.protocol_level
        parts: tuple[bytes, bytes] | None
        if level == 5 and connection.outbound_alias_maximum:
            parts = connection.encode_with_alias(message, qos, retain, outbound_properties(message, sub_ids))
        else:
            key = (level == 5, qos, retain, sub_ids)
            parts = wire_cache.get(key) if wire_cache is not None else None
            if parts is None:
                props = outbound_properties(message, sub_ids) if level == 5 else {}
                parts = encode_publish_parts(
                    Publish(message.topic, message.payload, qos, retain, False, None, props), level
                )
                if qos == 0:
                    # No packet id goes between the parts: join once for every subscriber
                    # of this wire form (``head + b""`` below is then no copy).
                    parts = (parts[0] + parts[1], b"")
                if wire_cache is not None:
                    wire_cache[key] = parts
        head, tail = parts
        size = len(head) + len(tail) + (2 if packet_id is not None else 0)
        if size > connection.client_maximum_packet_size:
            return Delivered.DROPPED_TOO_LARGE
        if dup:
            head = bytes((head[0] | 0x08,)) + head[1:]
        if packet_id is None:
            connection.write(head + tail)
        else:
            connection.write(head + packet_id.to_bytes(2, "big") + tail)
        return _SENT

    def acknowledge(self, packet_id: int, qos: int) -> Delivery | None:
        """PUBACK (``qos`` 1) or PUBCOMP (``qos`` 2) arrived: the message left our hands.

        None when nothing is in flight under ``packet_id`` (a late duplicate, ignored).
        An acknowledgement of the wrong kind is a protocol error: PUBACK for a QoS 2
        message, PUBCOMP for a QoS 1 message or before PUBREC.
        """
        delivery = self.inflight.get(packet_id)
        if delivery is None:
            return None
        if delivery.qos != qos or (qos == 2 and not delivery.released):
            kind = "PUBACK" if qos == 1 else "PUBCOMP"
            raise ProtocolError(
                f"{kind} for packet {packet_id}, a QoS {delivery.qos} message"
                + (" waiting for PUBREC" if delivery.qos == 2 else "")
            )
        del self.inflight[packet_id]
        self.forget(delivery)
        return delivery

    def received(self, packet_id: int, refused: bool = False) -> bool:
        """PUBREC arrived for ``packet_id``: True when it is a QoS 2 message in flight
        (answer PUBREL), False when the id is unknown (PUBREL 0x92). A refusing PUBREC
        ends the exchange. PUBREC for a QoS 1 message is a protocol error."""
        delivery = self.inflight.get(packet_id)
        if delivery is None:
            return False
        if delivery.qos != 2:
            raise ProtocolError(f"PUBREC for packet {packet_id}, a QoS 1 message")
        journal = self.journal
        if refused:
            del self.inflight[packet_id]
            self.forget(delivery)
        else:
            delivery.released = True
            if journal is not None:
                journal.save(self.client_id, delivery, "released", packet_id)
        return True

    def drain(self) -> Iterator[tuple[Delivery, Delivered]]:
        """Send queued messages while the window has room; yields what failed.

        Yields ``(delivery, status)`` for deliveries that could not be sent (expired or
        too large), so the caller can fire ``on_message_drop``.
        """
        connection = self.connection
        if connection is None:
            return
        queue = self.queue
        window = self.window(connection)
        while queue and len(self.inflight) < window:
            delivery = queue.popleft()
            if delivery.message.expired():
                self.forget(delivery)
                yield delivery, Delivered.DROPPED_EXPIRED
                continue
            if delivery.qos == 0:
                status = self._send_publish(
                    connection, delivery.message, 0, delivery.retain, delivery.sub_ids, None, None
                )
            else:
                status = self._send_tracked(connection, delivery, None)
            if status is not _SENT:
                yield delivery, status

    def resend_inflight(self) -> Iterator[tuple[Delivery, Delivered]]:
        """After a reconnect: resend unacknowledged PUBLISH (DUP) and PUBREL, in order."""
        connection = self.connection
        assert connection is not None
        for packet_id, delivery in list(self.inflight.items()):
            if delivery.released:
                connection.write(encode(Pubrel(packet_id), connection.protocol_level))
                continue
            if delivery.message.expired() and delivery.qos == 1:
                del self.inflight[packet_id]
                self.forget(delivery)
                yield delivery, Delivered.DROPPED_EXPIRED
                continue
            status = self._send_publish(
                connection, delivery.message, delivery.qos, delivery.retain, delivery.sub_ids, packet_id, None, dup=True
            )
            if status is not _SENT:
                del self.inflight[packet_id]
                self.forget(delivery)
                yield delivery, status

    def client_info(self, node: str) -> ClientInfo:
        """Who hooks are told about: the connection's client, or the offline session's
        (a restored session's will, a subscription made on its behalf)."""
        if self.connection is not None:
            return self.connection.client_info
        return ClientInfo(
            self.client_id,
            self.username,
            protocol_level=self.protocol_level,
            mountpoint=self.mountpoint,
            node=node,
        )

    def forget(self, delivery: Delivery) -> None:
        """A delivery of the session is done or dropped: the store forgets it too."""
        self.forget_entry(delivery.entry_id)

    def forget_entry(self, entry_id: int) -> None:
        """The store forgets entry ``entry_id`` of the session (0: one never saved)."""
        if self.journal is not None:
            self.journal.delete(self.client_id, entry_id)

    def snapshot(self, *, with_queued: bool = True) -> SessionSnapshot:
        """Frozen view for session stores and admin listings (``with_queued``: the
        messages it holds as ``queued``, a tuple of them all)."""
        queued = tuple(d.message for d in (*self.inflight.values(), *self.queue)) if with_queued else ()
        return SessionSnapshot(
            client_id=self.client_id,
            username=self.username,
            protocol_level=self.protocol_level,
            expiry_interval=self.expiry_interval,
            subscriptions=tuple(self.subscriptions.values()),
            queued=queued,
            disconnected_at=self.disconnected_at or 0.0,
            mountpoint=self.mountpoint,
            created_at=self.created_at,
            will=self.connection.will if self.connection is not None else self.delayed_will,
        )
