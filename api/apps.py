"""The EMQX-style credentials of the management API: API keys with a secret and a role
(EMQX 5's ``api_key``, EMQX 3's apps) and dashboard users (EMQ 2's ``users``), in one
store: kept as records of a store plugin (namespace ``api_apps``, one record per entry,
keyed by its name) when one is loaded and no ``apps_file`` is configured, otherwise in
``api_apps.json`` (mode 0600) under the data directory. The first time a store holds no
record of ``api_apps``, that file is imported and renamed ``api_apps.json.imported``
(once: ``keys.load_records``). A record whose fields are not of their types is logged
(namespace and name) and skipped.

A key is sent as HTTP Basic ``key:secret``; a user logs in with ``username:password``
(EMQ 2 takes them as Basic too; EMQX 5 trades them for a bearer token at ``/login``).
Secrets are kept as scrypt hashes: a key's secret is random, a user's password is not.
Hashing per request would cost tens of milliseconds, so a secret once verified is
remembered as a SHA-256 digest until its entry changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from ternmq.kernel import Service, write_atomically

from .keys import YEAR_10000, commit_records, load_records, read_entries, record_value, unavailable

#: EMQX 5's roles: an administrator may do anything an API key may, a viewer only read
#: (GET), a publisher only publish.
ROLES = ("administrator", "viewer", "publisher")
KINDS = ("key", "user")
#: The records' namespace of the EMQX-style keys and users (a store plugin's).
NAMESPACE = "api_apps"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.@")


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def _matches(secret: str, stored: str) -> bool:
    try:
        _, salt, _ = stored.split("$")
        expected = hash_secret(secret, bytes.fromhex(salt))
    except (ValueError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(expected, stored)


# What an unknown key's secret is hashed against (the same work as a known one's), and
# the one worker thread secrets are hashed in: a flood of wrong secrets waits its turn
# there instead of taking every core.
_DUMMY_HASH = hash_secret("no such key", b"\x00" * 16)
_HASHING = trio.CapacityLimiter(1)


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """The user name and password of an HTTP Basic ``Authorization`` header, or None
    for another scheme or one that does not decode."""
    if authorization is None:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII text
        return None
    return (user, password) if colon else (user, "")


def check_name(name: str, what: str = "name") -> None:
    if not 1 <= len(name) <= 64 or not set(name) <= _NAME_CHARACTERS:
        raise ValueError(f"{what} is 1 to 64 of A-Z, a-z, 0-9, _-.@, not {name!r}")


@attrs.frozen
class App:
    """One credential: ``key`` is what Basic auth names (the API key, the EMQX 3 app id,
    the EMQ 2 user name); ``name`` its handle in ``/api_key/{name}``."""

    name: str
    key: str
    secret_hash: str
    role: str = "administrator"
    kind: str = "key"  # "key" (an API key or app) or "user" (a dashboard user)
    desc: str = ""
    enable: bool = True
    expires_at: float | None = None  # Unix time; None: never
    created_at: float = attrs.field(factory=time.time)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now if now is not None else time.time()) >= self.expires_at


_TEXT_FIELDS = ("name", "key", "secret_hash", "role", "kind", "desc")
_FIELDS = frozenset(field.name for field in attrs.fields(App))


def _moment(value: Any) -> bool:
    """Whether ``value`` is a Unix time that can be shown (1970 to 9999)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < YEAR_10000


def _entry(raw: dict[str, Any]) -> App:
    """An entry of the file or of a record, each field's type checked (``App`` takes
    any: a created_at of text would break every listing, which sorts by it); ValueError
    naming the bad field (never the secret's hash)."""
    unknown = raw.keys() - _FIELDS
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r}")
    for field in ("name", "key", "secret_hash"):
        if field not in raw:
            raise ValueError(f"no {field}")
    for field in _TEXT_FIELDS:
        if field in raw and not isinstance(raw[field], str):
            raise ValueError(f"bad {field}: not a string")
    if "enable" in raw and not isinstance(raw["enable"], bool):
        raise ValueError("bad enable: not true or false")
    fields = dict(raw)
    for field in ("expires_at", "created_at"):
        if field in raw and not (raw[field] is None and field == "expires_at"):
            if not _moment(raw[field]):
                raise ValueError(f"bad {field}: not a Unix time between 1970 and 9999")
            fields[field] = float(raw[field])
    app = App(**fields)
    check_name(app.name)
    if app.role not in ROLES:
        raise ValueError(f"bad role: not one of {', '.join(ROLES)}")
    if app.kind not in KINDS:
        raise ValueError(f"bad kind: not one of {', '.join(KINDS)}")
    if not app.key:
        raise ValueError("bad key: empty")
    return app


def _record_key(app: App) -> str:
    return app.name


class AppStore:
    """The credentials; every change is written to ``file`` at once (or not made), or
    kept as records of ``service``'s store (:meth:`load_records`, :meth:`commit`)."""

    def __init__(self, file: Path | None = None) -> None:
        self.file = file
        self._apps: dict[str, App] = {}
        self._verified: dict[str, bytes] = {}  # name -> SHA-256 of the secret last verified
        self.loaded = False
        self.records: Service | None = None  # whose store keeps the entries (once loaded so)

    def __iter__(self) -> Iterator[App]:
        return iter(sorted(self._apps.values(), key=lambda app: app.created_at))

    def get(self, name: str) -> App | None:
        return self._apps.get(name)

    def load(self) -> None:
        """Read the file (none yet: empty); ValueError naming it when it cannot be used."""
        if self.file is None:
            return
        apps = read_entries(self.file, "API keys and users", _entry)
        if apps is not None or self.records is not None:  # (records: none of them is in the file)
            self._apps = {app.name: app for app in apps or ()}
            self._verified.clear()
        self.records = None  # the file keeps them from now on
        self.loaded = True

    async def load_records(self, service: Service, file: Path) -> None:
        """Use the records of ``service``'s store from now on (importing ``file`` once,
        keys.load_records); ValueError naming ``file`` when it cannot be imported."""
        apps = await load_records(service, NAMESPACE, file, "API keys and users", _entry, _record_key)
        self._apps = {app.name: app for app in apps}
        self._verified.clear()
        self.records, self.file = service, None
        self.loaded = True

    async def commit(self) -> None:
        """Return once the changes made so far are durable (a file is at once);
        keys.NotCommitted when the store failed to commit them (they stay in force)."""
        if self.records is not None:
            await commit_records(self.records, NAMESPACE)

    def bootstrap(self, file: Path) -> int:
        """Add the keys of EMQX's ``api_key.bootstrap_file``: lines ``key:secret[:role]``
        (blank lines and ``#`` comments skipped); a key already there keeps its entry.
        ValueError naming the file and line for a bad one; nothing is added then."""
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{file}: cannot be read: {exc}") from None
        new: list[App] = []
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, _, rest = line.partition(":")
            secret, _, role = rest.partition(":")
            role = role or "administrator"
            try:
                if len(secret) < 3 or role not in ROLES:
                    raise ValueError(f"needs key:secret[:role], a secret of 3 or more and a role of {', '.join(ROLES)}")
                check_name(key, "the key")
            except ValueError as exc:
                raise ValueError(f"{file}, line {number}: {exc}") from None
            taken = any(app.key == key for app in (*self._apps.values(), *new))
            if key not in self._apps and not taken:
                new.append(App(key, key, hash_secret(secret), role, desc="bootstrap file"))
        if new:
            self._change({**self._apps, **{app.name: app for app in new}})
        return len(new)

    def create(
        self,
        name: str,
        *,
        role: str = "administrator",
        kind: str = "key",
        key: str | None = None,
        secret: str | None = None,
        desc: str = "",
        enable: bool = True,
        expires_at: float | None = None,
    ) -> tuple[App, str]:
        """A new entry and its secret (shown once); ValueError if the name or key is taken."""
        check_name(name)
        if role not in ROLES:
            raise ValueError(f"role is one of {', '.join(ROLES)}, not {role!r}")
        if name in self._apps:
            raise ValueError(f"{name!r} exists already")
        key = key or secrets.token_hex(8)
        if any(app.key == key for app in self._apps.values()):
            raise ValueError(f"{key!r} exists already")
        if secret is not None and not secret:
            raise ValueError("the secret (password) cannot be empty")
        secret = secret if secret is not None else secrets.token_urlsafe(24)
        app = App(name, key, hash_secret(secret), role, kind, desc, enable, expires_at)
        self._change({**self._apps, name: app})
        return app, secret

    def update(self, name: str, **changes: Any) -> App:
        """Change ``desc``, ``enable``, ``expires_at``, ``role`` or the secret
        (``secret=``); KeyError for no such entry."""
        app = self._apps[name]
        if "secret" in changes:
            changes["secret_hash"] = hash_secret(changes.pop("secret"))
        if changes.get("role", app.role) not in ROLES:
            raise ValueError(f"role is one of {', '.join(ROLES)}")
        updated = attrs.evolve(app, **changes)
        self._change({**self._apps, name: updated})
        return updated

    def delete(self, name: str) -> bool:
        if name not in self._apps:
            return False
        self._change({k: v for k, v in self._apps.items() if k != name})
        return True

    async def authenticate(self, key: str, secret: str, kind: str | None = None) -> App | None:
        """The live, enabled entry whose key and secret these are (of ``kind`` if given).

        A secret not verified before is hashed in a worker thread (scrypt takes tens of
        milliseconds: on the event loop it would stall every MQTT client), one at a time,
        and a hash is computed for an unknown, disabled or wrong-kind key too, so that the
        answer's timing does not tell which keys exist."""
        app = next((a for a in self._apps.values() if hmac.compare_digest(a.key.encode(), key.encode())), None)
        usable = app is not None and app.enable and not app.expired() and (kind is None or app.kind == kind)
        digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
        if app is not None and usable:
            remembered = self._verified.get(app.name)
            if remembered is not None and hmac.compare_digest(remembered, digest):
                return app
        stored = app.secret_hash if app is not None and usable else _DUMMY_HASH
        matched = await trio.to_thread.run_sync(_matches, secret, stored, limiter=_HASHING)
        if app is None or not usable or not matched or self._apps.get(app.name) is not app:
            return None  # (an entry changed while its secret was hashed: asked again)
        self._verified[app.name] = digest
        return app

    def _change(self, apps: dict[str, App]) -> None:
        """Write ``apps`` to the file (or the entries that changed to the store), then
        use them (a failed write changes nothing)."""
        if self.records is not None:
            if not self.records.records_available:
                raise unavailable(NAMESPACE)
            for name, app in apps.items():
                if self._apps.get(name) is not app:
                    self.records.save_record(NAMESPACE, name, record_value(app))
            for name in self._apps.keys() - apps.keys():
                self.records.delete_record(NAMESPACE, name)
        elif self.file is not None:
            entries = [attrs.asdict(app) for app in sorted(apps.values(), key=lambda a: a.created_at)]
            write_atomically(self.file, json.dumps(entries, indent=2) + "\n", mode=0o600)
        previous, self._apps = self._apps, apps
        # A secret verified for an entry that changed (or went) must be verified again.
        self._verified = {name: d for name, d in self._verified.items() if apps.get(name) is previous.get(name)}


@attrs.define
class LoginSessions:
    """Bearer tokens of logged-in users (``POST /api/v5/login``), kept in memory: a
    restart logs everyone out, as EMQX's do after their expiry."""

    lifetime: float = 3600.0
    # token -> (user name, the user's secret hash at login, valid until)
    tokens: dict[str, tuple[str, str, float]] = attrs.field(factory=dict)
    user_lookup: Callable[[str], App | None] = lambda name: None

    def open(self, user: App) -> str:
        now = time.time()
        self.tokens = {t: entry for t, entry in self.tokens.items() if entry[2] > now}
        token = secrets.token_urlsafe(32)
        self.tokens[token] = (user.name, user.secret_hash, now + self.lifetime)
        return token

    def user(self, token: str) -> App | None:
        """The user a token was given to, while it is valid: not expired, and the user
        still there with the password it logged in with (a new password, or a user
        deleted and added again, ends the tokens given before)."""
        entry = self.tokens.get(token)
        if entry is None or entry[2] <= time.time():
            return None
        app = self.user_lookup(entry[0])
        if app is None or app.secret_hash != entry[1] or not app.enable or app.expired():
            return None
        return app

    def close(self, token: str) -> None:
        self.tokens.pop(token, None)
