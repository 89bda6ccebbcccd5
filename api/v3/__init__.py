"""EMQX 3's REST API under ``/api/v3``, in the shapes emqx-management 3.2 answers.

Requests carry HTTP Basic ``app_id:secret`` of an app (``ternmq-admin app create``); its
role limits it as on /api/v5 (a viewer GET only, a publisher publish only). ``GET
/api/v3/`` lists the endpoints. Answers are ``{"code": 0, "data": ..., "meta": {page,
limit, count}}``; errors are HTTP 200 with ``{"code": 1xx, "message": ...}`` (EMQX 3's
numeric codes), except missing or wrong credentials (401), a role's refusal (403), and
an unknown path or node (404), each with a JSON body. Lists page with ``_page`` and
``_limit`` (default and most 10000). Parameters come from the query and a JSON body, the
query first. Times are local ``YYYY-MM-DD HH:MM:SS``; no user name is ``"undefined"``.

Here are the endpoint table, the credentials, the answers' envelope and the dispatch; the
handlers are in :mod:`.node` (brokers, nodes, figures, plugins) and :mod:`.clients`
(connections, sessions, subscriptions, routes, publish and subscribe, banned).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from quart import Response, request
from quart_trio import QuartTrio

from ternmq.kernel import Service

from .. import model
from ..apps import App, basic_credentials
from ..v5 import ROLE_ACCESS

if TYPE_CHECKING:
    from .. import Plugin

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


# A handler of one endpoint, by ENDPOINTS' first column (node.py's and clients.py's).
Handler = Callable[[Call], Awaitable[dict[str, Any]]]


def answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers or {}, content_type="application/json")


def ok(data: Any = None, meta: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": 0}
    if data is not None:
        body["data"] = data
    if meta is not None:
        body["meta"] = meta
    return body


async def done(data: Any) -> dict[str, Any]:
    return ok(data)


async def done_page(page: model.Page, item: Callable[[Any], Any]) -> dict[str, Any]:
    return ok([item(entry) for entry in page.items], {"page": page.page, "limit": page.limit, "count": page.count})


def register(app: QuartTrio, plugin: Plugin, service: Service) -> None:
    """Add the routes of /api/v3 to the API's app."""
    from .clients import ClientHandlers
    from .node import NodeHandlers

    node = service.node_name
    handlers = NodeHandlers(plugin, service).table() | ClientHandlers(service).table()

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
