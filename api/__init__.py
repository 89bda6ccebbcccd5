"""The management HTTP API (the ``api`` built-in plugin).

hypercorn serves a quart-trio app inside the plugin's own task, so loading the plugin
opens its port and unloading it closes the port; MQTT clients are not touched either
way. What it serves (docs/api.md):

* ``/api/v1/<command path>``: every admin command (those plugins add too), as VerneMQ maps
  ``vmq-admin`` onto HTTP: ``GET /api/v1/session/show?--client_id&--limit=5``,
  ``/api/v1/session/disconnect?client-id=c1&--cleanup``; scope ``mgmt``;
* ``/metrics``: Prometheus' text format (scope ``metrics``);
* ``/health``, ``/health/ping``, ``/health/listeners`` (scope ``health``).

API keys as VerneMQ's: ``ternmq-admin api-key create [scope=mgmt] [expires=DATE]``,
``api-key add key=K [scope=...] [expires=...]``, ``api-key delete key=K [scope=...]``,
``api-key show``. A key is sent as the Basic-auth user name with an empty password, or
in ``x-api-key``.

Where the keys live: with a store plugin loaded before this one (``sqlite_store``), as
its records: namespace ``api_keys`` (VerneMQ-style keys) and ``api_apps`` (EMQX-style
keys and users), one record per entry, durable before the command or request that
changed them answers (when the store fails to commit, the answer is an error saying the
change is in force but not saved yet: the store retries); ``api_keys.json`` /
``api_apps.json`` of the data directory are imported once and renamed ``*.imported``.
VerneMQ-style keys are kept in plain text (they are compared as sent), EMQX-style
secrets as scrypt hashes. Without a store, or when
``keys_file`` / ``apps_file`` names a file, in those JSON files (mode 0600).

Config keys (``[plugins.api]``): ``address`` ("127.0.0.1"), ``port`` (8888; 0 picks a
free one), ``certfile``/``keyfile`` (HTTPS), ``auth`` (a table of scope = "apikey" |
"noauth"; ``mgmt`` and ``httppub`` need keys unless it says otherwise),
``min_apikey_length`` (0), ``max_apikey_expiry_days`` (0 = no bound), ``keys_file``,
``prometheus_namespace`` ("ternmq_").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from ternmq.kernel import AdminRegistry, Service, hookimpl

from .apps import App, AppStore, LoginSessions
from .keys import SCOPES, KeyStore, NotCommitted
from .model import Stopped

log = logging.getLogger("ternmq.api")

AUTH_MODES = ("apikey", "noauth")
DEFAULT_AUTH = {
    "mgmt": "apikey",
    "api2": "apikey",
    "httppub": "apikey",
    "status": "noauth",
    "metrics": "noauth",
    "health": "noauth",
}


def _check_auth(instance: Any, attribute: Any, value: Mapping[str, Any]) -> None:
    for scope, mode in value.items():
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r} (scopes: {', '.join(SCOPES)})")
        if mode not in AUTH_MODES:
            raise ValueError(f"{scope} must be 'apikey' or 'noauth', not {mode!r}")


def _check_port(instance: Any, attribute: Any, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")


@attrs.frozen
class Config:
    address: str = "127.0.0.1"
    port: int = attrs.field(default=8888, validator=_check_port)
    certfile: Path | None = None
    keyfile: Path | None = None
    auth: Mapping[str, str] = attrs.field(factory=dict, validator=_check_auth)
    min_apikey_length: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    max_apikey_expiry_days: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    keys_file: Path | None = None
    httppub_auth: str = attrs.field(
        default="on-behalf-of", validator=attrs.validators.in_(("on-behalf-of", "predefined"))
    )
    httppub_user: str | None = None
    httppub_password: str | None = None
    httppub_client_id: str | None = None
    httppub_mountpoint: str = ""
    status_refresh: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    apps_file: Path | None = None
    bootstrap_file: Path | None = None
    token_lifetime: float = attrs.field(default=3600.0, validator=attrs.validators.gt(0))
    prometheus_namespace: str = attrs.field(
        default="ternmq_", validator=attrs.validators.matches_re(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?")
    )

    def __attrs_post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together (HTTPS needs both)")

    def auth_mode(self, scope: str) -> str:
        return self.auth.get(scope, DEFAULT_AUTH[scope])


class Plugin:
    """Serves the management API (module docstring)."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.keys = KeyStore(self.config.keys_file)
        self.apps = AppStore(self.config.apps_file)
        self.sessions = LoginSessions(self.config.token_lifetime, user_lookup=self._user)
        # Plugins stopped through /api/v5 or /api/v3, with the tables to start them again.
        self.stopped_plugins: dict[str, Stopped] = {}
        self.port: int | None = None  # bound once serving
        self.httppub_counts = dict.fromkeys(("published", "api_error", "auth_error", "too_large"), 0)

    @hookimpl
    def register_metrics(self, registry: Any) -> None:
        for name, help in (
            ("published", "messages published over HTTP"),
            ("api_error", "HTTP publishes refused for their form"),
            ("auth_error", "HTTP publishes refused by auth_on_register or auth_on_publish"),
            ("too_large", "HTTP publishes refused for their size"),
        ):
            registry.counter(f"http_publish_{name}", lambda name=name: self.httppub_counts[name], help)

    @hookimpl
    def register_admin_commands(self, registry: AdminRegistry) -> None:
        from .commands import register

        register(registry, self)

    def _user(self, name: str) -> App | None:
        app = self.apps.get(name)
        return app if app is not None and app.kind == "user" else None

    async def _load_stores(self, service: Service) -> None:
        """Read the keys (a first load that cannot read them fails, naming the file; a
        reload keeps the entries in force) and add the bootstrap file's keys.

        A store plugin keeps them as records unless ``keys_file`` / ``apps_file`` names a
        file: the data directory's file is then imported once (module docstring)."""
        for store, configured, name in (
            (self.keys, self.config.keys_file, "api_keys.json"),
            (self.apps, self.config.apps_file, "api_apps.json"),
        ):
            default = service.data_dir / name
            try:
                if configured is None and service.records_available:
                    await store.load_records(service, default)
                else:
                    store.file = configured or default
                    store.load()
            except ValueError:
                if not store.loaded:  # the first start: the plugin cannot load without its keys
                    raise
                log.exception("API keys not read again; the keys in force stay")
        if self.config.bootstrap_file is not None:
            self.apps.bootstrap(self.config.bootstrap_file)
            try:
                await self.apps.commit()
            except NotCommitted as exc:  # the keys work; the store saves them when it can
                log.error("the bootstrap file's keys: %s", exc)

    async def serve(self, service: Service, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from .routes import AnswerFirst, build_app  # quart is imported only by a broker that serves the API

        await self._load_stores(service)
        config = HypercornConfig()
        config.bind = [f"{self.config.address}:{self.config.port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("ternmq.api.http")
        config.graceful_timeout = 1.0
        # One request per connection: hypercorn's trio worker can leave a keep-alive
        # connection waiting forever when a request's body was not read before its answer
        # went (a 405 to a POST with a body, say). A management API loses nothing by
        # opening a connection per request.
        config.keep_alive_max_requests = 1
        if self.config.certfile is not None and self.config.keyfile is not None:
            config.certfile = str(self.config.certfile)
            config.keyfile = str(self.config.keyfile)
        app = AnswerFirst(build_app(self, service))
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, app, config)
            self.port = int(binds[0].rsplit(":", 1)[1])
            log.info("management API on %s", binds[0])
            task_status.started()
