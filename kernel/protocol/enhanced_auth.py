"""MQTT 5 enhanced authentication: the AUTH rounds of a CONNECT (``on_auth``) and
re-authentication after it (an AUTH from a connected client)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from ..codec import Auth, Disconnect, PacketType, ReasonCode, decode_packet, legal_reason_code
from ..values.types import Allow, AuthContinue, Deny
from .negotiation import Refused

if TYPE_CHECKING:
    from .ports import ClientConnection


async def enhanced_auth(conn: ClientConnection, method: str, data: bytes | None) -> bytes | None:
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


async def _read_auth(conn: ClientConnection) -> Auth:
    framer = conn.framer
    while (frame := framer.next_frame()) is None:
        received = await conn.stream.receive_some(65536)
        conn.broker.metrics.bytes_received += len(received)
        if not received:
            raise trio.BrokenResourceError("closed during authentication")
        framer.feed(received)
    conn.broker.packet_counts.count_received(frame[0], len(frame[1]))
    packet = decode_packet(frame[0], frame[1], 5)
    if not isinstance(packet, Auth) or packet.reason_code != ReasonCode.CONTINUE_AUTHENTICATION:
        raise Refused(ReasonCode.PROTOCOL_ERROR, "expected AUTH to continue authentication")
    return packet


async def reauthenticate(conn: ClientConnection, packet: Auth) -> bool:
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
