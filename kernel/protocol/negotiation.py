"""What a CONNECT settles, without I/O: the checks, the client's identity, the terms of
its session and the CONNACK's properties (MQTT 5).

connect.py runs these steps around the awaits of the handshake (enhanced authentication,
auth_on_register, the will's authorization, the session's attach): check_connect, then
apply_register_answer with what auth_on_register said, then settle. Each step raises
Refused with the CONNACK reason code (MQTT 5 numbering) when the client is refused.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from ..codec import Connack, Connect, ReasonCode, encode
from ..routing.topics import TopicError, validate_topic_name
from ..values.config import check_mountpoint
from ..values.types import Allow, AuthContinue, ClientInfo, Deny

if TYPE_CHECKING:
    from ..values.config import BrokerSettings, Limits
    from .ports import ConnectingClient

log = logging.getLogger("ternmq.connect")


REGISTER_MODIFIERS = frozenset(
    {
        "client_id",
        "username",
        "clean_start",
        "session_expiry_interval",
        "max_inflight_messages",
        "max_message_size",
        "max_packet_size",
        "max_queued_messages",
        "mountpoint",
    }
)


class Refused(Exception):
    """The CONNECT is refused with a CONNACK reason code (v5 numbering).

    ``answered`` False: the connection is closed without a CONNACK (a malformed will
    from an MQTT 3 client, a CONNACK larger than the client accepts).
    """

    def __init__(self, reason_code: int, reason_string: str | None = None, *, answered: bool = True) -> None:
        super().__init__(reason_string or f"0x{reason_code:02X}")
        self.reason_code = reason_code
        self.reason_string = reason_string
        self.answered = answered


class Terms:
    """What a CONNECT settles, step by step: the client's identity, its session's terms,
    the CONNACK's properties (MQTT 5)."""

    __slots__ = (
        "client_id",
        "username",
        "clean_start",
        "expiry",
        "max_inflight",
        "max_queued",
        "connack",
        "mountpoint",
    )

    def __init__(
        self,
        client_id: str,
        username: str | None,
        clean_start: bool,
        expiry: int,
        limits: Limits,
        connack: dict[str, Any],
        mountpoint: str = "",
    ) -> None:
        self.client_id = client_id
        self.mountpoint = mountpoint
        self.username = username
        self.clean_start = clean_start
        self.expiry = expiry
        self.max_inflight = limits.max_inflight
        self.max_queued = limits.max_queued_messages
        self.connack = connack

    @property
    def expiry_interval(self) -> int | None:
        """The session's expiry in seconds; None for never (MQTT 5's 0xFFFFFFFF)."""
        return None if self.expiry == 0xFFFFFFFF else self.expiry


def check_connect(conn: ConnectingClient, packet: Connect, settings: BrokerSettings) -> Terms:
    """The checks and terms that need no plugin (raises Refused): protocol options,
    the will's topic, capacity, client id, keep-alive, the user name, the ClientInfo."""
    conn.protocol_level = level = packet.protocol_level
    conn.keep_alive = packet.keep_alive
    limits = settings.limits
    props = packet.properties
    connack: dict[str, Any] = {}
    if level == 5:
        conn.request_problem_information = bool(props.get("request_problem_information", 1))
        conn.client_receive_maximum = props.get("receive_maximum", 65535)
        conn.client_maximum_packet_size = props.get("maximum_packet_size", 268_435_460)
        conn.outbound_alias_maximum = props.get("topic_alias_maximum", 0)
    if packet.will is not None:
        _check_will_topic(packet.will.topic, level, limits.max_topic_levels)
    if conn.over_capacity:
        raise Refused(ReasonCode.SERVER_BUSY, "listener at max_connections")

    client_id = packet.client_id
    if not client_id:
        if level == 5 or (level == 4 and packet.clean_start):
            client_id = "ternmq-" + secrets.token_hex(8)
            if level == 5:
                connack["assigned_client_identifier"] = client_id
        else:
            raise Refused(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "empty client identifier needs a clean session")
    if len(client_id) > limits.max_client_id_length:
        raise Refused(
            ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, f"client identifier longer than {limits.max_client_id_length}"
        )

    if packet.keep_alive > limits.max_keep_alive or (packet.keep_alive == 0 and limits.max_keep_alive < 65535):
        if level == 5:
            conn.keep_alive = limits.max_keep_alive
            connack["server_keep_alive"] = limits.max_keep_alive
        else:
            # MQTT 3 cannot be told another keep-alive: refuse, as Mosquitto does.
            raise Refused(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "keep alive above the server maximum")

    username = packet.username
    if conn.listener.use_identity_as_username:
        if conn.tls_common_name is None:
            raise Refused(ReasonCode.NOT_AUTHORIZED, "a client certificate is required")
        username = conn.tls_common_name
    mountpoint = conn.listener.mountpoint
    conn.client_info = _client_info(conn, client_id, username, settings.node_name, mountpoint)

    clean_start = packet.clean_start
    if level == 5:
        expiry = props.get("session_expiry_interval", 0)
    else:
        expiry = _v3_session_expiry(clean_start, limits.persistent_session_expiry)
    return Terms(client_id, username, clean_start, expiry, limits, connack, mountpoint)


def apply_register_answer(conn: ConnectingClient, terms: Terms, answer: object, settings: BrokerSettings) -> None:
    """Apply auth_on_register's answer (None: nobody had an opinion): raises Refused."""
    level = conn.protocol_level
    if answer is None:
        if not settings.allow_anonymous:
            raise Refused(
                ReasonCode.BAD_USERNAME_OR_PASSWORD if level == 5 else ReasonCode.NOT_AUTHORIZED, "not authorized"
            )
    elif isinstance(answer, Deny):
        raise Refused(answer.reason_code, answer.reason_string)
    elif isinstance(answer, Allow) and answer.modifiers:
        mods = answer.modifiers
        unknown = set(mods) - REGISTER_MODIFIERS
        if unknown:
            log.error("auth_on_register: unknown modifiers %s", sorted(unknown))
            raise Refused(ReasonCode.UNSPECIFIED_ERROR, "plugin error")
        try:
            if "client_id" in mods:
                terms.client_id = str(mods["client_id"])
            if "username" in mods:
                terms.username = None if mods["username"] is None else str(mods["username"])
            if "clean_start" in mods:
                terms.clean_start = bool(mods["clean_start"])
                if level < 5:
                    terms.expiry = _v3_session_expiry(terms.clean_start, settings.limits.persistent_session_expiry)
            if "session_expiry_interval" in mods:
                terms.expiry = int(mods["session_expiry_interval"])
                terms.connack["session_expiry_interval"] = terms.expiry
            if "max_inflight_messages" in mods:
                terms.max_inflight = int(mods["max_inflight_messages"])
            if "max_queued_messages" in mods:
                terms.max_queued = int(mods["max_queued_messages"])
            if "max_message_size" in mods:
                conn.framer.max_packet_size = int(mods["max_message_size"])
                terms.connack["maximum_packet_size"] = conn.framer.max_packet_size
            if "max_packet_size" in mods:
                conn.client_maximum_packet_size = min(conn.client_maximum_packet_size, int(mods["max_packet_size"]))
            if "mountpoint" in mods:
                if not isinstance(mods["mountpoint"], str):
                    raise TypeError(f"mountpoint must be a string, not {mods['mountpoint']!r}")
                terms.mountpoint = mods["mountpoint"]
                check_mountpoint(terms.mountpoint)
        except (TypeError, ValueError) as exc:
            log.error("auth_on_register: bad modifier: %s", exc)
            raise Refused(ReasonCode.UNSPECIFIED_ERROR, "plugin error") from None
        conn.client_info = _client_info(conn, terms.client_id, terms.username, settings.node_name, terms.mountpoint)
    elif isinstance(answer, AuthContinue):
        raise Refused(ReasonCode.UNSPECIFIED_ERROR, "plugin error")


def settle(
    conn: ConnectingClient, packet: Connect, terms: Terms, settings: BrokerSettings, *, retain_available: bool
) -> None:
    """The terms once plugins had their say: the expiry cap and the CONNACK's properties
    (MQTT 5), which must fit the client's maximum packet size (raises Refused)."""
    limits = settings.limits
    level = conn.protocol_level
    connack = terms.connack
    expiry = terms.expiry
    if limits.max_session_expiry and (expiry == 0xFFFFFFFF or expiry > limits.max_session_expiry):
        terms.expiry = limits.max_session_expiry
        if level == 5:
            connack["session_expiry_interval"] = terms.expiry
    if level != 5:
        return
    props = packet.properties
    connack["receive_maximum"] = conn.server_receive_maximum
    connack.setdefault("maximum_packet_size", conn.framer.max_packet_size)
    connack["topic_alias_maximum"] = conn.max_topic_alias
    if not retain_available:
        connack["retain_available"] = 0
    if props.get("request_response_information"):
        connack["response_information"] = f"response/{terms.client_id}"
    # The broker never sends a packet larger than the client allows [MQTT-3.1.2-24],
    # not even the CONNACK: then the client is closed without one.
    if "maximum_packet_size" in props and len(encode(Connack(True, 0, connack), 5)) > conn.client_maximum_packet_size:
        raise Refused(
            ReasonCode.PACKET_TOO_LARGE, "the CONNACK exceeds the client's maximum packet size", answered=False
        )


def _v3_session_expiry(clean_session: bool, persistent_session_expiry: int) -> int:
    """MQTT 3 has no session expiry: clean sessions end at once, others after the
    configured expiry (0: never, as 0xFFFFFFFF means in MQTT 5)."""
    return 0 if clean_session else persistent_session_expiry or 0xFFFFFFFF


def _client_info(
    conn: ConnectingClient, client_id: str, username: str | None, node_name: str, mountpoint: str
) -> ClientInfo:
    # Built directly: attrs.evolve costs several times more, once per CONNECT.
    return ClientInfo(
        client_id,
        username,
        conn.peer_host,
        conn.peer_port,
        conn.protocol_level,
        conn.listener.name,
        mountpoint,
        node_name,
        conn.tls_common_name,
    )


def _check_will_topic(topic: str, level: int, max_topic_levels: int) -> None:
    """A will topic must be a valid topic name: MQTT 5 is refused with 0x90 (Topic Name
    invalid), MQTT 3 (whose CONNACK has no such code) is closed without a CONNACK."""
    try:
        validate_topic_name(topic, max_topic_levels)
    except TopicError as exc:
        raise Refused(ReasonCode.TOPIC_NAME_INVALID, f"will topic: {exc}", answered=level == 5) from None
