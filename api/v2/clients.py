"""The clients of /api/v2: connected clients, sessions, subscriptions and routes, as EMQ
2's rows and pages, and MQTT publish, subscribe and unsubscribe on a client's behalf.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ternmq.kernel import SessionInfo, TopicError, TopicSubscription

from .. import model
from ..model import ClientQuery, SubscriptionQuery
from .envelope import BAD_TYPE, OFFLINE, UNKNOWN, Call, Handlers, Refused, moment, paged, param

ONLINE, EVERY = ClientQuery(conn_state="connected"), ClientQuery()


def client_row(info: SessionInfo) -> dict[str, Any]:
    return {
        "client_id": info.client_id,
        "username": info.user if info.user is not None else "undefined",
        "ipaddress": info.peer_host,
        "port": info.peer_port,
        "clean_sess": info.clean_session,
        "proto_ver": info.protocol,
        "keepalive": info.keep_alive,
        "connected_at": moment(info.connected_at),
    }


def session_row(info: SessionInfo) -> dict[str, Any]:
    # EMQ 2.3's fields; the counts it kept per session and we do not are 0.
    return {
        "client_id": info.client_id,
        "clean_sess": info.clean_session,
        "subscriptions": info.subscriptions,
        "max_inflight": info.max_inflight,
        "inflight_len": info.inflight,
        "mqueue_len": info.queued,
        **dict.fromkeys(("mqueue_dropped", "awaiting_rel_len", "deliver_msg", "enqueue_msg"), 0),
        "created_at": moment(info.created_at),
    }


def subscription_row(row: model.SubscriptionRow) -> dict[str, Any]:
    return {"client_id": row.client_id, "topic": row.topic, "qos": row.subscription.qos}


class Clients(Handlers):
    """Clients (connected), sessions, subscriptions, routes; publish and (un)subscribe."""

    def _listed(self, call: Call, query: ClientQuery, row: Callable[[SessionInfo], Any]) -> Any:
        self.on_node(call.params[0])
        return paged(call, lambda page, size: model.clients(self.service, query, page, size), row)

    def _one(self, call: Call, query: ClientQuery, row: Callable[[SessionInfo], Any]) -> Any:
        info = self.service.session_info(self.last(call))
        return {"objects": [row(info)] if info is not None and query.matches(info) else []}

    def clients(self, call: Call) -> Any:
        return self._listed(call, ONLINE, client_row)

    def client(self, call: Call) -> Any:
        return self._one(call, ONLINE, client_row)

    def session_list(self, call: Call) -> Any:
        return self._listed(call, EVERY, session_row)

    def session(self, call: Call) -> Any:
        return self._one(call, EVERY, session_row)

    def to_online_client(self, call: Call) -> Any:
        """DELETE kicks the client out (a persistent session stays, as in EMQ 2); PUT
        cleans its ACL cache (none is kept: nothing to do). 112 unless it is online."""
        if call.method == "PUT":
            param(call.body, "topic", str)
        info = self.service.session_info(call.params[0])
        if info is None or not info.is_online:
            raise Refused(OFFLINE, f"client {call.params[0]!r} is not online")
        if call.method == "DELETE":
            self.service.disconnect(info.client_id)
        return []

    def subscriptions(self, call: Call) -> Any:
        self.on_node(call.params[0])
        query = SubscriptionQuery()
        return paged(call, lambda page, size: model.subscriptions(self.service, query, page, size), subscription_row)

    def client_subscriptions(self, call: Call) -> Any:
        return {"objects": [subscription_row(row) for row in model.subscription_rows(self.service, [self.last(call)])]}

    def route_list(self, call: Call) -> Any:
        def row(topic: str) -> dict[str, str]:
            return {"topic": topic, "node": self.node}

        if call.params:
            return {"objects": [row(call.params[0])] if call.params[0] in model.routes(self.service) else []}
        return paged(call, lambda page, size: model.paged(model.routes(self.service), page, size), row)

    # -- MQTT on a client's behalf ---------------------------------------------------------------

    async def publish(self, call: Call) -> Any:
        body = call.body
        topic, payload = param(body, "topic", str), param(body, "payload", str)
        qos, retain = param(body, "qos", int, 0), param(body, "retain", bool, False)
        param(body, "client_id", str, "http")  # EMQ 2 named the message's sender by it; the broker sends here
        if qos not in (0, 1, 2):
            raise Refused(BAD_TYPE, "params type error: qos is 0, 1 or 2")
        try:
            await self.service.publish(topic, payload.encode(), qos, retain)
        except TopicError as exc:
            raise Refused(UNKNOWN, f"validate topic: {topic} fail ({exc})") from None
        return []

    async def subscribe(self, call: Call) -> Any:
        client_id, topic = param(call.body, "client_id", str), param(call.body, "topic", str)
        qos = param(call.body, "qos", int, 0)
        if qos not in (0, 1, 2):
            raise Refused(BAD_TYPE, "params type error: qos is 0, 1 or 2")
        try:
            if call.params[0] == "subscribe":
                done = await self.service.subscribe(client_id, [TopicSubscription(topic, qos)])
            else:
                done = await self.service.unsubscribe(client_id, [topic]) is not None
        except TopicError as exc:
            raise Refused(UNKNOWN, f"validate topic: {topic} fail ({exc})") from None
        if not done:
            raise Refused(UNKNOWN, f"Clientid: {client_id} not found")
        return []
