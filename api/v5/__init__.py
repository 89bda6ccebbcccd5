"""EMQX 5's REST API under ``/api/v5``, for scripts and dashboards written against EMQX.

Every operation is declared once (:mod:`ternmq.api.operations`): its route, the schemas
its query and body are checked against, and its answers, from which
``/api-docs/swagger.json`` is written; ``/api-docs/index.html`` is Swagger UI, served
from the swagger-ui-bundle package (no CDN).

Requests carry HTTP Basic ``api_key:api_secret`` (keys made by ``ternmq-admin api-key
create --emqx`` or listed in the bootstrap file) or a bearer token from ``POST /login``
(a user of ``ternmq-admin admins add``). A key's role decides what it may do: an
administrator anything but managing keys, a viewer only GET, a publisher only publish;
keys are managed with a token. Errors are ``{"code", "message", "reason"}`` with EMQX's
codes and status codes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from quart import Response, redirect, request, send_from_directory
from quart_trio import QuartTrio

from ternmq import __version__
from ternmq.kernel import Service

from ..apps import App, basic_credentials
from ..operations import BadRequest, Operation, body_of, openapi_document, query_of
from . import schemas

if TYPE_CHECKING:
    from .. import Plugin

PREFIX = "/api/v5"
REALM = 'Basic realm="ternmq"'
# What each role may do (an operation's ``access``); "keys" only an administrator's token.
ROLE_ACCESS = {
    "administrator": frozenset({"read", "write", "publish"}),
    "viewer": frozenset({"read"}),
    "publisher": frozenset({"publish"}),
}
ERRORS: dict[int, Any] = {400: schemas.ERROR, 401: schemas.ERROR, 403: schemas.ERROR}


@attrs.frozen
class Call:
    """One request, checked: its path parameters, query (typed) and JSON body."""

    params: dict[str, str]
    query: dict[str, Any]
    body: Any
    who: App | None


def answer(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def no_content() -> Response:
    return Response("", status=204)


def fail(status: int, code: str, message: str) -> Response:
    """EMQX's error body: it sends ``message``, its documentation shows ``reason``."""
    headers = {"WWW-Authenticate": REALM} if status == 401 else {}
    body = {"code": code, "message": message, "reason": message}
    return Response(json.dumps(body), status=status, headers=headers, content_type="application/json")


def declare(
    method: str,
    path: str,
    handler: Callable[[Call], Any],
    summary: str,
    tag: str,
    *,
    query: dict[str, Any] | None = None,
    required_query: Sequence[str] = (),
    body: Any = None,
    responses: dict[int, Any],
    access: str | None = None,
) -> Operation:
    """An operation with EMQX's error answers added (401/403 unless open to all, 400
    where it takes input, 404 where it names an object)."""
    access = access or ("read" if method == "GET" else "write")
    answers = dict(responses)
    if access != "none":
        answers |= {401: schemas.ERROR, 403: schemas.ERROR}
    if query or body is not None or "{" in path:
        answers.setdefault(400, schemas.ERROR)
    if "{" in path:
        answers.setdefault(404, schemas.ERROR)
    return Operation(method, path, handler, summary, tag, query or {}, tuple(required_query), body, answers, access)


async def authenticated(plugin: Plugin) -> tuple[App | None, bool]:
    """Who the request is from, and whether by a bearer token (a logged-in user)."""
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return plugin.sessions.user(token.strip()), True
    credentials = basic_credentials(authorization)
    if credentials is None:
        return None, False
    return await plugin.apps.authenticate(*credentials, kind="key"), False


async def _refusal(plugin: Plugin, operation: Operation) -> tuple[Response | None, App | None]:
    if operation.access == "none":
        return None, None
    who, by_token = await authenticated(plugin)
    if who is None:
        return fail(401, "BAD_API_KEY_OR_SECRET", "an API key and secret (HTTP Basic) or a login token is needed"), None
    if operation.access == "keys":
        if not by_token:
            return fail(403, "API_KEY_NOT_ALLOW", "API keys are managed by a logged-in user, not with a key"), None
        if who.role != "administrator":
            return fail(403, "FORBIDDEN", f"a {who.role} cannot manage API keys"), None
    elif operation.access not in ROLE_ACCESS[who.role]:
        return fail(403, "API_KEY_NOT_ALLOW", f"the role {who.role} may not {request.method} {request.path}"), None
    return None, who


def _view(plugin: Plugin, operation: Operation) -> Callable[..., Any]:
    async def view(**params: str) -> Response:
        refused, who = await _refusal(plugin, operation)
        if refused is not None:
            return refused
        try:
            call = Call(params, query_of(operation), await body_of(operation), who)
        except BadRequest as exc:
            return fail(400, "BAD_REQUEST", str(exc))
        response: Response = await operation.handler(call)
        return response

    view.__name__ = f"v5_{operation.method.lower()}_{operation.route}"
    return view


def operations(plugin: Plugin, service: Service) -> list[Operation]:
    from . import clients, node

    return [*clients.operations(plugin, service), *node.operations(plugin, service)]


def register(app: QuartTrio, plugin: Plugin, service: Service) -> None:
    """Add the routes of /api/v5 and /api-docs to the API's app."""
    declared = operations(plugin, service)
    for operation in declared:
        app.add_url_rule(
            PREFIX + operation.route,
            view_func=_view(plugin, operation),
            methods=[operation.method],
            endpoint=f"v5 {operation.method} {operation.route}",
        )
    document = openapi_document(
        declared,
        title="ternmq: EMQX 5's REST API",
        version=__version__,
        server=PREFIX,
        description="EMQX 5's /api/v5 as ternmq serves it (docs/api.md).",
    )
    from swagger_ui_bundle import swagger_ui_path

    assets = Path(swagger_ui_path)

    async def swagger_json() -> Response:
        return answer(document)

    async def swagger_index() -> Response:
        response: Response = await send_from_directory(assets, "index.html")
        return response

    async def swagger_initializer() -> Response:
        # The bundle's own initializer shows the Swagger demo; this one shows ours.
        script = (
            "window.onload = function () { window.ui = SwaggerUIBundle({url: '/api-docs/swagger.json', "
            "dom_id: '#swagger-ui', deepLinking: true, presets: [SwaggerUIBundle.presets.apis, "
            "SwaggerUIStandalonePreset], layout: 'StandaloneLayout'}); };"
        )
        return Response(script, content_type="application/javascript")

    async def swagger_asset(name: str) -> Response:
        response: Response = await send_from_directory(assets, name)
        return response

    async def swagger_home() -> Any:
        return redirect("/api-docs/index.html")

    app.add_url_rule("/api-docs/swagger.json", view_func=swagger_json, methods=["GET"])
    app.add_url_rule("/api-docs/index.html", view_func=swagger_index, methods=["GET"])
    app.add_url_rule("/api-docs/swagger-initializer.js", view_func=swagger_initializer, methods=["GET"])
    app.add_url_rule("/api-docs", view_func=swagger_home, methods=["GET"])
    app.add_url_rule("/api-docs/<name>", view_func=swagger_asset, methods=["GET"])
