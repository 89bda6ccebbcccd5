"""MQTT control packet classes (mutable, slotted, compared field by field)."""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar

import attrs

__all__ = [
    "PacketType",
    "Will",
    "Connect",
    "Connack",
    "Publish",
    "Puback",
    "Pubrec",
    "Pubrel",
    "Pubcomp",
    "SubscriptionRequest",
    "Subscribe",
    "Suback",
    "Unsubscribe",
    "Unsuback",
    "Pingreq",
    "Pingresp",
    "Disconnect",
    "Auth",
    "Packet",
]


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


def _props() -> dict[str, Any]:
    return attrs.field(factory=dict)


@attrs.define(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: dict[str, Any] = _props()


def _default_protocol_name(self: Connect) -> str:
    return "MQIsdp" if self.protocol_level == 3 else "MQTT"


@attrs.define(slots=True)
class Connect:
    packet_type: ClassVar[PacketType] = PacketType.CONNECT
    client_id: str = ""
    protocol_level: int = 4
    clean_start: bool = True
    keep_alive: int = 60
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: dict[str, Any] = _props()
    #: defaults to "MQIsdp" when protocol_level is 3, else "MQTT"
    protocol_name: str = attrs.field(default=attrs.Factory(_default_protocol_name, takes_self=True))


@attrs.define(slots=True)
class Connack:
    packet_type: ClassVar[PacketType] = PacketType.CONNACK
    session_present: bool = False
    #: always a v5 reason code; encoding for 3.1/3.1.1 converts it with connack_v3_code
    reason_code: int = 0
    properties: dict[str, Any] = _props()


@attrs.define(slots=True)
class Publish:
    packet_type: ClassVar[PacketType] = PacketType.PUBLISH
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: dict[str, Any] = _props()


@attrs.define(slots=True)
class Puback:
    packet_type: ClassVar[PacketType] = PacketType.PUBACK
    packet_id: int
    reason_code: int = 0
    properties: dict[str, Any] = _props()


@attrs.define(slots=True)
class Pubrec:
    packet_type: ClassVar[PacketType] = PacketType.PUBREC
    packet_id: int
    reason_code: int = 0
    properties: dict[str, Any] = _props()


@attrs.define(slots=True)
class Pubrel:
    packet_type: ClassVar[PacketType] = PacketType.PUBREL
    packet_id: int
    reason_code: int = 0
    properties: dict[str, Any] = _props()


@attrs.define(slots=True)
class Pubcomp:
    packet_type: ClassVar[PacketType] = PacketType.PUBCOMP
    packet_id: int
    reason_code: int = 0
    properties: dict[str, Any] = _props()


@attrs.define(slots=True)
class SubscriptionRequest:
    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@attrs.define(slots=True)
class Subscribe:
    packet_type: ClassVar[PacketType] = PacketType.SUBSCRIBE
    packet_id: int
    subscriptions: list[SubscriptionRequest]
    properties: dict[str, Any] = _props()


@attrs.define(slots=True)
class Suback:
    packet_type: ClassVar[PacketType] = PacketType.SUBACK
    packet_id: int
    reason_codes: list[int]
    properties: dict[str, Any] = _props()


@attrs.define(slots=True)
class Unsubscribe:
    packet_type: ClassVar[PacketType] = PacketType.UNSUBSCRIBE
    packet_id: int
    topic_filters: list[str]
    properties: dict[str, Any] = _props()


@attrs.define(slots=True)
class Unsuback:
    packet_type: ClassVar[PacketType] = PacketType.UNSUBACK
    packet_id: int
    #: empty for 3.1/3.1.1 (no payload there)
    reason_codes: list[int] = attrs.field(factory=list)
    properties: dict[str, Any] = _props()


@attrs.define(slots=True)
class Pingreq:
    packet_type: ClassVar[PacketType] = PacketType.PINGREQ
    #: never on the wire; present so every packet has ``.properties``
    properties: dict[str, Any] = _props()


@attrs.define(slots=True)
class Pingresp:
    packet_type: ClassVar[PacketType] = PacketType.PINGRESP
    #: never on the wire; present so every packet has ``.properties``
    properties: dict[str, Any] = _props()


@attrs.define(slots=True)
class Disconnect:
    packet_type: ClassVar[PacketType] = PacketType.DISCONNECT
    reason_code: int = 0
    properties: dict[str, Any] = _props()


@attrs.define(slots=True)
class Auth:
    packet_type: ClassVar[PacketType] = PacketType.AUTH
    reason_code: int = 0
    properties: dict[str, Any] = _props()


Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)
