"""The HTTP routes of the management API: VerneMQ's ``/api/v1`` mapping of the admin
command tree, ``/health``, and Prometheus ``/metrics``; each behind its scope's key
unless its module's auth mode is ``noauth``."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ternmq.kernel import RESERVED_API_PATHS, CommandError, Service, Text

from . import httppub, vmq_v2
from .apps import basic_credentials
from .commands import NotSaved
from .operations import register_converters
from .prometheus import exposition
from .status import Rates, page, status_data

if TYPE_CHECKING:
    from . import Plugin

log = logging.getLogger("ternmq.api")

REALM = 'Basic realm="ternmq"'
CORS_HEADERS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "HEAD, GET",
    "access-control-allow-headers": "content-type, authorization",
    "access-control-max-age": "1728000",
}
# Seconds between answering a request that unloads the API and unloading it.
ANSWER_GRACE = 0.2
# Commands that may unload the plugin serving the request: answered first, run after.
_PLUGIN_COMMANDS = (("plugin", "disable"), ("plugin", "reload"))
#: VerneMQ's short paths: /api/v1/sessions is session show, and so on.
ALIASES: dict[tuple[str, ...], list[str]] = {
    ("sessions",): ["session", "show"],
    ("listeners",): ["listener", "show"],
    ("plugins",): ["plugin", "show"],
    # VerneMQ maps /cluster to a "cluster status" it no longer has; cluster show is meant.
    ("cluster",): ["cluster", "show"],
}
Handler = Callable[..., Awaitable[Response]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers or {}, content_type="application/json")


def error(status: int, message: str, **extra: Any) -> Response:
    """A 4xx (or 5xx) with a JSON body (what every refused or failed request gets)."""
    headers = {"WWW-Authenticate": REALM} if status == 401 else None
    return json_response({"type": "error", "error": message, **extra}, status, headers)


_AFTER_RESPONSE = "ternmq.after_response"


def after_response(callback: Callable[[], None]) -> None:
    """Call ``callback`` once this request's response has been sent (AnswerFirst)."""
    request.scope[_AFTER_RESPONSE].append(callback)  # type: ignore[literal-required]


def run_after_answer(service: Service, action: Callable[[], Awaitable[object]], name: str) -> None:
    """Run ``action`` once this request is answered, and the server had a moment to
    write and close: how a request unloads the API serving it (unloading cancels the
    API's requests, this one among them). Its failure is then only logged."""

    async def later() -> None:
        await trio.sleep(ANSWER_GRACE)
        await action()

    after_response(lambda: service.start_soon(later, name))


class AnswerFirst:
    """ASGI wrapper: runs the callbacks a request registered with ``after_response`` once
    the whole body of its response has been handed to the server."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        callbacks: list[Callable[[], None]] = []
        scope[_AFTER_RESPONSE] = callbacks

        async def sending(message: dict[str, Any]) -> None:
            last = message["type"] == "http.response.body" and not message.get("more_body")
            if last and not message.get("body"):
                # Quart ends a body with an empty last message; hypercorn may not return
                # from it until the connection is used again. The bytes went before it.
                for callback in callbacks:
                    callback()
                callbacks.clear()
            await send(message)
            if last:
                for callback in callbacks:
                    callback()

        await self.app(scope, receive, sending)


def presented_key() -> str | None:
    """The API key of the request: the Basic-auth user name (password empty), else the
    ``x-api-key`` header (VerneMQ's two forms)."""
    authorization = request.headers.get("authorization")
    if authorization is None:
        return request.headers.get("x-api-key")
    credentials = basic_credentials(authorization)
    return None if credentials is None else credentials[0]


def build_app(plugin: Plugin, service: Service) -> QuartTrio:
    app = QuartTrio("ternmq.api")
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    register_converters(app)

    def refused(scope: str) -> Response | None:
        """The 401 of a request without a live key of ``scope`` (where it needs one)."""
        if plugin.config.auth_mode(scope) == "apikey":
            key = presented_key()
            if key is None:
                return error(401, f"an API key of scope {scope} is needed (Basic user name or x-api-key)")
            if not plugin.keys.allows(key, scope):
                return error(401, f"no such API key in scope {scope}, or it expired")
        return None

    def guarded(scope: str, handler: Handler) -> Handler:
        async def check(*args: Any, **kwargs: Any) -> Response:
            return refused(scope) or await handler(*args, **kwargs)

        check.__name__ = f"{scope}_{handler.__name__}"
        return check

    async def admin_command(command: str) -> Response:
        words = [word for word in command.split("/") if word]
        words = ALIASES.get(tuple(words), words)
        argv = [*words, *query_arguments()]
        try:
            path, keys = service.parse_command(argv)
        except CommandError as exc:
            return error(400, str(exc), usage=exc.usage)
        if path in _PLUGIN_COMMANDS and keys.get("name") == service.plugin_name_of(plugin):
            run_after_answer(service, lambda: service.run_command(argv), f"api: {' '.join(argv)}")
            return json_response(Text("Done").to_json(), headers={"Connection": "close"})
        try:
            result = await service.run_command(argv)
        except NotSaved as exc:  # made, but the store failed to commit it: not the request's fault
            return error(503, str(exc))
        except CommandError as exc:
            return error(400, str(exc), usage=exc.usage)
        return json_response(result.to_json())

    async def metrics() -> Response:
        text, content_type = exposition(service, plugin.config.prometheus_namespace)
        return Response(text, content_type=content_type)

    async def health() -> Response:
        down = [info.name for info in service.listeners() if info.status != "running"]
        if down:
            reasons = [f"listener {name} is not running" for name in down]
            return json_response({"status": "DOWN", "reasons": reasons}, 503)
        return json_response({"status": "OK"})

    async def health_ping() -> Response:
        return json_response({"status": "OK"})

    async def health_listeners() -> Response:
        down = [info.name for info in service.listeners() if info.status != "running"]
        if down:
            return json_response({"status": "DOWN", "reason": f"Listeners are not ready: {', '.join(down)}"}, 503)
        return json_response({"status": "OK"})

    def own_rule_with_another_method() -> bool:
        """Whether one of the API's own rules (not this catch-all) takes the path with
        another method: then the answer is a 405, else a 404."""
        adapter = app.url_map.bind("")
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            try:
                endpoint, _ = adapter.match(request.path, method=method)
            except (NotFound, MethodNotAllowed):
                continue
            if endpoint != "plugin_route":
                return True
        return False

    async def plugin_route(rest: str) -> Response:
        # Routes plugins registered (register_api_routes), looked up at each request so
        # that a plugin loaded or unloaded while the API serves is seen at once.
        method = "GET" if request.method == "HEAD" else request.method
        route = service.api_route(method, "/" + rest)
        if route is None:
            if request.path.startswith(RESERVED_API_PATHS) and own_rule_with_another_method():
                return await not_allowed(MethodNotAllowed())
            return await not_found(NotFound())
        denied = refused(route.scope)
        if denied is not None:
            return denied
        answer = await app.make_response(await route.handler())
        assert isinstance(answer, Response)  # quart makes its own responses from a view's value
        return answer

    async def cors(command: str = "") -> Response:
        # VerneMQ's answer to a browser's preflight (no key needed: it reveals nothing).
        return Response("", status=200, headers=CORS_HEADERS)

    rates = Rates()

    async def status_json() -> Response:
        return json_response(status_data(service, rates))

    async def status_page() -> Response:
        return Response(page(plugin.config.status_refresh), content_type="text/html; charset=utf-8")

    async def http_publish() -> Response:
        return await httppub.publish(plugin, service)

    async def vmq_v2_client() -> Response:
        return json_response(*vmq_v2.client(service))

    async def vmq_v2_disconnect() -> Response:
        if request.method == "HEAD":  # werkzeug routes HEAD to every GET rule
            return error(405, "HEAD is not allowed here: it would disconnect")
        return json_response(*vmq_v2.disconnect(service))

    app.add_url_rule("/api/v2/client", view_func=guarded("api2", vmq_v2_client), methods=["GET", "HEAD"])
    # GET only, as VerneMQ: a HEAD (a link checker's, say) must not disconnect anyone.
    app.add_url_rule("/api/v2/disconnect", view_func=guarded("api2", vmq_v2_disconnect), methods=["GET"])
    app.add_url_rule("/restmqtt/api/v1/publish", view_func=guarded("httppub", http_publish), methods=["POST", "PUT"])
    methods = ["GET", "HEAD"]
    app.add_url_rule("/api/v1/<path:command>", view_func=guarded("mgmt", admin_command), methods=methods)
    app.add_url_rule("/api/v1/<path:command>", view_func=cors, methods=["OPTIONS"], endpoint="cors")
    app.add_url_rule("/metrics", view_func=guarded("metrics", metrics), methods=methods)
    app.add_url_rule("/status.json", view_func=guarded("status", status_json), methods=methods)
    app.add_url_rule("/status", view_func=guarded("status", status_page), methods=methods)
    app.add_url_rule("/health", view_func=guarded("health", health), methods=methods)
    app.add_url_rule("/health/ping", view_func=guarded("health", health_ping), methods=methods)
    app.add_url_rule("/health/listeners", view_func=guarded("health", health_listeners), methods=methods)

    from . import v2, v3, v5

    v5.register(app, plugin, service)
    v3.register(app, plugin, service)
    v2.register(app, plugin, service)

    @app.errorhandler(404)
    async def not_found(exc: Exception) -> Response:
        if request.path.startswith(v5.PREFIX + "/"):  # in the dialect the path asked for
            return v5.fail(404, "NOT_FOUND", f"no such path: {request.path}")
        return error(404, f"no such path: {request.path}")

    app.add_url_rule("/<path:rest>", view_func=plugin_route, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])

    @app.errorhandler(500)
    async def failed(exc: Exception) -> Response:
        log.error("API request %s %s failed: %r", request.method, request.path, getattr(exc, "original_exception", exc))
        if request.path.startswith(v5.PREFIX + "/"):
            return v5.fail(500, "INTERNAL_ERROR", "the request failed; the broker's log says why")
        return error(500, "the request failed; the broker's log says why")

    @app.errorhandler(405)
    async def not_allowed(exc: Exception) -> Response:
        if request.path.startswith(v5.PREFIX + "/"):
            return v5.fail(405, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed here")
        return error(405, f"{request.method} is not allowed here")

    return app


def query_arguments() -> list[str]:
    """VerneMQ's mapping: ``?name=value`` is ``name=value``, ``&--flag`` and
    ``&--flag=value`` are flags. ``--format`` is the API's own (always JSON)."""
    argv: list[str] = []
    for item in request.query_string.decode("utf-8", "replace").split("&"):
        if not item:
            continue
        name, has_value, value = (unquote_plus(part) for part in _partition(item))
        if name.startswith("--"):
            if name != "--format":  # the API always answers JSON
                argv.append(f"{name}={value}" if has_value else name)
        else:
            argv.append(f"{name}={value}")
    return argv


def _partition(item: str) -> tuple[str, str, str]:
    return item.partition("=")
