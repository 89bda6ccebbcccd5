"""The CONNECT handshake: checks, enhanced auth, auth_on_register, session, CONNACK.

The order is VerneMQ's (docs/hooks.md, "When hooks fire in a client's life"): enhanced authentication
(``on_auth``), ``auth_on_register``, the will's ``auth_on_publish``, takeover of an
existing connection, session attach, ``on_register``, CONNACK, then the queue drains
and ``on_client_wakeup`` fires.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

import trio

from . import inbound
from .codec import (
    FIRST_FAILURE_CODE,
    Auth,
    Connack,
    Connect,
    Disconnect,
    MQTTError,
    PacketType,
    ProtocolError,
    ReasonCode,
    decode_packet,
    encode,
    legal_reason_code,
)
from .rawstream import RECEIVE_SIZE
from .topics import TopicError, is_broker_topic, validate_topic_name
from .types import Allow, AuthContinue, ClientInfo, Deny, Message

if TYPE_CHECKING:
    from .connection import Connection

# The fixed header byte of a CONNECT: anything else first is refused at its first byte.
_CONNECT_HEADER = PacketType.CONNECT << 4
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


# CONNACK return code 1 (unacceptable protocol level) in the 3.1.1 form.
_CONNACK_UNSUPPORTED_LEVEL = b"\x20\x02\x00\x01"
# The accepting CONNACK of MQTT 3.1 / 3.1.1 by session present (3.1 has no such flag):
# four fixed bytes, encoded here once instead of at every CONNECT.
_CONNACK_ACCEPTED_V3 = {False: b"\x20\x02\x00\x00", True: b"\x20\x02\x00\x00"}
_CONNACK_ACCEPTED_V4 = {False: b"\x20\x02\x00\x00", True: b"\x20\x02\x01\x00"}


async def read_connect(conn: Connection, data: bytes | bytearray | None = None) -> Connect | None:
    """The first packet, which must be a CONNECT, within connect_timeout; None if none came.

    ``data``: what the caller already read.

    Anything but a CONNECT is refused at its first byte, without waiting for the rest.
    An unsupported protocol level gets CONNACK return code 1, then the close (MQTT 3.1.1
    [MQTT-3.1.2-2]; MQTT 5 §3.1.2.2 allows it): the client's level is unknown, so the
    3.1.1 form.
    """
    # The broker's watchdog enforces connect_timeout (conn.deadline) by stopping the
    # reader; no cancel scope per connection here.
    framer = conn.framer
    receive = conn.stream.receive_some
    while True:
        if data is None:
            data = await receive(RECEIVE_SIZE)
        if not data:
            return None
        if data[0] != _CONNECT_HEADER and not framer.buffered():
            raise ProtocolError("the first packet must be CONNECT")
        if (frame := framer.feed_frame(data)) is not None:
            break
        data = None
    try:
        packet = decode_packet(frame[0], frame[1], 4)
    except MQTTError as exc:
        if exc.reason_code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION:
            conn.write(_CONNACK_UNSUPPORTED_LEVEL)
        raise
    if not isinstance(packet, Connect):
        raise ProtocolError("the first packet must be CONNECT")
    return packet


def handshake_awaits(conn: Connection, packet: Connect) -> bool:
    """Whether ``handshake(conn, packet)`` may wait for anything; False: every await in
    it returns at once (the reader then needs no cancel scope, see connection.py).

    It may wait for a hook (auth_on_register, on_register, on_client_wakeup), enhanced
    authentication, a will (authorized as a PUBLISH), the client id's existing session
    (a takeover, a will delay, the session store) or, with no client id, one that is
    assigned (it could, in theory, name an existing session).
    """
    broker = conn.broker
    has = broker.dispatcher.has
    client_id = packet.client_id
    return (
        not client_id
        or client_id in broker.sessions
        or packet.will is not None
        or "authentication_method" in packet.properties
        or has("auth_on_register")
        or has("on_register")
        or has("on_client_wakeup")
    )


async def handshake(conn: Connection, packet: Connect) -> bool:
    """Run the CONNECT phase; True when the client is connected and may go on."""
    conn.protocol_level = level = packet.protocol_level
    conn.keep_alive = packet.keep_alive
    conn.request_problem_information = bool(packet.properties.get("request_problem_information", 1))
    try:
        connack_props, session_present = await _accept(conn, packet)
    except Refused as refused:
        conn.broker.metrics.connect_refused += 1
        conn.disconnect_reason = "refused"
        log.info(
            "refused %s (%s:%d): %s (0x%02X)",
            packet.client_id or "-",
            conn.peer_host,
            conn.peer_port,
            refused,
            refused.reason_code,
        )
        if refused.answered:
            # The reason string goes out even with Request Problem Information 0: the
            # spec allows it on CONNACK, and it tells the user why.
            props = {"reason_string": refused.reason_string} if level == 5 and refused.reason_string else {}
            conn.send(Connack(False, legal_reason_code(PacketType.CONNACK, refused.reason_code), props))
        return False
    session = conn.session
    assert session is not None
    conn.connected = True
    conn.session_present = session_present
    if level == 5:
        conn.send(Connack(session_present, 0, connack_props))
    else:  # what encode() gives, without encoding it (tests/kernel/test_connect_path.py)
        conn.write((_CONNACK_ACCEPTED_V4 if level == 4 else _CONNACK_ACCEPTED_V3)[session_present])
    await conn.broker.session_online(conn, session)
    return True


async def _accept(conn: Connection, packet: Connect) -> tuple[dict[str, Any], bool]:
    """Authorize and attach the session: (CONNACK properties, session present)."""
    broker = conn.broker
    settings = broker.settings
    limits = settings.limits
    level = packet.protocol_level
    props = packet.properties
    connack: dict[str, Any] = {}
    if level == 5:
        conn.client_receive_maximum = props.get("receive_maximum", 65535)
        conn.client_maximum_packet_size = props.get("maximum_packet_size", 268_435_460)
        conn.outbound_alias_maximum = props.get("topic_alias_maximum", 0)
    if packet.will is not None:
        _check_will_topic(conn, packet.will.topic, level)
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
    conn.client_info = client = _client_info(conn, client_id, username)

    if level == 5 and "authentication_method" in props:
        auth_data = await _enhanced_auth(conn, props["authentication_method"], props.get("authentication_data"))
        connack["authentication_method"] = props["authentication_method"]
        if auth_data:
            connack["authentication_data"] = auth_data

    clean_start = packet.clean_start
    if level == 5:
        expiry = props.get("session_expiry_interval", 0)
    else:
        expiry = _v3_session_expiry(clean_start, limits.persistent_session_expiry)
    max_inflight = limits.max_inflight
    max_queued = limits.max_queued_messages

    dispatcher = broker.dispatcher
    if dispatcher.has("auth_on_register"):
        answer = await dispatcher.decide(
            "auth_on_register",
            client=client,
            password=packet.password,
            clean_start=clean_start,
            properties=props,
        )
    else:
        answer = None
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
                client_id = str(mods["client_id"])
            if "username" in mods:
                username = None if mods["username"] is None else str(mods["username"])
            if "clean_start" in mods:
                clean_start = bool(mods["clean_start"])
                if level < 5:
                    expiry = _v3_session_expiry(clean_start, limits.persistent_session_expiry)
            if "session_expiry_interval" in mods:
                expiry = int(mods["session_expiry_interval"])
                connack["session_expiry_interval"] = expiry
            if "max_inflight_messages" in mods:
                max_inflight = int(mods["max_inflight_messages"])
            if "max_queued_messages" in mods:
                max_queued = int(mods["max_queued_messages"])
            if "max_message_size" in mods:
                conn.framer.max_packet_size = int(mods["max_message_size"])
                connack["maximum_packet_size"] = conn.framer.max_packet_size
            if "max_packet_size" in mods:
                conn.client_maximum_packet_size = min(conn.client_maximum_packet_size, int(mods["max_packet_size"]))
        except (TypeError, ValueError) as exc:
            log.error("auth_on_register: bad modifier: %s", exc)
            raise Refused(ReasonCode.UNSPECIFIED_ERROR, "plugin error") from None
        conn.client_info = client = _client_info(conn, client_id, username)
    elif isinstance(answer, AuthContinue):
        raise Refused(ReasonCode.UNSPECIFIED_ERROR, "plugin error")

    if limits.max_session_expiry and (expiry == 0xFFFFFFFF or expiry > limits.max_session_expiry):
        expiry = limits.max_session_expiry
        if level == 5:
            connack["session_expiry_interval"] = expiry

    if packet.will is not None:
        conn.will = await _authorize_will(conn, packet)

    if level == 5:
        connack["receive_maximum"] = conn.server_receive_maximum
        connack.setdefault("maximum_packet_size", conn.framer.max_packet_size)
        connack["topic_alias_maximum"] = conn.max_topic_alias
        if not broker.retain_available:
            connack["retain_available"] = 0
        if props.get("request_response_information"):
            connack["response_information"] = f"response/{client_id}"
        # The broker never sends a packet larger than the client allows [MQTT-3.1.2-24],
        # not even the CONNACK: then the client is closed without one.
        if (
            "maximum_packet_size" in props
            and len(encode(Connack(True, 0, connack), 5)) > conn.client_maximum_packet_size
        ):
            raise Refused(
                ReasonCode.PACKET_TOO_LARGE, "the CONNACK exceeds the client's maximum packet size", answered=False
            )

    session, present = await broker.attach_session(
        conn,
        client_id,
        clean_start=clean_start,
        expiry_interval=None if expiry == 0xFFFFFFFF else expiry,
        username=username,
        max_inflight=max_inflight,
        max_queued=max_queued,
    )
    conn.session = session
    if dispatcher.has("on_register"):
        await dispatcher.notify("on_register", client=conn.client_info, properties=dict(connack))
    return connack, present


def _v3_session_expiry(clean_session: bool, persistent_session_expiry: int) -> int:
    """MQTT 3 has no session expiry: clean sessions end at once, others after the
    configured expiry (0: never, as 0xFFFFFFFF means in MQTT 5)."""
    return 0 if clean_session else persistent_session_expiry or 0xFFFFFFFF


def _client_info(conn: Connection, client_id: str, username: str | None) -> ClientInfo:
    # Built directly: attrs.evolve costs several times more, once per CONNECT.
    return ClientInfo(
        client_id,
        username,
        conn.peer_host,
        conn.peer_port,
        conn.protocol_level,
        conn.listener.name,
        "",
        conn.broker.settings.node_name,
        conn.tls_common_name,
    )


async def _authorize_will(conn: Connection, packet: Connect) -> Message:
    will = packet.will
    assert will is not None
    broker = conn.broker
    if is_broker_topic(will.topic):
        raise Refused(ReasonCode.NOT_AUTHORIZED, "clients may not publish to $SYS")
    if will.retain and not broker.retain_available:
        raise Refused(ReasonCode.RETAIN_NOT_SUPPORTED, "retained messages are not supported")
    message, reason_code, _ = await inbound.authorize_publish(
        conn, Message(will.topic, will.payload, will.qos, will.retain, will.properties), is_will=True
    )
    if reason_code >= FIRST_FAILURE_CODE:
        raise Refused(reason_code, "will not authorized")
    return message


def _check_will_topic(conn: Connection, topic: str, level: int) -> None:
    """A will topic must be a valid topic name: MQTT 5 is refused with 0x90 (Topic Name
    invalid), MQTT 3 (whose CONNACK has no such code) is closed without a CONNACK."""
    try:
        validate_topic_name(topic, conn.broker.settings.limits.max_topic_levels)
    except TopicError as exc:
        raise Refused(ReasonCode.TOPIC_NAME_INVALID, f"will topic: {exc}", answered=level == 5) from None


async def _enhanced_auth(conn: Connection, method: str, data: bytes | None) -> bytes | None:
    """Run on_auth rounds during CONNECT; returns the final authentication data."""
    conn.auth_method = method
    reauthenticate = False
    while True:
        answer = await conn.broker.dispatcher.decide(
            "on_auth", client=conn.client_info, method=method, data=data, reauthenticate=reauthenticate
        )
        if answer is None:
            raise Refused(ReasonCode.BAD_AUTHENTICATION_METHOD, "no plugin handles this authentication method")
        if isinstance(answer, Deny):
            raise Refused(answer.reason_code, answer.reason_string)
        if isinstance(answer, Allow):
            return answer.modifiers.get("authentication_data")
        conn.send(
            Auth(
                ReasonCode.CONTINUE_AUTHENTICATION,
                {"authentication_method": method, "authentication_data": answer.data},
            )
        )
        await conn.flush()  # the reader is about to wait for the answer
        packet = await _read_auth(conn)
        if packet.properties.get("authentication_method") != method:
            raise Refused(ReasonCode.BAD_AUTHENTICATION_METHOD, "authentication method changed")
        data = packet.properties.get("authentication_data")


async def _read_auth(conn: Connection) -> Auth:
    framer = conn.framer
    while (frame := framer.next_frame()) is None:
        received = await conn.stream.receive_some(65536)
        if not received:
            raise trio.BrokenResourceError("closed during authentication")
        framer.feed(received)
    packet = decode_packet(frame[0], frame[1], 5)
    if not isinstance(packet, Auth) or packet.reason_code != ReasonCode.CONTINUE_AUTHENTICATION:
        raise Refused(ReasonCode.PROTOCOL_ERROR, "expected AUTH to continue authentication")
    return packet


async def reauthenticate(conn: Connection, packet: Auth) -> bool:
    """An AUTH after CONNECT: MQTT 5 re-authentication. False closes the connection."""
    method = packet.properties.get("authentication_method")
    if conn.auth_method is None or method != conn.auth_method:
        conn.protocol_error(ReasonCode.PROTOCOL_ERROR, "AUTH without the method of CONNECT")
        return False
    answer = await conn.broker.dispatcher.decide(
        "on_auth",
        client=conn.client_info,
        method=method,
        data=packet.properties.get("authentication_data"),
        reauthenticate=True,
    )
    if isinstance(answer, AuthContinue):
        conn.send(
            Auth(
                ReasonCode.CONTINUE_AUTHENTICATION,
                {"authentication_method": method, "authentication_data": answer.data},
            )
        )
        return True
    if isinstance(answer, Allow):
        props: dict[str, Any] = {"authentication_method": method}
        if answer.modifiers.get("authentication_data"):
            props["authentication_data"] = answer.modifiers["authentication_data"]
        conn.send(Auth(0, props))
        return True
    code = answer.reason_code if isinstance(answer, Deny) else ReasonCode.NOT_AUTHORIZED
    conn.disconnect_reason = "not_authorized"
    # A CONNACK-only code (0x86, 0x8C...) has no place in DISCONNECT: 0x87 instead.
    conn.send(Disconnect(legal_reason_code(PacketType.DISCONNECT, code)))
    return False
