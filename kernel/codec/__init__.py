"""Sans-I/O MQTT codec for MQTT 3.1 (level 3), 3.1.1 (level 4) and 5.0 (level 5).

``Framer`` splits a byte stream into ``(fixed_header_byte, body)`` frames, ``decode_packet``
turns a frame into a packet object, ``encode`` turns a packet back into bytes and
``encode_publish_parts`` pre-encodes a PUBLISH around its packet identifier for fan-out.
"""

from .decoder import ALLOWED_REASON_CODES, decode_packet, legal_reason_code
from .encoder import encode, encode_publish_parts
from .errors import (
    CONNACK_V3_CODES,
    CONNACK_V3_TO_V5,
    FIRST_FAILURE_CODE,
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    ProtocolError,
    ReasonCode,
    connack_v3_code,
)
from .framer import DEFAULT_MAX_PACKET_SIZE, Framer
from .packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
    Will,
)
from .properties import PROPERTY_IDS, PROPERTY_NAMES

__all__ = [
    "PacketType",
    "ReasonCode",
    "FIRST_FAILURE_CODE",
    "MQTTError",
    "MalformedPacket",
    "ProtocolError",
    "PacketTooLarge",
    "Connect",
    "Will",
    "Connack",
    "Publish",
    "Puback",
    "Pubrec",
    "Pubrel",
    "Pubcomp",
    "Subscribe",
    "SubscriptionRequest",
    "Suback",
    "Unsubscribe",
    "Unsuback",
    "Pingreq",
    "Pingresp",
    "Disconnect",
    "Auth",
    "Packet",
    "encode",
    "encode_publish_parts",
    "Framer",
    "decode_packet",
    "PROPERTY_NAMES",
    "PROPERTY_IDS",
    "CONNACK_V3_CODES",
    "CONNACK_V3_TO_V5",
    "connack_v3_code",
    "ALLOWED_REASON_CODES",
    "legal_reason_code",
    "DEFAULT_MAX_PACKET_SIZE",
]
