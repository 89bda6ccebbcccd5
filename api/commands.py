"""The API plugin's admin commands: VerneMQ's ``api-key`` commands (a key per scope),
``api-key create --emqx`` and EMQX 3's ``app`` commands (a key with a secret and a
role), and EMQX's ``admins`` commands (users who log in).

A change the store failed to commit is answered :class:`NotSaved` (a CommandError;
``/api/v1`` answers it 503): the change is in force, the store retries."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ternmq.kernel import AdminRegistry, Arguments, CommandError, Service, Table, Text

from .apps import ROLES, AppStore
from .keys import SCOPES, KeyStore, NotCommitted, check_key, parse_expiry
from .model import rfc3339

if TYPE_CHECKING:
    from . import Plugin


class NotSaved(CommandError):
    """A change in force that the store has not saved yet (its commit failed; it
    retries): the command's answer is this error, not its usual output."""


async def committed(store: KeyStore | AppStore, made: str = "") -> None:
    """Wait for ``store``'s changes to be durable; NotSaved (``made`` first: what the
    change made, where the usual output would have shown it) when they are not."""
    try:
        await store.commit()
    except NotCommitted as exc:
        raise NotSaved(f"{made}{exc}") from None


def register(registry: AdminRegistry, plugin: Plugin) -> None:
    commands = Commands(plugin)
    registry.describe("api-key", "API keys of the management API.")
    scope_help = f"one of {', '.join(SCOPES)} (default mgmt)"
    expires_help = "when it stops working, e.g. 2027-01-31T12:00:00 (UTC)"
    registry.add(
        "api-key create",
        commands.create,
        help="Make a new random key and print it; with --emqx a key and secret for /api/v5 and /api/v3.",
        keys={
            "scope": scope_help,
            "expires": expires_help,
            "name": "--emqx: the key's name",
            "role": f"--emqx: {', '.join(ROLES)} (default administrator)",
            "desc": "--emqx: a description",
        },
        flags={"emqx": "an EMQX key: Basic api_key:api_secret on /api/v5, /api/v3 and /api/v2"},
    )
    registry.add(
        "api-key add",
        commands.add,
        help="Keep a key you chose.",
        keys={"key": "the key", "scope": scope_help, "expires": expires_help},
        required=("key",),
    )
    registry.add(
        "api-key delete",
        commands.delete,
        help="Forget a key of a scope (with --emqx: the EMQX key of that name).",
        keys={"key": "the key", "scope": scope_help, "name": "--emqx: the key's name"},
        flags={"emqx": "delete an EMQX key by name"},
    )
    registry.add(
        "api-key show",
        commands.show,
        help="List the keys with their scopes and expiry (with --emqx: the EMQX keys).",
        keys={"scope": f"only the keys of one scope ({', '.join(SCOPES)}), or all (the default)"},
        flags={"emqx": "list the EMQX keys"},
    )
    registry.describe("app", "EMQX 3's apps: an app id and secret for /api/v3 (EMQX keys by another name).")
    registry.add(
        "app create",
        commands.app_create,
        required=("name",),
        help="Make an app; prints its app id and secret.",
        keys={"name": "its name", "app_id": "the app id (default: random)", "secret": "the secret (default: random)"},
    )
    registry.describe("admins", "Users of the dashboard API: /api/v5/login, /api/v2 (EMQX's admins).")
    registry.add(
        "admins add",
        commands.admins_add,
        required=("username", "password"),
        help="Add a user.",
        keys={
            "username": "the user name",
            "password": "the password",
            "role": f"{', '.join(ROLES)}",
            "description": "",
        },
    )
    registry.add(
        "admins passwd",
        commands.admins_passwd,
        required=("username", "password"),
        help="Set a user's password.",
        keys={"username": "the user name", "password": "the new password"},
    )
    registry.add(
        "admins del", commands.admins_del, required=("username",), help="Remove a user.", keys={"username": ""}
    )


class Commands:
    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    # -- VerneMQ's keys ------------------------------------------------------------------------

    def _scope_and_expiry(self, args: Arguments) -> tuple[str, float | None]:
        config = self.plugin.config
        scope = args.keys.get("scope", "mgmt")
        if scope not in SCOPES:
            raise args.usage_error(f"unknown scope {scope!r} (scopes: {', '.join(SCOPES)})")
        return scope, self._expiry(args, required=bool(config.max_apikey_expiry_days))

    def _expiry(self, args: Arguments, *, required: bool = False) -> float | None:
        days = self.plugin.config.max_apikey_expiry_days
        expires = args.keys.get("expires")
        try:
            expires_at = None if expires is None else parse_expiry(expires, days)
        except ValueError as exc:
            raise args.usage_error(str(exc)) from None
        if expires_at is None and required:
            raise args.usage_error(f"expires is needed: keys expire within {days} days")
        return expires_at

    async def create(self, service: Service, args: Arguments) -> Text:
        if args.bool_flag("emqx"):
            return await self._create_emqx(args)
        scope, expires_at = self._scope_and_expiry(args)
        try:
            entry = self.plugin.keys.create(scope, expires_at)
        except OSError as exc:
            raise args.usage_error(f"the keys cannot be saved: {exc}") from None
        await committed(self.plugin.keys, "a new key (api-key show lists it): ")
        return Text(entry.key)

    async def add(self, service: Service, args: Arguments) -> Text:
        key = args.keys["key"]
        if len(key) < self.plugin.config.min_apikey_length:
            raise args.usage_error(
                f"the key is shorter than min_apikey_length ({self.plugin.config.min_apikey_length})"
            )
        try:
            check_key(key)
        except ValueError as exc:
            raise args.usage_error(str(exc)) from None
        scope, expires_at = self._scope_and_expiry(args)
        try:
            self.plugin.keys.add(key, scope, expires_at)
        except (ValueError, OSError) as exc:
            raise args.usage_error(str(exc)) from None
        await committed(self.plugin.keys)
        return Text("Done")

    async def delete(self, service: Service, args: Arguments) -> Text:
        if args.bool_flag("emqx"):
            return await self._delete_app(args, args.keys.get("name", ""), "key")
        if "key" not in args.keys:
            raise args.usage_error("missing argument key=")
        try:
            removed = self.plugin.keys.delete(args.keys["key"], args.keys.get("scope", "mgmt"))
        except OSError as exc:
            raise args.usage_error(f"the keys cannot be saved: {exc}") from None
        if not removed:
            raise args.usage_error("no such key")
        await committed(self.plugin.keys)
        return Text("Done")

    def show(self, service: Service, args: Arguments) -> Table:
        if args.bool_flag("emqx"):
            columns = ("name", "api_key", "role", "enable", "expired_at", "created_at", "desc")
            rows = tuple(
                {
                    "name": app.name,
                    "api_key": app.key,
                    "role": app.role,
                    "enable": app.enable,
                    "expired_at": rfc3339(app.expires_at) if app.expires_at is not None else "infinity",
                    "created_at": rfc3339(app.created_at),
                    "desc": app.desc,
                }
                for app in self.plugin.apps
                if app.kind == "key"
            )
            return Table(rows, columns)
        scope = args.keys.get("scope", "all")
        if scope != "all" and scope not in SCOPES:
            raise args.usage_error(f"unknown scope {scope!r} (scopes: {', '.join(SCOPES)}, or all)")
        vernemq_columns = ("Key", "Scope", "Expires (UTC)", "has expired")
        return Table(
            tuple(
                dict(zip(vernemq_columns, (k.key, k.scope, k.expiry_text(), k.expired()), strict=True))
                for k in self.plugin.keys
                if scope in ("all", k.scope)
            ),
            vernemq_columns,
        )

    # -- EMQX's keys, apps and users --------------------------------------------------------------

    async def _make(self, args: Arguments, name: str, **options: object) -> tuple[str, str]:
        try:
            app, secret = self.plugin.apps.create(name, **options)  # type: ignore[arg-type]
        except ValueError as exc:
            raise args.usage_error(str(exc)) from None
        except OSError as exc:
            raise args.usage_error(f"the keys cannot be saved: {exc}") from None
        # (a secret is not put in an error: an error's text is often logged)
        await committed(self.plugin.apps, f"{name!r} was made (a secret made for it is not shown in an error): ")
        return app.key, secret

    async def _create_emqx(self, args: Arguments) -> Text:
        name = args.keys.get("name")
        if not name:
            raise args.usage_error("--emqx needs name=<name>")
        role = args.keys.get("role", "administrator")
        expires_at = self._expiry(args)
        key, secret = await self._make(args, name, role=role, desc=args.keys.get("desc", ""), expires_at=expires_at)
        return Text(f"api_key: {key}\napi_secret: {secret}")

    async def app_create(self, service: Service, args: Arguments) -> Text:
        key, secret = await self._make(
            args,
            args.keys["name"],
            key=args.keys.get("app_id") or None,
            secret=args.keys.get("secret") or None,
            desc="EMQX 3 app",
        )
        return Text(f"app_id: {key}\nsecret: {secret}")

    async def admins_add(self, service: Service, args: Arguments) -> Text:
        username = args.keys["username"]
        await self._make(
            args,
            username,
            kind="user",
            key=username,
            secret=args.keys["password"],
            role=args.keys.get("role", "administrator"),
            desc=args.keys.get("description", ""),
        )
        return Text("ok")

    async def admins_passwd(self, service: Service, args: Arguments) -> Text:
        user = self.plugin.apps.get(args.keys["username"])
        if user is None or user.kind != "user":
            raise CommandError(f"no user {args.keys['username']!r}")
        try:
            self.plugin.apps.update(user.name, secret=args.keys["password"])
        except OSError as exc:
            raise args.usage_error(f"the users cannot be saved: {exc}") from None
        await committed(self.plugin.apps)
        return Text("ok")

    async def admins_del(self, service: Service, args: Arguments) -> Text:
        return await self._delete_app(args, args.keys["username"], "user")

    async def _delete_app(self, args: Arguments, name: str, kind: str) -> Text:
        app = self.plugin.apps.get(name)
        if app is None or app.kind != kind:
            raise args.usage_error(f"no {'user' if kind == 'user' else 'EMQX key'} named {name!r}")
        try:
            self.plugin.apps.delete(name)
        except OSError as exc:
            what = "users" if kind == "user" else "keys"
            raise args.usage_error(f"the {what} cannot be saved: {exc}") from None
        await committed(self.plugin.apps)
        return Text("Done")
