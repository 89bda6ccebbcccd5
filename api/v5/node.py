"""EMQX 5's plugins, banned list, API keys, login, and the node's figures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quart import Response

from ternmq import __version__
from ternmq.kernel import ConfigError, PluginError, Service

from .. import model
from ..apps import App
from ..keys import YEAR_10000, NotCommitted, parse_moment
from ..model import rfc3339
from ..operations import TEXT, Operation, contents
from ..prometheus import exposition
from . import Call, answer, declare, fail, no_content
from . import schemas as s
from .bodies import page_body, paging

if TYPE_CHECKING:
    from .. import Plugin


def parse_time(text: str) -> float | None:
    """An RFC 3339 time (UTC unless it names its offset) as Unix time; ``infinity`` is
    None (never). ValueError for another form."""
    if text in ("infinity", "undefined"):
        return None
    at = parse_moment(text)
    if not 0 < at < YEAR_10000:  # beyond, a time could not be written back
        raise ValueError(f"{text} is not between 1970 and 9999")
    return at


def key_body(app: App, secret: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": app.name,
        "api_key": app.key,
        "desc": app.desc,
        "enable": app.enable,
        "expired_at": rfc3339(app.expires_at) if app.expires_at is not None else "infinity",
        "expired": app.expired(),
        "created_at": rfc3339(app.created_at),
        "role": app.role,
    }
    if secret is not None:
        body["api_secret"] = secret  # shown once, in the answer that made it
    return body


def operations(plugin: Plugin, service: Service) -> list[Operation]:
    node = service.node_name

    # -- plugins (EMQX's start and stop are our load and unload) --------------------------

    stopped = plugin.stopped_plugins

    def plugin_body(name: str, version: str, running: bool, description: str) -> dict[str, Any]:
        return {
            "name": name,
            "rel_vsn": version,
            "description": description,
            "running_status": [{"node": node, "status": "running" if running else "stopped"}],
        }

    async def list_plugins(call: Call) -> Any:
        rows = model.plugin_listing(service, lambda: stopped)
        return answer([plugin_body(r["name"], r["version"], r["running"], r["description"]) for r in rows])

    def refused(exc: model.ControlError, bad: str = "BAD_REQUEST") -> Response:
        if exc.kind in ("stopped", "running"):  # EMQX answers a repeated start or stop alike
            return no_content()
        if exc.kind == "not_found":
            return fail(404, "NOT_FOUND", str(exc))
        if exc.kind == "unavailable":
            return fail(503, "SERVICE_UNAVAILABLE", str(exc))
        if exc.kind == "exists":
            return fail(400, "ALREADY_EXISTS", str(exc))
        return fail(400, bad, str(exc))

    async def plugin_action(call: Call) -> Any:
        name, action = model.plugin_name(service, stopped, call.params["name"]), call.params["action"]
        if action not in ("start", "stop"):
            return fail(400, "BAD_REQUEST", f"the action is start or stop, not {action!r}")
        try:
            if action == "start":
                await model.start_plugin(service, stopped, name)
            elif name == service.plugin_name_of(plugin):
                # Stopping the API from its own request: answered first (routes.py).
                later_stop(name)
            else:
                await model.stop_plugin(service, stopped, name)
        except model.ControlError as exc:
            return refused(exc, "BAD_CONFIG")
        return no_content()

    def later_stop(name: str) -> None:
        from ..routes import run_after_answer

        run_after_answer(service, lambda: model.stop_plugin(service, stopped, name), f"api: stop {name}")

    async def get_plugin_config(call: Call) -> Any:
        name = model.plugin_name(service, stopped, call.params["name"])
        info = next((i for i in service.plugins() if i.name == name), None)
        if info is not None:
            return answer(dict(info.table or {}))
        if name in stopped:
            return answer(stopped[name].table)
        return fail(404, "NOT_FOUND", f"no plugin {name!r}")

    async def put_plugin_config(call: Call) -> Any:
        name = model.plugin_name(service, stopped, call.params["name"])
        if name == service.plugin_name_of(plugin):
            return fail(400, "BAD_CONFIG", "the API cannot reconfigure itself; edit its table and reload it")
        if not any(info.name == name for info in service.plugins()):
            if name not in stopped:
                return fail(404, "NOT_FOUND", f"no plugin {name!r}")
            stopped[name].table = dict(call.body)  # used when it starts
            return no_content()
        try:
            # the new instance is built and started before the old one goes; when it
            # cannot be, the old one stays
            await service.reload_plugin(name, call.body)
        except (PluginError, ConfigError) as exc:
            return fail(400, "BAD_CONFIG", str(exc))
        return no_content()

    # -- banned (the banned plugin's admin commands) ----------------------------------------

    async def list_banned(call: Call) -> Any:
        try:
            rows = await model.bans(service)
        except model.ControlError as exc:
            return refused(exc)
        q = call.query
        kinds = ("clientid", "username", "peerhost")
        rows = [
            row
            for row in rows
            if all(q.get(kind) is None or (row["as"] == kind and row["who"] == q[kind]) for kind in kinds)
            and all(
                q.get(f"like_{kind}") is None or (row["as"] == kind and q[f"like_{kind}"] in row["who"])
                for kind in kinds
            )
        ]
        return answer(page_body(model.paged(rows, *paging(call)), dict))

    async def add_ban(call: Call) -> Any:
        body = call.body
        details = {key: body[key] for key in ("by", "reason", "until") if key in body and body[key] != "infinity"}
        try:
            return answer(await model.ban(service, body["as"], body["who"], **details))
        except model.ControlError as exc:
            return refused(exc)

    async def clear_banned(call: Call) -> Any:
        try:
            await model.clear_bans(service)
        except model.ControlError as exc:
            return refused(exc)
        return no_content()

    async def delete_ban(call: Call) -> Any:
        try:
            await model.unban(service, call.params["as"], call.params["who"])
        except model.ControlError as exc:
            return refused(exc)
        return no_content()

    # -- API keys (a logged-in user's) and login ----------------------------------------------

    async def list_keys(call: Call) -> Any:
        return answer([key_body(app) for app in plugin.apps if app.kind == "key"])

    def unsaved(exc: OSError) -> Response:
        """The 503 of a change that cannot be kept (no store keeps the keys now)."""
        return fail(503, "SERVICE_UNAVAILABLE", f"the API keys cannot be saved: {exc}")

    async def saved(response: Response, made: str = "") -> Response:
        """``response`` once the change is durable; the 503 of a change the store failed
        to commit (in force all the same: the store retries), ``made`` first."""
        try:
            await plugin.apps.commit()
        except NotCommitted as exc:
            return fail(503, "SERVICE_UNAVAILABLE", f"{made}{exc}")
        return response

    def expiry(body: dict[str, Any]) -> float | None | str:
        try:
            return parse_time(body["expired_at"]) if "expired_at" in body else None
        except ValueError:
            return f"expired_at must be an RFC 3339 time or infinity, not {body['expired_at']!r}"

    async def create_key(call: Call) -> Any:
        body = call.body
        expires_at = expiry(body)
        if isinstance(expires_at, str):
            return fail(400, "BAD_REQUEST", expires_at)
        try:
            app, secret = plugin.apps.create(
                body["name"],
                role=body.get("role", "administrator"),
                desc=body.get("desc", ""),
                enable=body.get("enable", True),
                expires_at=expires_at,
            )
        except ValueError as exc:
            code = "ALREADY_EXISTS" if "exists" in str(exc) else "BAD_REQUEST"
            return fail(400, code, str(exc))
        except OSError as exc:
            return unsaved(exc)
        # (a secret is not put in an error: an error's text is often logged)
        made = f"the key {app.name!r} was made (its secret is not shown in an error): "
        return await saved(answer(key_body(app, secret)), made)

    def key_named(call: Call) -> App | None:
        app = plugin.apps.get(call.params["name"])
        return app if app is not None and app.kind == "key" else None

    async def get_key(call: Call) -> Any:
        app = key_named(call)
        return fail(404, "NOT_FOUND", "no such API key") if app is None else answer(key_body(app))

    async def change_key(call: Call) -> Any:
        app = key_named(call)
        if app is None:
            return fail(404, "NOT_FOUND", "no such API key")
        changes: dict[str, Any] = {k: call.body[k] for k in ("desc", "enable", "role") if k in call.body}
        if "expired_at" in call.body:
            expires_at = expiry(call.body)
            if isinstance(expires_at, str):
                return fail(400, "BAD_REQUEST", expires_at)
            changes["expires_at"] = expires_at
        try:
            updated = plugin.apps.update(app.name, **changes)
        except OSError as exc:
            return unsaved(exc)
        return await saved(answer(key_body(updated)))

    async def delete_key(call: Call) -> Any:
        if key_named(call) is None:
            return fail(404, "NOT_FOUND", "no such API key")
        try:
            plugin.apps.delete(call.params["name"])
        except OSError as exc:
            return unsaved(exc)
        return await saved(no_content())

    async def login(call: Call) -> Any:
        user = await plugin.apps.authenticate(call.body["username"], call.body["password"], kind="user")
        if user is None:
            return fail(401, "BAD_USERNAME_OR_PWD", "wrong user name or password")
        token = plugin.sessions.open(user)
        return answer({"token": token, "version": __version__, "license": {"edition": "opensource"}})

    # -- the node ------------------------------------------------------------------------------

    async def stats(call: Call) -> Any:
        figures = model.stats(service)
        return answer(figures if call.query.get("aggregate", True) else [{"node": node, **figures}])

    async def metrics(call: Call) -> Any:
        figures = model.metrics(service)
        return answer(figures if call.query.get("aggregate", True) else [{"node": node, **figures}])

    async def other_nodes() -> list[dict[str, Any]]:
        # The cluster's other nodes (a cluster plugin's cluster_nodes): what every node
        # knows of them, their name and whether they run.
        return [
            {"node": info.name, "node_status": "running" if info.running else "stopped"}
            for info in await service.nodes()
            if info.name != node
        ]

    async def nodes(call: Call) -> Any:
        return answer([model.node(service), *await other_nodes()])

    async def one_node(call: Call) -> Any:
        if call.params["node"] == node:
            return answer(model.node(service))
        for other in await other_nodes():
            if other["node"] == call.params["node"]:
                return answer(other)
        return fail(404, "NOT_FOUND", f"no node {call.params['node']!r}")

    async def listeners(call: Call) -> Any:
        return answer(
            [
                {
                    "id": f"{info.type}:{info.name}",
                    "type": info.type,
                    "name": info.name,
                    "bind": f"{info.address}:{info.port}",
                    "running": info.status == "running",
                    "enable": True,
                    "current_connections": info.active_connections,
                    "max_connections": info.max_connections,
                    "mountpoint": info.mountpoint,
                }
                for info in service.listeners()
            ]
        )

    async def prometheus(call: Call) -> Any:
        text, content_type = exposition(service, plugin.config.prometheus_namespace)
        return Response(text, content_type=content_type)

    async def status(call: Call) -> Any:
        if call.query.get("format") == "json":
            return answer(
                {"rel_vsn": __version__, "node_name": node, "broker_status": "started", "app_status": "running"}
            )
        return Response(f"Node {node} is started\nternmq is running", content_type="text/plain")

    aggregate = {"aggregate": s.BOOLEAN}
    return [
        declare("GET", "/plugins", list_plugins, "List plugins", "Plugins", responses={200: s.array(s.PLUGIN)}),
        declare(
            "PUT",
            "/plugins/{name}/{action}",
            plugin_action,
            "Start (load) or stop (unload) a plugin",
            "Plugins",
            responses={204: None},
        ),
        declare(  # an administrator's: a table may hold passwords
            "GET",
            "/plugins/{name}/config",
            get_plugin_config,
            "A plugin's table",
            "Plugins",
            responses={200: s.PLUGIN_CONFIG},
            access="write",
        ),
        declare(
            "PUT",
            "/plugins/{name}/config",
            put_plugin_config,
            "Load a plugin again with a new table (the old one stays if it cannot load)",
            "Plugins",
            body=s.PLUGIN_CONFIG,
            responses={204: None},
        ),
        declare(
            "GET",
            "/banned",
            list_banned,
            "List bans",
            "Banned",
            query={
                **s.PAGING,
                **{kind: s.STRING for kind in ("clientid", "username", "peerhost")},
                **{f"like_{kind}": s.STRING for kind in ("clientid", "username", "peerhost")},
            },
            responses={200: s.page_of(s.BAN), 503: s.ERROR},
        ),
        declare("POST", "/banned", add_ban, "Ban", "Banned", body=s.NEW_BAN, responses={200: s.BAN, 503: s.ERROR}),
        declare("DELETE", "/banned", clear_banned, "Lift every ban", "Banned", responses={204: None, 503: s.ERROR}),
        declare(
            "DELETE", "/banned/{as}/{who}", delete_ban, "Lift a ban", "Banned", responses={204: None, 503: s.ERROR}
        ),
        declare(
            "GET",
            "/api_key",
            list_keys,
            "List API keys",
            "API keys",
            responses={200: s.array(s.API_KEY)},
            access="keys",
        ),
        declare(
            "POST",
            "/api_key",
            create_key,
            "Make an API key",
            "API keys",
            body=s.NEW_API_KEY,
            responses={200: s.API_KEY, 503: s.ERROR},
            access="keys",
        ),
        declare("GET", "/api_key/{name}", get_key, "An API key", "API keys", responses={200: s.API_KEY}, access="keys"),
        declare(
            "PUT",
            "/api_key/{name}",
            change_key,
            "Change an API key",
            "API keys",
            body=s.API_KEY_CHANGE,
            responses={200: s.API_KEY, 503: s.ERROR},
            access="keys",
        ),
        declare(
            "DELETE",
            "/api_key/{name}",
            delete_key,
            "Delete an API key",
            "API keys",
            responses={204: None, 503: s.ERROR},
            access="keys",
        ),
        declare(
            "POST",
            "/login",
            login,
            "Log in (a bearer token)",
            "Dashboard",
            body=s.LOGIN,
            responses={200: s.TOKEN, 401: s.ERROR},
            access="none",
        ),
        declare("GET", "/stats", stats, "The node's counts", "Metrics", query=aggregate, responses={200: {}}),
        declare("GET", "/metrics", metrics, "The node's metrics", "Metrics", query=aggregate, responses={200: {}}),
        declare("GET", "/nodes", nodes, "The nodes", "Nodes", responses={200: s.array(s.NODE)}),
        declare("GET", "/nodes/{node}", one_node, "A node", "Nodes", responses={200: s.NODE}),
        declare("GET", "/listeners", listeners, "The listeners", "Listeners", responses={200: s.array(s.LISTENER)}),
        declare("GET", "/prometheus/stats", prometheus, "Prometheus' text format", "Metrics", responses={200: TEXT}),
        declare(
            "GET",
            "/status",
            status,
            "Is the node running (no key needed)",
            "Status",
            query={"format": {"type": "string", "enum": ["text", "json"]}},
            responses={200: contents(text={"type": "string"}, json={"type": "object"})},
            access="none",
        ),
    ]
