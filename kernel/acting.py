"""Publishing for a client that has no MQTT connection (HTTP publish): its credentials
go through ``auth_on_register`` and its message through ``auth_on_publish``, as a
client's would, and the message then takes a client's path."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from .codec import FIRST_FAILURE_CODE
from .protocol.inbound import apply_publish_answer
from .values.config import check_mountpoint
from .values.types import Allow, ClientInfo, Deny, Message

if TYPE_CHECKING:
    from .protocol.ports import BrokerCore


class Outcome(enum.Enum):
    PUBLISHED = "published"
    NOT_AUTHENTICATED = "not authenticated"  # auth_on_register refused (or nobody allowed it)
    NOT_AUTHORIZED = "not authorized"  # auth_on_publish refused, or rewrote the payload


async def publish_for(broker: BrokerCore, client: ClientInfo, password: bytes | None, message: Message) -> Outcome:
    """See the module docstring. A ``client_id`` modifier of auth_on_register refuses the
    request (the client named itself; VerneMQ does the same), ``username`` and
    ``mountpoint`` apply; a rewritten payload refuses it (VerneMQ: the publisher sent that
    payload)."""
    dispatcher = broker.dispatcher
    settings = broker.settings
    answer = None
    if dispatcher.has("auth_on_register"):
        answer = await dispatcher.decide(
            "auth_on_register", client=client, password=password, clean_start=True, properties={}
        )
    if answer is None:
        if not settings.allow_anonymous:
            return Outcome.NOT_AUTHENTICATED
    elif not isinstance(answer, Allow):
        return Outcome.NOT_AUTHENTICATED
    else:
        modifiers = answer.modifiers
        if modifiers.get("client_id", client.client_id) != client.client_id:
            return Outcome.NOT_AUTHENTICATED
        mountpoint = modifiers.get("mountpoint", client.mountpoint)
        username = modifiers.get("username", client.username)
        if not isinstance(mountpoint, str) or not (username is None or isinstance(username, str)):
            return Outcome.NOT_AUTHENTICATED
        try:
            check_mountpoint(mountpoint)
        except ValueError:
            return Outcome.NOT_AUTHENTICATED
        client = ClientInfo(
            client.client_id,
            username,
            client.peer_host,
            client.peer_port,
            client.protocol_level,
            client.listener,
            mountpoint,
            client.node,
        )
    answer = None
    if dispatcher.has("auth_on_publish"):
        answer = await dispatcher.decide("auth_on_publish", client=client, message=message, is_will=False)
    if isinstance(answer, Allow) and "payload" in answer.modifiers:
        return Outcome.NOT_AUTHORIZED
    routed, reason_code = apply_publish_answer(settings.no_match, message, answer)
    if reason_code >= FIRST_FAILURE_CODE or isinstance(answer, Deny):
        return Outcome.NOT_AUTHORIZED
    if routed.retain and not broker.retain_available:
        routed = Message(routed.topic, routed.payload, routed.qos, False, routed.properties, routed.created_at)
    await broker.publisher.publish(routed, None, origin=client)
    return Outcome.PUBLISHED
