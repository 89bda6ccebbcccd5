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
``api-key show``; kept in ``api_keys.json`` in the data directory (mode 0600). A key is
sent as the Basic-auth user name with an empty password, or in ``x-api-key``.

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

from ternmq.kernel import AdminRegistry, Arguments, Service, Table, Text, hookimpl

from .keys import SCOPES, KeyStore, check_key, parse_expiry

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
        registry.describe("api-key", "API keys of the management API.")
        scope_help = f"one of {', '.join(SCOPES)} (default mgmt)"
        registry.add(
            "api-key create",
            self._create,
            help="Make a new random key and print it.",
            keys={"scope": scope_help, "expires": "when it stops working, e.g. 2027-01-31T12:00:00 (UTC)"},
        )
        registry.add(
            "api-key add",
            self._add,
            help="Keep a key you chose.",
            keys={"key": "the key", "scope": scope_help, "expires": "when it stops working (UTC)"},
            required=("key",),
        )
        registry.add(
            "api-key delete",
            self._delete,
            help="Forget a key of a scope.",
            keys={"key": "the key", "scope": scope_help},
            required=("key",),
        )
        registry.add(
            "api-key show",
            self._show,
            help="List the keys with their scopes and expiry.",
            keys={"scope": f"only the keys of one scope ({', '.join(SCOPES)}), or all (the default)"},
        )

    def _scope_and_expiry(self, args: Arguments) -> tuple[str, float | None]:
        scope = args.keys.get("scope", "mgmt")
        if scope not in SCOPES:
            raise args.usage_error(f"unknown scope {scope!r} (scopes: {', '.join(SCOPES)})")
        expires = args.keys.get("expires")
        try:
            expires_at = None if expires is None else parse_expiry(expires, self.config.max_apikey_expiry_days)
        except ValueError as exc:
            raise args.usage_error(str(exc)) from None
        if expires_at is None and self.config.max_apikey_expiry_days:
            raise args.usage_error(f"expires is needed: keys expire within {self.config.max_apikey_expiry_days} days")
        return scope, expires_at

    def _create(self, service: Service, args: Arguments) -> Text:
        scope, expires_at = self._scope_and_expiry(args)
        try:
            entry = self.keys.create(scope, expires_at)
        except OSError as exc:
            raise args.usage_error(f"the keys file cannot be written: {exc}") from None
        return Text(entry.key)

    def _add(self, service: Service, args: Arguments) -> Text:
        key = args.keys["key"]
        if len(key) < self.config.min_apikey_length:
            raise args.usage_error(f"the key is shorter than min_apikey_length ({self.config.min_apikey_length})")
        try:
            check_key(key)
        except ValueError as exc:
            raise args.usage_error(str(exc)) from None
        scope, expires_at = self._scope_and_expiry(args)
        try:
            self.keys.add(key, scope, expires_at)
        except (ValueError, OSError) as exc:
            raise args.usage_error(str(exc)) from None
        return Text("Done")

    def _delete(self, service: Service, args: Arguments) -> Text:
        try:
            removed = self.keys.delete(args.keys["key"], args.keys.get("scope", "mgmt"))
        except OSError as exc:
            raise args.usage_error(f"the keys file cannot be written: {exc}") from None
        if not removed:
            raise args.usage_error("no such key")
        return Text("Done")

    def _show(self, service: Service, args: Arguments) -> Table:
        scope = args.keys.get("scope", "all")
        if scope != "all" and scope not in SCOPES:
            raise args.usage_error(f"unknown scope {scope!r} (scopes: {', '.join(SCOPES)}, or all)")
        columns = ("Key", "Scope", "Expires (UTC)", "has expired")
        rows = tuple(
            dict(zip(columns, (k.key, k.scope, k.expiry_text(), k.expired()), strict=True))
            for k in self.keys
            if scope in ("all", k.scope)
        )
        return Table(rows, columns)

    async def serve(self, service: Service, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from .routes import AnswerFirst, build_app  # quart is imported only by a broker that serves the API

        if self.keys.file is None:
            self.keys.file = service.data_dir / "api_keys.json"
        try:
            self.keys.load()
        except ValueError:
            if not self.keys.loaded:  # the first start: the plugin cannot load without its keys
                raise
            # serving again after a failed reload: the keys read before stay in force
            log.exception("API keys not read again; the keys in force stay")
        config = HypercornConfig()
        config.bind = [f"{self.config.address}:{self.config.port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("ternmq.api.http")
        config.graceful_timeout = 1.0
        if self.config.certfile is not None and self.config.keyfile is not None:
            config.certfile = str(self.config.certfile)
            config.keyfile = str(self.config.keyfile)
        app = AnswerFirst(build_app(self, service))
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, app, config)
            self.port = int(binds[0].rsplit(":", 1)[1])
            log.info("management API on %s", binds[0])
            task_status.started()
