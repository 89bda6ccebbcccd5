"""MQTT 5 reason codes, the v3.1/3.1.1 CONNACK mapping and the codec's error types."""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ReasonCode",
    "FIRST_FAILURE_CODE",
    "CONNACK_V3_CODES",
    "CONNACK_V3_TO_V5",
    "connack_v3_code",
    "MQTTError",
    "MalformedPacket",
    "ProtocolError",
    "PacketTooLarge",
]


class ReasonCode(IntEnum):
    """Every MQTT 5.0 reason code (spec section 2.4, table 2-6)."""

    SUCCESS = 0x00
    NORMAL_DISCONNECTION = 0x00
    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    REAUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USERNAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


#: Reason codes from 0x80 up report a failure (MQTT 5 §2.4); those below, a success.
FIRST_FAILURE_CODE = ReasonCode.UNSPECIFIED_ERROR

#: value -> ReasonCode member, for cheap "make it an enum if it is one" lookups.
REASON_CODES: dict[int, ReasonCode] = {int(rc): rc for rc in ReasonCode}

_RC = ReasonCode

#: v5 CONNACK reason code -> v3.1/3.1.1 CONNACK return code. Codes not listed map to 5.
CONNACK_V3_CODES: dict[int, int] = {
    _RC.SUCCESS: 0,
    _RC.UNSUPPORTED_PROTOCOL_VERSION: 1,
    _RC.CLIENT_IDENTIFIER_NOT_VALID: 2,
    _RC.SERVER_UNAVAILABLE: 3,
    _RC.SERVER_BUSY: 3,
    _RC.SERVER_SHUTTING_DOWN: 3,
    _RC.CONNECTION_RATE_EXCEEDED: 3,
    _RC.BAD_USERNAME_OR_PASSWORD: 4,
    _RC.BAD_AUTHENTICATION_METHOD: 4,
    _RC.NOT_AUTHORIZED: 5,
    _RC.BANNED: 5,
}

#: v3.1/3.1.1 CONNACK return code -> the v5 reason code the codec reports when decoding.
CONNACK_V3_TO_V5: dict[int, ReasonCode] = {
    0: _RC.SUCCESS,
    1: _RC.UNSUPPORTED_PROTOCOL_VERSION,
    2: _RC.CLIENT_IDENTIFIER_NOT_VALID,
    3: _RC.SERVER_UNAVAILABLE,
    4: _RC.BAD_USERNAME_OR_PASSWORD,
    5: _RC.NOT_AUTHORIZED,
}


def connack_v3_code(reason_code: int) -> int:
    """The 3.1/3.1.1 CONNACK return code (0-5) for a v5 CONNACK reason code."""
    return CONNACK_V3_CODES.get(reason_code, 5)


class MQTTError(Exception):
    """A decode failure (or protocol violation) with the MQTT 5 reason code to answer with."""

    def __init__(self, reason_code: int = ReasonCode.UNSPECIFIED_ERROR, message: str = "") -> None:
        rc = REASON_CODES.get(reason_code, reason_code)
        self.reason_code: int = rc
        self.message: str = message or (rc.name.lower().replace("_", " ") if isinstance(rc, ReasonCode) else "error")
        super().__init__(rc, self.message)

    def __str__(self) -> str:
        return f"{self.message} (reason code 0x{int(self.reason_code):02X})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(0x{int(self.reason_code):02X}, {self.message!r})"


class _FixedCodeError(MQTTError):
    _code: ReasonCode

    def __init__(self, message: str = "") -> None:
        super().__init__(self._code, message)

    def __reduce__(
        self,
    ) -> tuple[type[_FixedCodeError], tuple[str]]:  # keep copy/pickle working with the one-argument constructor
        return (type(self), (self.message,))


class MalformedPacket(_FixedCodeError):
    """The packet cannot be parsed according to the specification (0x81)."""

    _code = ReasonCode.MALFORMED_PACKET


class ProtocolError(_FixedCodeError):
    """The packet parses but breaks a protocol rule (0x82)."""

    _code = ReasonCode.PROTOCOL_ERROR


class PacketTooLarge(_FixedCodeError):
    """The packet exceeds the maximum packet size (0x95)."""

    _code = ReasonCode.PACKET_TOO_LARGE
