"""EMQX 3's REST API under ``/api/v3``, in the shapes emqx-management 3.2 answers.

Requests carry HTTP Basic ``app_id:secret`` of an app (``ternmq-admin app create``); its
role limits it as on /api/v5 (a viewer GET only, a publisher publish only). ``GET
/api/v3/`` lists the endpoints. Answers are ``{"code": 0, "data": ..., "meta": {page,
limit, count}}``; errors are HTTP 200 with ``{"code": 1xx, "message": ...}`` (EMQX 3's
numeric codes), except missing or wrong credentials (401), a role's refusal (403), and
an unknown path or node (404), each with a JSON body. Lists page with ``_page`` and
``_limit`` (default and most 10000). Parameters come from the query and a JSON body, the
query first. Times are local ``YYYY-MM-DD HH:MM:SS``; no user name is ``"undefined"``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import resource
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import trio
from quart import Response, request
from quart_trio import QuartTrio

from ternmq import __version__
from ternmq.kernel import (
    PluginError,
    Service,
    SessionInfo,
    TopicError,
    TopicSubscription,
    validate_topic_filter,
    validate_topic_name,
)

from . import model
from .apps import App, basic_credentials
from .model import ClientQuery, SubscriptionQuery
from .v5 import ROLE_ACCESS

if TYPE_CHECKING:
    from . import Plugin

log = logging.getLogger("ternmq.api")
PREFIX = "/api/v3"
MISSING, BAD_TYPE, NOT_JSON, LOADED, UNLOADED, OFFLINE, BAD_TOPIC = 107, 108, 109, 110, 111, 112, 115
UNKNOWN, RPC = 102, 101
# emqx-management 3.2's endpoints, as GET /api/v3/ lists them: our handler, name, method,
# path and descr. Paths match by their segments ("nodes/..." and "/nodes/..." alike).
ENDPOINTS = [
    line.split(None, 4)
    for line in """
list_banned list_banned GET /banned/ List banned
create_banned create_banned POST /banned/ Create banned
delete_banned delete_banned DELETE /banned/:who Delete banned
brokers list_brokers GET /brokers/ A list of brokers in the cluster
broker get_broker GET /brokers/:node Get broker info of a node
connections list_connections GET /connections/ A list of connections in the cluster
connections list_node_connections GET nodes/:node/connections/ A list of connections on a node
connection lookup_node_connections GET nodes/:node/connections/:clientid Lookup a connection on node
connection lookup_connections GET /connections/:clientid Lookup a connection in the cluster
by_username lookup_node_connection_via_username GET /nodes/:node/connection/username/:username Lookup a connection via username on a node
by_username lookup_connection_via_username GET /connection/username/:username Lookup a connection via username in the cluster
kick kickout_connection DELETE /connections/:clientid Kick out a connection
listeners list_listeners GET /listeners/ A list of listeners in the cluster
node_listeners list_node_listeners GET /nodes/:node/listeners A list of listeners on the node
metrics list_all_metrics GET /metrics/ A list of metrics of all nodes in the cluster
node_metrics list_node_metrics GET /nodes/:node/metrics/ A list of metrics of a node
nodes list_nodes GET /nodes/ A list of nodes in the cluster
node get_node GET /nodes/:node Lookup a node in the cluster
plugins list_all_plugins GET /plugins/ List all plugins in the cluster
node_plugins list_node_plugins GET /nodes/:node/plugins/ List all plugins on a node
load load_node_plugin PUT /nodes/:node/plugins/:plugin/load Load a plugin
unload unload_node_plugin PUT /nodes/:node/plugins/:plugin/unload Unload a plugin
reload reload_node_plugin PUT /nodes/:node/plugins/:plugin/reload Reload a plugin
unload unload_plugin PUT /plugins/:plugin/unload Unload a plugin in the cluster
reload reload_plugin PUT /plugins/:plugin/reload Reload a plugin in the cluster
subscribe mqtt_subscribe POST /mqtt/subscribe Subscribe a topic
publish mqtt_publish POST /mqtt/publish Publish a MQTT message
unsubscribe mqtt_unsubscribe POST /mqtt/unsubscribe Unsubscribe a topic
routes list_routes GET /routes/ List routes
route lookup_routes GET /routes/:topic Lookup routes to a topic
sessions list_sessions GET /sessions/ A list of sessions in the cluster
sessions list_node_sessions GET nodes/:node/sessions/ A list of sessions on a node
session lookup_session GET /sessions/:clientid Lookup a session in the cluster
session lookup_node_session GET nodes/:node/sessions/:clientid Lookup a session on the node
stats list_stats GET /stats/ A list of stats of all nodes in the cluster
node_stats lookup_node_stats GET /nodes/:node/stats/ A list of stats of a node
subscriptions list_subscriptions GET /subscriptions/ A list of subscriptions in the cluster
subscriptions list_node_subscriptions GET /nodes/:node/subscriptions/ A list of subscriptions on a node
client_subscriptions lookup_client_subscriptions GET /subscriptions/:clientid A list of subscriptions of a client
client_subscriptions lookup_client_subscriptions_with_node GET /nodes/:node/subscriptions/:clientid A list of subscriptions of a client on the node
""".strip().splitlines()
]
# EMQX 3 spells a ban's kind client_id and ip_address; the banned plugin clientid and peerhost.
BAN_KINDS = {"client_id": "clientid", "clientid": "clientid", "username": "username"}
BAN_KINDS |= {"ip_address": "peerhost", "peerhost": "peerhost"}
BAN_NAMES = {"clientid": "client_id", "peerhost": "ip_address"}


class Fail(Exception):
    """An answer other than success: EMQX 3's code and message (HTTP 200 unless given)."""

    def __init__(self, code: int, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class Call:
    """One request: its path bindings, parameters (query, then JSON object body), body."""

    def __init__(self, bindings: dict[str, str], args: dict[str, Any], body: Any, from_query: set[str]) -> None:
        self.bindings, self.args, self.body = bindings, args, body
        self.from_query = from_query  # names whose values are query text, to be read as their type
        self.close = False  # answered first: the plugin serving it goes after

    def arg(self, name: str, kind: type, default: Any = ...) -> Any:
        value = self.args.get(name)
        if value is None:
            if default is ...:
                raise Fail(MISSING, f"missing mandatory param: {name}")
            return default
        if name in self.from_query and kind is int and re.fullmatch(r"-?[0-9]{1,20}", value):
            return int(value)  # from the query string, where everything is text
        if name in self.from_query and kind is bool and value in ("true", "false"):
            return value == "true"
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise Fail(BAD_TYPE, f"{name} has the wrong type: {value!r}")
        return value


def answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers or {}, content_type="application/json")


def ok(data: Any = None, meta: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": 0}
    if data is not None:
        body["data"] = data
    if meta is not None:
        body["meta"] = meta
    return body


def uptime() -> str:
    """EMQX 3's words: ``1 days,18 hours, 45 minutes, 1 seconds``."""
    secs = int(time.time() - model.STARTED_AT)
    text = f"{secs % 60} seconds"
    for bound, part in ((60, f"{secs // 60 % 60} minutes, "), (3600, f"{secs // 3600 % 24} hours, ")):
        text = part + text if secs >= bound else text
    return f"{secs // 86400} days," + text if secs >= 86400 else text


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


def register(app: QuartTrio, plugin: Plugin, service: Service) -> None:
    """Add the routes of /api/v3 to the API's app."""
    node = service.node_name
    stopped = plugin.stopped_plugins

    def each_node(data: Any, key: str | None = None) -> Any:
        return [{"node": node, **(data if key is None else {key: data})}]

    # -- brokers, nodes, figures ---------------------------------------------------------------

    def broker() -> dict[str, Any]:
        return {
            "version": __version__,
            "sysdescr": "ternmq MQTT broker",
            "uptime": uptime(),
            "datetime": model.local_time(time.time()),
            "otp_release": f"Python/{platform.python_version()}",
            "node_status": "Running",
        }

    def node_info(human: bool) -> dict[str, Any]:
        try:
            loads = [f"{load:.2f}" for load in os.getloadavg()]
        except OSError:
            loads = ["0.00"] * 3
        used, peak = model.resident_memory()
        return {
            **broker(),
            "name": node,
            "memory_total": model.human_size(peak) if human else peak,
            "memory_used": model.human_size(used) if human else used,
            "max_fds": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "connections": model.node(service)["connections"],
            **dict(zip(("load1", "load5", "load15"), loads, strict=True)),
        }

    def stats() -> dict[str, int]:
        figures = model.stats(service)
        persistent = sum(1 for info in service.sessions() if info.expiry_interval != 0)
        names = "connections sessions topics suboptions subscribers subscriptions subscriptions.shared routes retained"
        kept = {f"{name}.{s}": figures[f"{name}.{s}"] for name in names.split() for s in ("count", "max")}
        return kept | {"sessions.persistent.count": persistent, "sessions.persistent.max": persistent}

    def metrics() -> dict[str, int | float]:
        m = model.metrics(service)
        raw = {name.split(".", 1)[1]: value for name, value in service.metrics().items() if "{" not in name}
        connects = raw.get("connections_accepted", 0) + raw.get("connect_refused", 0)
        names = "bytes.received bytes.sent packets.received packets.sent messages.received messages.sent"
        return {name: m[name] for name in (*names.split(), "messages.dropped", "messages.retained")} | {
            "packets.connect.received": connects,
            "packets.connack.sent": connects,
            "packets.connack.auth_error": raw.get("connect_refused", 0),
            "packets.publish.received": raw.get("publish_received", 0),
            "packets.publish.auth_error": raw.get("publish_denied", 0),
            "packets.publish.sent": raw.get("deliveries", 0),
        }

    def listeners() -> list[dict[str, Any]]:
        return [
            {
                "protocol": "mqtt:" + {"tls": "ssl"}.get(info.type, info.type),
                "listen_on": f"{info.address}:{info.port}",
                "acceptors": 1,
                "max_conns": info.max_connections,
                "current_conns": info.active_connections,
                "shutdown_count": [],
            }
            for info in service.listeners()
            if info.status == "running"
        ]

    # -- plugins (EMQX 3's load and unload are ours) ---------------------------------------------

    def plugins() -> list[dict[str, Any]]:
        """Loaded plugins, those stopped in this run, and the built-in ones not loaded."""
        from ternmq.plugins import BUILTIN, ESSENTIAL

        rows = model.plugin_listing(service, lambda: stopped)
        listed = [(r["name"], r["version"], r["description"], r["running"], r["source"]) for r in rows]
        known = {row["name"] for row in rows} | set(ESSENTIAL)
        listed += [(name, __version__, "", False, "builtin") for name in BUILTIN if name not in known]
        return [dict(zip(("name", "version", "description", "active", "type"), row, strict=True)) for row in listed]

    def answered_first(call: Call, action: Callable[[], Awaitable[object]], what: str) -> dict[str, Any]:
        """The API unloading itself: answered first, done once the answer is sent."""
        from .routes import ANSWER_GRACE, after_response

        async def later() -> None:
            await trio.sleep(ANSWER_GRACE)  # for the server to write and close
            await action()

        after_response(lambda: service.start_soon(later, f"api: {what}"))
        call.close = True
        return ok()

    async def plugin_load(call: Call) -> dict[str, Any]:
        name = model.plugin_name(service, stopped, call.bindings["plugin"])
        try:
            await model.start_plugin(service, stopped, name)
        except model.ControlError as exc:
            raise Fail(LOADED if exc.kind == "running" else UNKNOWN, str(exc)) from None
        return ok()

    async def plugin_unload(call: Call) -> dict[str, Any]:
        name = model.plugin_name(service, stopped, call.bindings["plugin"])
        if name == service.plugin_name_of(plugin):
            return answered_first(call, lambda: model.stop_plugin(service, stopped, name), f"unload {name}")
        try:
            await model.stop_plugin(service, stopped, name)
        except model.ControlError as exc:
            gone = exc.kind == "stopped" or exc.kind == "not_found" and name in {r["name"] for r in plugins()}
            raise Fail(UNLOADED if gone else UNKNOWN, str(exc)) from None
        return ok()

    async def plugin_reload(call: Call) -> dict[str, Any]:
        name = model.plugin_name(service, stopped, call.bindings["plugin"])
        if not any(info.name == name for info in service.plugins()):
            return await plugin_load(call)  # EMQX 3 loads an inactive plugin
        if name == service.plugin_name_of(plugin):
            return answered_first(call, lambda: service.reload_plugin(name), f"reload {name}")
        try:
            await service.reload_plugin(name)
        except PluginError as exc:
            raise Fail(UNKNOWN, str(exc)) from None
        return ok()

    # -- connections, sessions, subscriptions, routes --------------------------------------------

    def online(client_id: str) -> SessionInfo | None:
        info = service.session_info(client_id)
        return info if info is not None and info.is_online else None

    async def kick(call: Call) -> dict[str, Any]:
        client_id = call.bindings["clientid"]
        if online(client_id) is None:
            raise Fail(OFFLINE, f"client {client_id!r} is not online")
        service.disconnect(client_id)
        return ok()

    # -- publish and subscribe on a client's behalf ------------------------------------------------

    async def publish(call: Call) -> dict[str, Any]:
        names, qos = topics(call, validate_topic_name), qos_of(call)
        retain, payload = call.arg("retain", bool, False), call.arg("payload", str, "")
        call.arg("client_id", str, None)  # the publisher EMQX 3 names; checked, not kept
        for topic in names:
            await service.publish(topic, payload.encode(), qos, retain)
        return ok()

    async def subscribe(call: Call) -> dict[str, Any]:
        client_id, names, qos = call.arg("client_id", str), topics(call, validate_topic_filter), qos_of(call)
        try:
            subscribed = await service.subscribe(client_id, [TopicSubscription(name, qos) for name in names])
        except TopicError as exc:  # deeper than the broker's max_topic_levels, say
            raise Fail(BAD_TOPIC, str(exc)) from None
        if not subscribed:
            raise Fail(OFFLINE, f"no session of client {client_id!r}")
        return ok()

    async def unsubscribe(call: Call) -> dict[str, Any]:
        client_id, topic = call.arg("client_id", str), call.arg("topic", str)
        try:
            validate_topic_filter(topic)
        except TopicError as exc:
            raise Fail(BAD_TOPIC, f"bad topic {topic!r}: {exc}") from None
        if await service.unsubscribe(client_id, [topic]) is None:
            raise Fail(OFFLINE, f"no session of client {client_id!r}")
        return ok()

    # -- banned (the banned plugin's admin commands) -------------------------------------------------

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

    def ban_row(row: dict[str, Any]) -> dict[str, Any]:
        until = row.get("until")
        if until not in (None, "infinity"):
            until = int(datetime.fromisoformat(str(until).replace("Z", "+00:00")).timestamp())
        kind = str(row["as"])
        return {"who": row["who"], "as": BAN_NAMES.get(kind, kind), "reason": row["reason"], "by": row["by"]} | {
            "until": "undefined" if until in (None, "infinity") else until
        }

    async def list_banned(call: Call) -> dict[str, Any]:
        rows = await banning(model.bans(service))
        return await done_page(model.paged(rows, *paging(call)), ban_row)

    async def create_banned(call: Call) -> dict[str, Any]:
        who, kind = call.arg("who", str), ban_kind(call)
        details = {key: call.arg(key, str) for key in ("by", "reason") if call.args.get(key) is not None}
        if call.args.get("until") is not None:
            details["until"] = str(call.arg("until", int))
        await banning(model.ban(service, kind, who, **details))
        return ok(call.args)  # EMQX 3 answers with what it was sent

    async def delete_banned(call: Call) -> dict[str, Any]:
        kind = ban_kind(call)
        try:
            await banning(model.unban(service, kind, call.bindings["who"]))
        except Fail as exc:
            if "no such ban" not in exc.message:
                raise
        return ok()  # EMQX 3 answers a ban that was not there alike

    # -- the handlers, by ENDPOINTS' first column ------------------------------------------------

    async def done(data: Any) -> dict[str, Any]:
        return ok(data)

    async def done_page(page: model.Page, item: Callable[[Any], Any]) -> dict[str, Any]:
        return ok([item(entry) for entry in page.items], {"page": page.page, "limit": page.limit, "count": page.count})

    def route_row(topic: str) -> dict[str, str]:
        return {"topic": topic, "node": node}

    handlers: dict[str, Callable[[Call], Awaitable[dict[str, Any]]]] = {
        "list_banned": list_banned,
        "create_banned": create_banned,
        "delete_banned": delete_banned,
        "brokers": lambda c: done(each_node(broker())),
        "broker": lambda c: done(broker()),
        "connections": lambda c: done_page(
            model.clients(service, ClientQuery(conn_state="connected"), *paging(c)), connection
        ),
        "connection": lambda c: done([connection(i) for i in [online(c.bindings["clientid"])] if i]),
        "by_username": lambda c: done(
            [connection(i) for i in service.sessions() if i.is_online and i.user == c.bindings["username"]]
        ),
        "kick": kick,
        "listeners": lambda c: done(each_node(listeners(), "listeners")),
        "node_listeners": lambda c: done(listeners()),
        "metrics": lambda c: done(each_node(metrics(), "metrics")),
        "node_metrics": lambda c: done(metrics()),
        "nodes": lambda c: done([{**node_info(True), "node": node}]),
        "node": lambda c: done(node_info(False)),
        "plugins": lambda c: done(each_node(plugins(), "plugins")),
        "node_plugins": lambda c: done(plugins()),
        "load": plugin_load,
        "unload": plugin_unload,
        "reload": plugin_reload,
        "subscribe": subscribe,
        "publish": publish,
        "unsubscribe": unsubscribe,
        "routes": lambda c: done_page(model.paged(model.routes(service), *paging(c)), route_row),
        "route": lambda c: done([route_row(t) for t in model.routes(service) if t == c.bindings["topic"]]),
        "sessions": lambda c: done_page(model.clients(service, ClientQuery(), *paging(c)), session),
        "session": lambda c: done([session(i) for i in [service.session_info(c.bindings["clientid"])] if i]),
        "stats": lambda c: done(each_node(stats())),
        "node_stats": lambda c: done(stats()),
        "subscriptions": lambda c: done_page(
            model.subscriptions(service, SubscriptionQuery(), *paging(c)), subscription
        ),
        "client_subscriptions": lambda c: done(
            [subscription(row) for row in model.subscription_rows(service, [c.bindings["clientid"]])]
        ),
    }

    # -- dispatch (minirest's: credentials first, then the route) -----------------------------------

    async def who() -> App:
        app_id, secret = basic_credentials(request.headers.get("authorization")) or ("", "")
        if not app_id or not secret:
            raise Fail(104, "an app id and secret are needed (HTTP Basic)", 401)
        found = await plugin.apps.authenticate(app_id, secret, kind="key")
        if found is None:
            raise Fail(103, "wrong app id or secret", 401)
        return found

    def route(method: str, tokens: list[str]) -> tuple[str, str, dict[str, str]]:
        for key, name, wanted, path, _ in ENDPOINTS:
            pattern = [part for part in path.split("/") if part]
            if wanted == method and len(pattern) == len(tokens):
                pairs = list(zip(pattern, tokens, strict=True))
                if all(p.startswith(":") or p == t for p, t in pairs):
                    return key, name, {p[1:]: t for p, t in pairs if p.startswith(":")}
        raise Fail(UNKNOWN, f"no such API: {request.method} {PREFIX}/{'/'.join(tokens)}", 404)

    async def dispatch(raw: bytes) -> Response:
        caller, method = await who(), "GET" if request.method == "HEAD" else request.method
        path = request.scope.get("raw_path", b"").decode("ascii", "replace") or request.path
        tokens = [unquote(t, errors="replace") for t in path.split(PREFIX, 1)[-1].split("/") if t]
        if not tokens and method == "GET":
            listed = [dict(zip(("name", "method", "path", "descr"), e[1:], strict=True)) for e in ENDPOINTS]
            return answer(ok(listed))
        key, name, bindings = route(method, tokens)
        access = "read" if method == "GET" else "publish" if key.startswith("publish") else "write"
        if access not in ROLE_ACCESS[caller.role]:
            raise Fail(UNKNOWN, f"the role {caller.role} may not {request.method} {request.path}", 403)
        if bindings.get("node", node) != node:
            raise Fail(RPC, f"no node {bindings['node']!r}: this node is {node!r}", 404)
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            raise Fail(NOT_JSON, "the body is not JSON") from None
        if body is not None and not isinstance(body, dict):
            raise Fail(NOT_JSON, "the body must be a JSON object")
        # The query's values first, as EMQX 3's minirest reads them; the body fills in.
        query = request.args.to_dict()
        call = Call(bindings, (body if isinstance(body, dict) else {}) | query, body, set(query))
        result = await handlers[key](call)
        return answer(result, headers={"Connection": "close"} if call.close else None)

    async def view(rest: str = "") -> Response:
        raw = await request.get_data()  # read before answering (hypercorn's keep-alive)
        try:
            return await dispatch(raw if isinstance(raw, bytes) else raw.encode())
        except Fail as exc:
            headers = {"WWW-Authenticate": 'Basic realm="ternmq"'} if exc.status == 401 else None
            return answer({"code": exc.code, "message": exc.message}, exc.status, headers)
        except Exception as exc:  # never a 500: EMQX 3's unknown error, and the log says why
            log.exception("API request %s %s failed", request.method, request.path)
            return answer({"code": UNKNOWN, "message": f"the request failed: {exc!r}"})

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
    for rule in (PREFIX, PREFIX + "/", PREFIX + "/<path:rest>"):
        app.add_url_rule(rule, view_func=view, methods=methods, endpoint=f"v3 {rule}")
