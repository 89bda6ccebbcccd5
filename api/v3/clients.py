"""EMQX 3's connections, sessions, subscriptions and routes, publish and subscribe on a
client's behalf, and the banned list on /api/v3."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from ternmq.kernel import (
    Service,
    SessionInfo,
    TopicError,
    TopicSubscription,
    validate_topic_filter,
    validate_topic_name,
)

from .. import model
from ..model import ClientQuery, SubscriptionQuery
from . import BAD_TOPIC, BAD_TYPE, MISSING, OFFLINE, UNKNOWN, Call, Fail, Handler, done, done_page, ok

# EMQX 3 spells a ban's kind client_id and ip_address; the banned plugin clientid and peerhost.
BAN_KINDS = {"client_id": "clientid", "clientid": "clientid", "username": "username"}
BAN_KINDS |= {"ip_address": "peerhost", "peerhost": "peerhost"}
BAN_NAMES = {"clientid": "client_id", "peerhost": "ip_address"}


def connection(info: SessionInfo) -> dict[str, Any]:
    return {
        "client_id": info.client_id,
        "username": info.user if info.user is not None else "undefined",
        "node": info.node,
        "ipaddress": info.peer_host,
        "port": info.peer_port,
        "clean_start": info.clean_session,
        "proto_name": model.PROTOCOL_NAMES.get(info.protocol, "MQTT"),
        "proto_ver": info.protocol,
        "keepalive": info.keep_alive,
        "connected_at": model.local_time(info.connected_at),
        "is_bridge": False,
        "zone": info.listener,
    }


def session(info: SessionInfo) -> dict[str, Any]:
    return {
        "client_id": info.client_id,
        "username": info.user if info.user is not None else "undefined",
        "node": info.node,
        "clean_start": info.clean_session,
        "binding": "local",
        "created_at": model.local_time(info.created_at),
        "expiry_interval": 0xFFFFFFFF if info.expiry_interval is None else info.expiry_interval,
        "subscriptions_count": info.subscriptions,
        "inflight_len": info.inflight,
        "max_inflight": info.max_inflight,
        "mqueue_len": info.queued,
        "max_mqueue": info.max_queued,
    }


def subscription(row: model.SubscriptionRow) -> dict[str, Any]:
    return {"node": row.node, "topic": row.topic, "client_id": row.client_id, "qos": row.subscription.qos}


def ban_row(row: dict[str, Any]) -> dict[str, Any]:
    until = row.get("until")
    if until not in (None, "infinity"):
        until = int(datetime.fromisoformat(str(until).replace("Z", "+00:00")).timestamp())
    kind = str(row["as"])
    return {"who": row["who"], "as": BAN_NAMES.get(kind, kind), "reason": row["reason"], "by": row["by"]} | {
        "until": "undefined" if until in (None, "infinity") else until
    }


def paging(call: Call) -> tuple[int, int]:
    """``_page`` (1 on) and ``_limit`` (1 to 10000, default 10000); 108 otherwise."""
    numbers = []
    for name, default in (("_page", 1), ("_limit", model.MAX_LIMIT)):
        value = call.args.get(name, default)
        try:
            number = int(value) if not isinstance(value, (bool, float)) else 0
        except (TypeError, ValueError):
            number = 0
        if number < 1 or name == "_limit" and number > model.MAX_LIMIT:
            bound = f"1 to {model.MAX_LIMIT}" if name == "_limit" else "1 or more"
            raise Fail(BAD_TYPE, f"{name} must be an integer, {bound}, not {value!r}")
        numbers.append(number)
    return numbers[0], numbers[1]


def topics(call: Call, check: Callable[[str], None]) -> list[str]:
    """``topic`` or ``topics``, split at commas as EMQX 3 does; 115 for a bad one."""
    given = call.arg("topic", str, None)
    given = call.arg("topics", str, None) if given is None else given
    if given is None:
        raise Fail(MISSING, "missing mandatory param: topic or topics")
    names = [name for name in given.split(",") if name]
    if not names:
        raise Fail(BAD_TOPIC, "no topic given")
    for name in names:
        try:
            check(name)
        except TopicError as exc:
            raise Fail(BAD_TOPIC, f"bad topic {name!r}: {exc}") from None
    return names


def qos_of(call: Call) -> int:
    qos: int = call.arg("qos", int, 0)
    if qos not in (0, 1, 2):
        raise Fail(BAD_TYPE, f"qos must be 0, 1 or 2, not {qos}")
    return qos


def ban_kind(call: Call) -> str:
    given = call.arg("as", str)
    if given not in BAN_KINDS:
        raise Fail(BAD_TYPE, "value of 'as' must be one of: ['client_id', 'username', 'ip_address']")
    return BAN_KINDS[given]


async def banning(action: Awaitable[Any]) -> Any:
    try:
        return await action
    except model.ControlError as exc:
        if exc.kind == "unavailable":
            raise Fail(UNKNOWN, "banned is not available: the banned plugin is not loaded") from None
        raise Fail(BAD_TYPE if exc.kind == "bad" else UNKNOWN, str(exc)) from None


class ClientHandlers:
    """The handlers of the clients' endpoints: connections, sessions, subscriptions, routes,
    publish and subscribe, and banned."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.node = service.node_name

    # -- connections, sessions, subscriptions, routes --------------------------------------------

    def online(self, client_id: str) -> SessionInfo | None:
        info = self.service.session_info(client_id)
        return info if info is not None and info.is_online else None

    async def kick(self, call: Call) -> dict[str, Any]:
        client_id = call.bindings["clientid"]
        if self.online(client_id) is None:
            raise Fail(OFFLINE, f"client {client_id!r} is not online")
        self.service.disconnect(client_id)
        return ok()

    def route_row(self, topic: str) -> dict[str, str]:
        return {"topic": topic, "node": self.node}

    # -- publish and subscribe on a client's behalf ------------------------------------------------

    async def publish(self, call: Call) -> dict[str, Any]:
        names, qos = topics(call, validate_topic_name), qos_of(call)
        retain, payload = call.arg("retain", bool, False), call.arg("payload", str, "")
        call.arg("client_id", str, None)  # the publisher EMQX 3 names; checked, not kept
        for topic in names:
            await self.service.publish(topic, payload.encode(), qos, retain)
        return ok()

    async def subscribe(self, call: Call) -> dict[str, Any]:
        client_id, names, qos = call.arg("client_id", str), topics(call, validate_topic_filter), qos_of(call)
        try:
            subscribed = await self.service.subscribe(client_id, [TopicSubscription(name, qos) for name in names])
        except TopicError as exc:  # deeper than the broker's max_topic_levels, say
            raise Fail(BAD_TOPIC, str(exc)) from None
        if not subscribed:
            raise Fail(OFFLINE, f"no session of client {client_id!r}")
        return ok()

    async def unsubscribe(self, call: Call) -> dict[str, Any]:
        client_id, topic = call.arg("client_id", str), call.arg("topic", str)
        try:
            validate_topic_filter(topic)
        except TopicError as exc:
            raise Fail(BAD_TOPIC, f"bad topic {topic!r}: {exc}") from None
        if await self.service.unsubscribe(client_id, [topic]) is None:
            raise Fail(OFFLINE, f"no session of client {client_id!r}")
        return ok()

    # -- banned (the banned plugin's admin commands) -------------------------------------------------

    async def list_banned(self, call: Call) -> dict[str, Any]:
        rows = await banning(model.bans(self.service))
        return await done_page(model.paged(rows, *paging(call)), ban_row)

    async def create_banned(self, call: Call) -> dict[str, Any]:
        who, kind = call.arg("who", str), ban_kind(call)
        details = {key: call.arg(key, str) for key in ("by", "reason") if call.args.get(key) is not None}
        if call.args.get("until") is not None:
            details["until"] = str(call.arg("until", int))
        await banning(model.ban(self.service, kind, who, **details))
        return ok(call.args)  # EMQX 3 answers with what it was sent

    async def delete_banned(self, call: Call) -> dict[str, Any]:
        kind = ban_kind(call)
        try:
            await banning(model.unban(self.service, kind, call.bindings["who"]))
        except Fail as exc:
            if "no such ban" not in exc.message:
                raise
        return ok()  # EMQX 3 answers a ban that was not there alike

    # -- the handlers, by ENDPOINTS' first column ------------------------------------------------

    def table(self) -> dict[str, Handler]:
        service, online, route_row = self.service, self.online, self.route_row
        return {
            "list_banned": self.list_banned,
            "create_banned": self.create_banned,
            "delete_banned": self.delete_banned,
            "connections": lambda c: done_page(
                model.clients(service, ClientQuery(conn_state="connected"), *paging(c)), connection
            ),
            "connection": lambda c: done([connection(i) for i in [online(c.bindings["clientid"])] if i]),
            "by_username": lambda c: done(
                [connection(i) for i in service.sessions() if i.is_online and i.user == c.bindings["username"]]
            ),
            "kick": self.kick,
            "subscribe": self.subscribe,
            "publish": self.publish,
            "unsubscribe": self.unsubscribe,
            "routes": lambda c: done_page(model.paged(model.routes(service), *paging(c)), route_row),
            "route": lambda c: done([route_row(t) for t in model.routes(service) if t == c.bindings["topic"]]),
            "sessions": lambda c: done_page(model.clients(service, ClientQuery(), *paging(c)), session),
            "session": lambda c: done([session(i) for i in [service.session_info(c.bindings["clientid"])] if i]),
            "subscriptions": lambda c: done_page(
                model.subscriptions(service, SubscriptionQuery(), *paging(c)), subscription
            ),
            "client_subscriptions": lambda c: done(
                [subscription(row) for row in model.subscription_rows(service, [c.bindings["clientid"]])]
            ),
        }
