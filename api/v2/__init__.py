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
a 404, a path's other method a 405, and a change of the users that cannot be saved (or
that the store failed to commit: in force, the store retries) a 503 (code 102), each
with that JSON body.

Here: the route table, the credentials' checks and the dispatch; the handlers are in
``nodes`` (figures, plugins), ``clients`` (clients, sessions, subscriptions, routes,
publish) and ``users``, over ``envelope`` (codes, ``Refused``, ``Call``, pages).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
from quart import Response, request
from quart_trio import QuartTrio

from ternmq.kernel import Service

from ..apps import basic_credentials
from ..v5 import ROLE_ACCESS
from .clients import Clients
from .envelope import BAD_LOGIN, EMPTY_LOGIN, NOT_JSON, UNKNOWN, Call, Handler, Refused, answer
from .nodes import FIGURE_PATHS, Nodes
from .users import Users

if TYPE_CHECKING:
    from .. import Plugin

PREFIX = "/api/v2"
REALM = 'Basic realm="ternmq"'


@attrs.frozen
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    access: str  # read, write, publish (ROLE_ACCESS), or none (no login)


def routes(plugin: Plugin, service: Service) -> list[Route]:
    nodes, clients, users = Nodes(plugin, service), Clients(plugin, service), Users(plugin, service)
    table: list[tuple[str, str, Handler]] = [
        ("GET", FIGURE_PATHS, nodes.of_all),
        ("GET", FIGURE_PATHS + "/([^/]+)", nodes.of_node),
        ("GET", "nodes/([^/]+)/clients", clients.clients),
        ("GET", "nodes/([^/]+)/clients/(.+?)", clients.client),
        ("GET", "clients/(.+?)", clients.client),
        ("DELETE", "clients/(.+?)", clients.to_online_client),
        ("PUT", "clients/(.+?)/clean_acl_cache", clients.to_online_client),
        ("GET", "nodes/([^/]+)/sessions", clients.session_list),
        ("GET", "nodes/([^/]+)/sessions/(.+?)", clients.session),
        ("GET", "sessions/(.+?)", clients.session),
        ("GET", "nodes/([^/]+)/subscriptions", clients.subscriptions),
        ("GET", "nodes/([^/]+)/subscriptions/(.+?)", clients.client_subscriptions),
        ("GET", "subscriptions/(.+?)", clients.client_subscriptions),
        ("GET", "routes", clients.route_list),
        ("GET", "routes/(.+?)", clients.route_list),
        ("POST", "mqtt/publish", clients.publish),
        ("POST", "mqtt/(subscribe|unsubscribe)", clients.subscribe),
        ("GET", "nodes/([^/]+)/plugins", nodes.plugin_list),
        ("PUT", "nodes/([^/]+)/plugins/([^/]+)", nodes.plugin_active),
        ("GET", "users", users.users),
        ("POST", "users", users.add_user),
        ("GET", "users/([^/]+)", users.users),
        ("PUT", "users/([^/]+)", users.update_user),
        ("DELETE", "users/([^/]+)", users.delete_user),
        ("POST", "auth", users.auth),
        ("PUT", "change_pwd/([^/]+)", users.change_pwd),
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
            return answer({"code": exc.code, "message": str(exc)}, exc.status)
        except OSError as exc:  # the users file could not be written
            return answer({"code": UNKNOWN, "message": f"unknown error: {exc}"})
        return answer({"code": 0, "result": result})

    methods = ["GET", "HEAD", "POST", "PUT", "DELETE"]
    app.add_url_rule(PREFIX + "/<path:rest>", view_func=dispatch, methods=methods, endpoint="emq v2")
