"""The path of an authorized message, whoever published it (a client, a will, the
broker itself): the retain store, the router, then the announcements."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from ..values.types import ClientInfo, Message
from .topics import mounted

if TYPE_CHECKING:
    from ..hooks.dispatch import HookDispatcher
    from .router import Router
    from .session import AttachedConnection


class Publisher:
    """Retains, routes and announces messages (``publish``).

    :param node_name: this broker's node, which names the broker as a publisher.
    """

    def __init__(self, router: Router, dispatcher: HookDispatcher, node_name: str) -> None:
        self.router = router
        self.dispatcher = dispatcher
        #: Who hooks are told published a message the broker itself published.
        self.broker_client = ClientInfo(f"$broker/{node_name}", node=node_name)

    async def publish(
        self,
        message: Message,
        conn: AttachedConnection | None,
        origin: ClientInfo | None = None,
        on_matched: Callable[[int], None] | None = None,
    ) -> int:
        """Retain, route and announce an authorized message; returns deliveries.

        ``conn`` is the publisher's connection (None for a will or the broker itself;
        ``origin`` then names the publisher, the broker by default). ``on_matched`` (the
        publisher's acknowledgement) is called with the number of matching subscribers
        before any of them gets the message (Router.route).
        """
        dispatcher = self.dispatcher
        client = conn.client_info if conn is not None else origin
        # In a mountpoint the message is routed (and retained) under it; on_publish is
        # told the topic as the publisher sent it.
        routed = message
        if client is not None and client.mountpoint:
            routed = attrs.evolve(message, topic=mounted(client.mountpoint, message.topic))
        if message.retain:
            if not message.payload:
                await dispatcher.provide("retain_delete", topic=routed.topic)
            else:
                await dispatcher.provide("retain_store", message=routed)
        origin_id = conn.client_info.client_id if conn is not None else None
        count = await self.router.route(routed, origin_id, on_matched)
        announce = dispatcher.has("on_publish")
        forward = dispatcher.has("cluster_forward")
        if announce or forward:
            client = client or self.broker_client
            if announce:
                await dispatcher.notify("on_publish", client=client, message=message)
            if forward:  # synchronous: one call per published message, no await
                dispatcher.provide_now("cluster_forward", message=routed, origin=client)
        return count
