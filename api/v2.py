"""EMQ 2's REST API under ``/api/v2``, for the scripts and dashboards written against
EMQ 2.x: nodes, monitoring, clients, sessions, subscriptions, routes, publish and
subscribe on a client's behalf, plugins, and the dashboard's users.

As EMQ 2 did, paths are matched by pattern (a trailing ``/`` is optional; a client id or
a topic at the end of a path may hold ``/``), requests carry HTTP Basic
``username:password`` of a user (``ternmq-admin admins add``) or an EMQX key and
secret, and every answer is HTTP 200 with ``{"code": 0, "result": ...}`` or
``{"code": 1xx, "message": ...}`` (EMQ 2's codes 101-114). Lists take ``curr_page``
(1) and ``page_size`` (20) and answer ``{current_page, page_size, total_num,
total_page, objects}``. A failed login is a 401, a role's refusal a 403, an unknown path
a 404 and a path's other method a 405, each with that JSON body.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import re
import resource
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio
from quart import Response, request
from quart_trio import QuartTrio

from ternmq import __version__
from ternmq.kernel import Service, SessionInfo, TopicError, TopicSubscription

from . import model
from .apps import ROLES, App, basic_credentials
from .model import ClientQuery, SubscriptionQuery
from .routes import ANSWER_GRACE, after_response
from .v5 import ROLE_ACCESS

if TYPE_CHECKING:
    from . import Plugin

PREFIX = "/api/v2"
REALM = 'Basic realm="ternmq"'
PAGE_SIZE = 20
# EMQ 2's codes.
RPC, UNKNOWN, BAD_LOGIN, EMPTY_LOGIN, NO_USER, UNDELETABLE, MISSING, BAD_TYPE = range(101, 109)
NOT_JSON, LOADED, UNLOADED, OFFLINE, USER_EXISTS, OLD_PASSWORD = range(109, 115)
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}
_MISSING: Any = object()
# EMQ 2's packet counters: publish and its acks both ways, the others one way.
_ACKED = ("publish", "puback", "pubrec", "pubrel", "pubcomp")
_ONE_WAY = {
    "received": ("connect", "subscribe", "unsubscribe", "pingreq", "disconnect"),
    "sent": ("connack", "suback", "unsuback", "pingresp"),
}
_UNCOUNTED = (
    *(f"packets/{kind}/missed" for kind in _ACKED[1:]),
    *(f"messages/qos{qos}/{way}" for qos in range(3) for way in ("received", "sent")),
    "messages/qos2/dropped",
)


class Refused(Exception):
    """EMQ 2's error answer: ``{"code": code, "message": ...}`` (HTTP 200)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@attrs.frozen
class Call:
    """One request: the path's parts, its query and its JSON body (an object)."""

    method: str
    params: tuple[str, ...]
    query: Mapping[str, str]
    body: Mapping[str, Any]


Handler = Callable[[Call], Any]  # the result, or an awaitable of it


@attrs.frozen
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    access: str  # read, write, publish (ROLE_ACCESS), or none (no login)


def answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers or {}, content_type="application/json")


def param(body: Mapping[str, Any], name: str, kind: type, default: Any = _MISSING) -> Any:
    """A body's field, checked as EMQ 2 did: 107 when missing (JSON null too), 108 when
    not of ``kind``."""
    value = body.get(name)
    if value is None:
        if default is _MISSING:
            raise Refused(MISSING, f"params error: {name} is required")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Refused(BAD_TYPE, f"params type error: {name} must be {_TYPE_NAMES[kind]}")
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise Refused(BAD_TYPE, f"params type error: {name} is not valid UTF-8") from None
    return value


def moment(at: float | None) -> str:
    """EMQ 2's time: ``YYYY-MM-DD HH:MM:SS``, local."""
    return model.local_time(at) or "undefined"


def uptime(seconds: int) -> str:
    """EMQ 2's ``1 hours, 17 minutes, 1 seconds`` (leading zero units left out)."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    parts = [(days, "days"), (hours, "hours"), (rest // 60, "minutes")]
    while parts and parts[0][0] == 0:
        parts.pop(0)
    return ", ".join(f"{value} {unit}" for value, unit in [*parts, (rest % 60, "seconds")])


def tasks() -> int:
    """The trio tasks running (EMQ 2 counted Erlang processes)."""
    root = trio.lowlevel.current_root_task()
    count, todo = 0, [root] if root is not None else []
    while todo:
        task = todo.pop()
        count += 1
        todo += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return count


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


def paged(call: Call, page_of: Callable[[int, int], model.Page], row: Callable[[Any], Any]) -> dict[str, Any]:
    """EMQ 2's page of ``curr_page`` and ``page_size`` (108 unless both are 1 or more)."""
    try:
        page, size = int(call.query.get("curr_page", 1)), int(call.query.get("page_size", PAGE_SIZE))
    except ValueError:
        raise Refused(BAD_TYPE, "params type error: curr_page and page_size are integers") from None
    if page < 1 or size < 1:
        raise Refused(BAD_TYPE, "params type error: curr_page and page_size are 1 or more")
    found = page_of(page, size)
    total = found.count or 0
    meta = {"current_page": page, "page_size": size, "total_num": total, "total_page": -(-total // size)}
    return {**meta, "objects": [row(item) for item in found.items]}


def broker_info() -> dict[str, Any]:
    """EMQ 2's ``management/nodes`` entry."""
    return {
        "version": __version__,
        "sysdescr": "ternmq",
        "uptime": uptime(int(time.time() - model.STARTED_AT)),
        "datetime": moment(time.time()),
        "otp_release": f"Python {platform.python_version()}",
        "node_status": "Running",
    }


def vm_info(service: Service) -> dict[str, Any]:
    """EMQ 2's ``monitoring/nodes`` entry: the process's memory, tasks, files, load."""
    used, total = model.resident_memory()
    try:
        loads = [f"{load:.2f}" for load in os.getloadavg()]
    except OSError:
        loads = ["0.00"] * 3
    return {
        "name": service.node_name,
        "otp_release": f"Python {platform.python_version()}",
        "memory_total": model.human_size(total),
        "memory_used": model.human_size(used),
        "process_available": "infinity",
        "process_used": tasks(),
        "max_fds": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "clients": model.node(service)["live_connections"],
        "node_status": "Running",
        **dict(zip(("load1", "load5", "load15"), loads, strict=True)),
    }


def listeners(service: Service) -> list[dict[str, Any]]:
    return [
        {
            "protocol": "mqtt:" + ("ssl" if info.type == "tls" else info.type),
            "listen": f"{info.address}:{info.port}",
            "acceptors": 1,
            "max_clients": info.max_connections,
            "current_clients": info.active_connections,
            "shutdown_count": [],
        }
        for info in service.listeners()
        if info.status == "running"
    ]


def metrics(service: Service) -> dict[str, int | float]:
    """EMQ 2's metric names (the per-QoS and ``missed`` counts are not kept: 0)."""
    figures = model.metrics(service)
    values: dict[str, int | float] = dict.fromkeys(_UNCOUNTED, 0)
    values |= {f"packets/{kind}/{way}": 0 for kind in _ACKED for way in ("received", "sent")}
    values |= {f"packets/{kind}": 0 for kinds in _ONE_WAY.values() for kind in kinds}
    for name, value in service.metrics().items():
        for way, kinds in _ONE_WAY.items():
            start = f'counter.packets_{way}{{type="'
            kind = name[len(start) :].split('"')[0].lower() if name.startswith(start) else ""
            if kind in _ACKED:
                values[f"packets/{kind}/{way}"] += value
            elif kind in kinds:
                values[f"packets/{kind}"] += value
    for what in ("bytes", "packets", "messages"):
        for way in ("received", "sent"):
            values[f"{what}/{way}"] = figures[f"{what}.{way}"]
    values |= {"messages/dropped": figures["messages.dropped"], "messages/retained": figures["messages.retained"]}
    return dict(sorted(values.items()))


def stats(service: Service) -> dict[str, int]:
    figures = model.stats(service)
    names = ("retained", "routes", "sessions", "subscribers", "subscriptions", "topics")
    pairs = [("clients", "live_connections"), *((name, name) for name in names)]
    return {f"{ours}/{end}": figures[f"{theirs}.{end}"] for ours, theirs in pairs for end in ("count", "max")}


#: What ``management/nodes``, ``monitoring/nodes`` and ``monitoring/...`` report of a node.
FIGURES: dict[str, Callable[[Service], Any]] = {
    "management/nodes": lambda service: broker_info(),
    "monitoring/nodes": vm_info,
    "monitoring/listeners": listeners,
    "monitoring/metrics": metrics,
    "monitoring/stats": stats,
}
_FIGURES = "(management/nodes|monitoring/(?:nodes|listeners|metrics|stats))"


def routes(plugin: Plugin, service: Service) -> list[Route]:
    node = service.node_name
    stopped = plugin.stopped_plugins
    online, every = ClientQuery(conn_state="connected"), ClientQuery()

    def on_node(name: str) -> None:
        if name != node:
            raise Refused(RPC, f"badrpc: nodedown (no node {name!r}; this node is {node})")

    def last(call: Call) -> str:
        """The client id of ``nodes/{node}/.../{id}`` (checking the node) or ``.../{id}``."""
        if len(call.params) > 1:
            on_node(call.params[0])
        return call.params[-1]

    # -- nodes and monitoring: the nodes' list (or one per node), or one node's --------------------

    def of_all(call: Call) -> Any:
        what = call.params[0]
        if what == "management/nodes":
            return [{"name": node, **broker_info()}]
        return [vm_info(service)] if what == "monitoring/nodes" else {node: FIGURES[what](service)}

    def of_node(call: Call) -> Any:
        on_node(call.params[1])
        return FIGURES[call.params[0]](service)

    # -- clients (connected), sessions, subscriptions, routes --------------------------------------

    def sessions(query: ClientQuery, row: Callable[[SessionInfo], Any]) -> tuple[Handler, Handler]:
        def listed(call: Call) -> Any:
            on_node(call.params[0])
            return paged(call, lambda page, size: model.clients(service, query, page, size), row)

        def one(call: Call) -> Any:
            info = service.session_info(last(call))
            return {"objects": [row(info)] if info is not None and query.matches(info) else []}

        return listed, one

    def to_online_client(call: Call) -> Any:
        """DELETE kicks the client out (a persistent session stays, as in EMQ 2); PUT
        cleans its ACL cache (none is kept: nothing to do). 112 unless it is online."""
        if call.method == "PUT":
            param(call.body, "topic", str)
        info = service.session_info(call.params[0])
        if info is None or not info.is_online:
            raise Refused(OFFLINE, f"client {call.params[0]!r} is not online")
        if call.method == "DELETE":
            service.disconnect(info.client_id)
        return []

    def subscriptions(call: Call) -> Any:
        on_node(call.params[0])
        query = SubscriptionQuery()
        return paged(call, lambda page, size: model.subscriptions(service, query, page, size), subscription_row)

    def client_subscriptions(call: Call) -> Any:
        return {"objects": [subscription_row(row) for row in model.subscription_rows(service, [last(call)])]}

    def route_list(call: Call) -> Any:
        def row(topic: str) -> dict[str, str]:
            return {"topic": topic, "node": node}

        if call.params:
            return {"objects": [row(call.params[0])] if call.params[0] in model.routes(service) else []}
        return paged(call, lambda page, size: model.paged(model.routes(service), page, size), row)

    # -- MQTT on a client's behalf ---------------------------------------------------------------

    async def publish(call: Call) -> Any:
        body = call.body
        topic, payload = param(body, "topic", str), param(body, "payload", str)
        qos, retain = param(body, "qos", int, 0), param(body, "retain", bool, False)
        param(body, "client_id", str, "http")  # EMQ 2 named the message's sender by it; the broker sends here
        if qos not in (0, 1, 2):
            raise Refused(BAD_TYPE, "params type error: qos is 0, 1 or 2")
        try:
            await service.publish(topic, payload.encode(), qos, retain)
        except TopicError as exc:
            raise Refused(UNKNOWN, f"validate topic: {topic} fail ({exc})") from None
        return []

    async def subscribe(call: Call) -> Any:
        client_id, topic = param(call.body, "client_id", str), param(call.body, "topic", str)
        qos = param(call.body, "qos", int, 0)
        if qos not in (0, 1, 2):
            raise Refused(BAD_TYPE, "params type error: qos is 0, 1 or 2")
        try:
            if call.params[0] == "subscribe":
                done = await service.subscribe(client_id, [TopicSubscription(topic, qos)])
            else:
                done = await service.unsubscribe(client_id, [topic]) is not None
        except TopicError as exc:
            raise Refused(UNKNOWN, f"validate topic: {topic} fail ({exc})") from None
        if not done:
            raise Refused(UNKNOWN, f"Clientid: {client_id} not found")
        return []

    # -- plugins ----------------------------------------------------------------------------------

    def plugin_list(call: Call) -> Any:
        on_node(call.params[0])
        rows = model.plugin_listing(service, lambda: stopped)
        return [
            {key: row[key] for key in ("name", "version", "description")} | {"active": row["running"]} for row in rows
        ]

    async def plugin_active(call: Call) -> Any:
        on_node(call.params[0])
        active = param(call.body, "active", bool)
        name = model.plugin_name(service, stopped, call.params[1])
        try:
            if active:
                await model.start_plugin(service, stopped, name)
            elif name == service.plugin_name_of(plugin):
                # Unloading the API cancels its requests: this one is answered first.
                after_response(lambda: service.start_soon(stop_later, f"api: unload {name}"))
            else:
                await model.stop_plugin(service, stopped, name)
        except model.ControlError as exc:
            codes = {"running": LOADED, "stopped": UNLOADED, "not_found": UNKNOWN if active else UNLOADED}
            raise Refused(codes.get(exc.kind, UNKNOWN), str(exc)) from None
        return []

    async def stop_later() -> None:
        await trio.sleep(ANSWER_GRACE)  # for the server to write and close
        await model.stop_plugin(service, stopped, service.plugin_name_of(plugin) or "api")

    # -- the dashboard's users (plugin.apps entries of kind "user") ------------------------------

    def user(name: str) -> App:
        app = plugin.apps.get(name)
        if app is None or app.kind != "user":
            raise Refused(NO_USER, f"User not found: {name!r}")
        return app

    def login(body: Mapping[str, Any], name: str, secret: str) -> tuple[str, str]:
        username, password = param(body, name, str), param(body, secret, str)
        if not username or not password:
            raise Refused(EMPTY_LOGIN, f"{name} and {secret} must not be empty")
        return username, password

    def users(call: Call) -> Any:
        rows = [{"username": app.name, "tags": app.desc or app.role} for app in plugin.apps if app.kind == "user"]
        return next((row for row in rows if row["username"] == call.params[0]), []) if call.params else rows

    def add_user(call: Call) -> Any:
        username, password = login(call.body, "username", "password")
        tags = param(call.body, "tags", str, "")
        if plugin.apps.get(username) is not None:
            raise Refused(USER_EXISTS, f"User already exist: {username!r}")
        role = tags if tags in ROLES else "administrator"  # EMQ 2's users could all do everything
        try:
            plugin.apps.create(username, kind="user", key=username, secret=password, role=role, desc=tags)
        except ValueError as exc:
            raise Refused(USER_EXISTS if "exists" in str(exc) else BAD_TYPE, str(exc)) from None
        return []

    def last_administrator(app: App) -> bool:
        return [a for a in plugin.apps if a.kind == "user" and a.role == "administrator"] == [app]

    def update_user(call: Call) -> Any:
        app, tags = user(call.params[0]), param(call.body, "tags", str)
        role = tags if tags in ROLES else app.role
        if role != "administrator" and last_administrator(app):
            raise Refused(UNDELETABLE, f"{app.name} is the last administrator and keeps that role")
        plugin.apps.update(app.name, desc=tags, role=role)
        return []

    def delete_user(call: Call) -> Any:
        if call.params[0] == "admin":
            raise Refused(UNDELETABLE, "admin cannot be deleted")
        app = user(call.params[0])
        if last_administrator(app):
            raise Refused(UNDELETABLE, f"{app.name} is the last administrator and cannot be deleted")
        plugin.apps.delete(app.name)
        return []

    async def auth(call: Call) -> Any:
        if await plugin.apps.authenticate(*login(call.body, "username", "password"), kind="user") is None:
            raise Refused(BAD_LOGIN, "Username or password error")
        return []

    async def change_pwd(call: Call) -> Any:
        body = call.body
        if "old_pwd" not in body and "oldpassword" in body:  # the names EMQ 2's documentation shows
            body = {"old_pwd": body.get("oldpassword"), "new_pwd": body.get("password")}
        old, new = login(body, "old_pwd", "new_pwd")
        app = user(call.params[0])
        if await plugin.apps.authenticate(app.key, old, kind="user") is None:
            raise Refused(OLD_PASSWORD, "OldPassword error")
        plugin.apps.update(app.name, secret=new)
        return []

    clients, client = sessions(online, client_row)
    session_list, session = sessions(every, session_row)
    table: list[tuple[str, str, Handler]] = [
        ("GET", _FIGURES, of_all),
        ("GET", _FIGURES + "/([^/]+)", of_node),
        ("GET", "nodes/([^/]+)/clients", clients),
        ("GET", "nodes/([^/]+)/clients/(.+?)", client),
        ("GET", "clients/(.+?)", client),
        ("DELETE", "clients/(.+?)", to_online_client),
        ("PUT", "clients/(.+?)/clean_acl_cache", to_online_client),
        ("GET", "nodes/([^/]+)/sessions", session_list),
        ("GET", "nodes/([^/]+)/sessions/(.+?)", session),
        ("GET", "sessions/(.+?)", session),
        ("GET", "nodes/([^/]+)/subscriptions", subscriptions),
        ("GET", "nodes/([^/]+)/subscriptions/(.+?)", client_subscriptions),
        ("GET", "subscriptions/(.+?)", client_subscriptions),
        ("GET", "routes", route_list),
        ("GET", "routes/(.+?)", route_list),
        ("POST", "mqtt/publish", publish),
        ("POST", "mqtt/(subscribe|unsubscribe)", subscribe),
        ("GET", "nodes/([^/]+)/plugins", plugin_list),
        ("PUT", "nodes/([^/]+)/plugins/([^/]+)", plugin_active),
        ("GET", "users", users),
        ("POST", "users", add_user),
        ("GET", "users/([^/]+)", users),
        ("PUT", "users/([^/]+)", update_user),
        ("DELETE", "users/([^/]+)", delete_user),
        ("POST", "auth", auth),
        ("PUT", "change_pwd/([^/]+)", change_pwd),
    ]
    access = {"mqtt/publish": "publish", "auth": "none"}  # the others: read for GET, write
    return [
        Route(method, re.compile(path + "/?", re.S), handler, _access(access, method, path))
        for method, path, handler in table
    ]


def _credentials() -> tuple[str, str]:
    return basic_credentials(request.headers.get("authorization")) or ("", "")


def _access(special: Mapping[str, str], method: str, path: str) -> str:
    """What a route needs: read for GET, write otherwise; users are added, changed and
    removed by a logged-in administrator user only (an API key must not make the users
    that manage keys on /api/v5)."""
    if path.startswith("users") and method != "GET":
        return "users"
    return special.get(path, "read" if method == "GET" else "write")


async def _refusal(plugin: Plugin, access: str) -> Response | None:
    """The 401 or 403 of a request its credentials do not allow."""
    if access == "none":
        return None
    user, password = _credentials()
    if not user or not password:
        body = {"code": EMPTY_LOGIN, "message": "HTTP Basic username:password (a user, or an API key and secret)"}
        return answer(body, 401, {"WWW-Authenticate": REALM})
    who = await plugin.apps.authenticate(user, password)  # a user or an EMQX key
    if who is None:
        return answer({"code": BAD_LOGIN, "message": "Username or password error"}, 401, {"WWW-Authenticate": REALM})
    if access == "users" and (who.kind != "user" or who.role != "administrator"):
        return answer({"code": UNKNOWN, "message": "users are managed by an administrator user, not a key"}, 403)
    if access != "users" and access not in ROLE_ACCESS[who.role]:
        return answer({"code": UNKNOWN, "message": f"the role {who.role} may not {request.method} {request.path}"}, 403)
    return None


async def _body() -> Mapping[str, Any]:
    raw = await request.get_data()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        raise Refused(NOT_JSON, "Body not json") from None
    if not isinstance(body, dict):
        raise Refused(NOT_JSON, "Body not json: an object {...} is needed")
    return body


def register(app: QuartTrio, plugin: Plugin, service: Service) -> None:
    """Add the routes of /api/v2 to the API's app."""
    table = routes(plugin, service)

    async def dispatch(rest: str) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        matches = [(route, found) for route in table if (found := route.pattern.fullmatch(rest))]
        chosen = next(((route, found) for route, found in matches if route.method == method), None)
        if chosen is None:
            status, what = (405, f"{request.method} is not allowed here") if matches else (404, "no such path")
            return answer({"code": UNKNOWN, "message": f"{what}: {request.path}"}, status)
        route, found = chosen
        refused = await _refusal(plugin, route.access)
        if refused is not None:
            return refused
        try:
            body = await _body() if method in ("POST", "PUT") else {}
            result = route.handler(Call(method, found.groups(), request.args, body))
            result = await result if inspect.isawaitable(result) else result
        except Refused as exc:
            return answer({"code": exc.code, "message": str(exc)})
        except OSError as exc:  # the users file could not be written
            return answer({"code": UNKNOWN, "message": f"unknown error: {exc}"})
        return answer({"code": 0, "result": result})

    methods = ["GET", "HEAD", "POST", "PUT", "DELETE"]
    app.add_url_rule(PREFIX + "/<path:rest>", view_func=dispatch, methods=methods, endpoint="emq v2")
