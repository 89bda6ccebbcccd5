"""Frozen values that cross the plugin boundary.

Hooks receive these objects and return the answer types defined here; plugins never see
the kernel's live sessions or dictionaries, so nothing a plugin does to an argument can
corrupt broker state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from ..codec.errors import ReasonCode

__all__ = [
    "ClientInfo",
    "Message",
    "TopicSubscription",
    "SessionSnapshot",
    "StoredMessage",
    "Allow",
    "Deny",
    "AuthContinue",
    "allow",
    "deny",
    "auth_continue",
    "Answer",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not value:
        return _EMPTY
    if isinstance(value, MappingProxyType):
        return value
    return MappingProxyType(dict(value))


@attrs.frozen
class ClientInfo:
    """Who a hook is about: one client connection (or an offline session).

    ``protocol_level`` is 3 (MQTT 3.1), 4 (3.1.1) or 5. ``listener`` is the name of the
    listener the client came through; ``tls_common_name`` is the CN of a verified client
    certificate, if any.
    """

    client_id: str
    username: str | None = None
    peer_host: str = ""
    peer_port: int = 0
    protocol_level: int = 4
    listener: str = ""
    mountpoint: str = ""
    node: str = ""
    tls_common_name: str | None = None


@attrs.frozen
class Message:
    """An application message as it travels through the broker.

    ``properties`` holds the MQTT 5 properties (snake_case names, empty for v3
    publishers); ``created_at`` is the wall-clock time the broker received it, which is
    how the remaining message expiry is computed.
    """

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Mapping[str, Any] = attrs.field(default=_EMPTY, converter=_frozen_mapping)
    created_at: float = attrs.field(factory=time.time)

    def expired(self, now: float | None = None) -> bool:
        """True once the message's MQTT 5 message expiry interval has passed."""
        interval: float | None = self.properties.get("message_expiry_interval")
        if interval is None:
            return False
        return (now if now is not None else time.time()) - self.created_at >= interval

    def remaining_expiry(self, now: float | None = None) -> int | None:
        """Seconds of message expiry left (forwarded to subscribers), or None."""
        interval = self.properties.get("message_expiry_interval")
        if interval is None:
            return None
        elapsed = (now if now is not None else time.time()) - self.created_at
        # Rounded up: a message that waited a few milliseconds still shows its full
        # interval, and one with 0.3 s left shows 1, never 0 (which reads as "expired").
        left: int = max(0, math.ceil(interval - elapsed))
        return min(int(interval), left)


@attrs.frozen
class TopicSubscription:
    """One topic filter of a SUBSCRIBE with its options (MQTT 5 names; v3 uses defaults)."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    subscription_identifier: int | None = None


@attrs.frozen
class StoredMessage:
    """One QoS 1/2 message a persistent session holds, as a message store keeps it.

    ``state`` says where it is: ``"queued"`` (waiting for the client or for room in its
    window), ``"inflight"`` (sent under ``packet_id``, not yet acknowledged),
    ``"released"`` (QoS 2: PUBREC came and PUBREL went under ``packet_id``; only the
    PUBCOMP is missing) or ``"received"`` (the other way: the client's QoS 2 PUBLISH
    under ``packet_id`` was routed and PUBREC'd; ``message`` is None and the broker
    waits for its PUBREL). ``entry_id`` names the entry within its session and grows
    with the order entries were made in, which is the order they are delivered in.
    """

    entry_id: int
    state: str
    message: Message | None = None
    qos: int = 1
    retain: bool = False
    sub_ids: tuple[int, ...] = ()
    packet_id: int | None = None


@attrs.frozen
class SessionSnapshot:
    """What a session store keeps of a persistent session between connections.

    ``queued`` lists the messages the session holds, for stores without per-message
    hooks and for listings; ``messages`` is what a store with per-message hooks
    (``message_store_save``) gives back at start: every entry with its state and packet
    id. ``will`` is a will the broker still owes: its client's connection was open (or
    its will delay running) when the snapshot was taken; a broker that restarts
    publishes it, since that connection ended without DISCONNECT.
    """

    client_id: str
    username: str | None
    protocol_level: int
    expiry_interval: int | None
    subscriptions: tuple[TopicSubscription, ...] = ()
    queued: tuple[Message, ...] = ()
    disconnected_at: float = attrs.field(factory=time.time)
    mountpoint: str = ""
    created_at: float = 0.0  # when the session began (0: not known, a store's older entry)
    messages: tuple[StoredMessage, ...] = ()
    will: Message | None = None


# -- answers of decision hooks --------------------------------------------------------


@attrs.frozen
class Allow:
    """Allow the request; ``modifiers`` change it (VerneMQ's ``{ok, Modifiers}``).

    Which modifier names each hook accepts is documented on the hook; an unknown name
    is an error of the plugin that returned it (the request is refused, not half-done).
    """

    modifiers: Mapping[str, Any] = attrs.field(default=_EMPTY, converter=_frozen_mapping)


@attrs.frozen
class Deny:
    """Refuse the request with an MQTT 5 reason code (converted for v3 clients)."""

    reason_code: int = ReasonCode.NOT_AUTHORIZED
    reason_string: str | None = None


@attrs.frozen
class AuthContinue:
    """Enhanced authentication (``on_auth``): send AUTH 0x18 with ``data`` and wait."""

    data: bytes = b""


Answer = Allow | Deny | AuthContinue


def allow(**modifiers: Any) -> Allow:
    """Allow, optionally with modifiers: ``allow()``, ``allow(topic="x/y", qos=1)``."""
    return Allow(modifiers)


def deny(reason_code: int = ReasonCode.NOT_AUTHORIZED, reason_string: str | None = None) -> Deny:
    """Refuse; the default reason code is 0x87 (not authorized)."""
    return Deny(reason_code, reason_string)


def auth_continue(data: bytes = b"") -> AuthContinue:
    """Ask the client for another round of enhanced authentication."""
    return AuthContinue(data)
