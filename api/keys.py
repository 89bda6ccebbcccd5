"""API keys as VerneMQ keeps them: a key per scope, with an optional expiry, kept so
that they survive a restart: as records of a store plugin (namespace ``api_keys``, one
record per key) when one is loaded and no ``keys_file`` is configured, otherwise in a
JSON file (mode 0600) under the data directory.

A key's record holds the key itself, in plain text, as ``api_keys.json`` does (a key is
compared as it is sent); its record key is a digest, so that a record key in the log
tells nothing. A bad record or entry is reported by the field that is wrong, never with
the key.

The helpers here serve ``apps.py`` too: reading a JSON list file; reading a store's
records, where a record that cannot be used is logged (namespace and record key) and
skipped; importing the JSON file of the data directory once (``Service.import_pending``:
the first time the store holds no record of the namespace, and never again, even if the
file stays or the namespace empties later), then renaming it ``<name>.imported``; and
:class:`NotCommitted`, what a change raises when the store failed to commit it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import attrs

from ternmq.kernel import Service, read_json_list, set_aside_imported, write_atomically

log = logging.getLogger("ternmq.api")

#: The records' namespace of the VerneMQ-style keys (a store plugin's).
NAMESPACE = "api_keys"

#: The scopes of the HTTP modules (VerneMQ's names; api2 is VerneMQ's /api/v2).
SCOPES = ("mgmt", "status", "metrics", "health", "api2", "httppub")
# A key ternmq makes: 32 characters of [A-Za-z0-9_-], as long as VerneMQ's.
_CREATED_BYTES = 24
# The first moment datetime cannot show (an expiry must come before it).
YEAR_10000 = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


@attrs.frozen
class ApiKey:
    key: str
    scope: str = "mgmt"
    expires_at: float | None = None  # Unix time, or None for never

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now if now is not None else time.time()) >= self.expires_at

    def expiry_text(self) -> str:
        if self.expires_at is None:
            return "never"
        return datetime.fromtimestamp(self.expires_at, UTC).strftime("%Y-%m-%d %H:%M:%S")  # as VerneMQ shows it


def check_key(key: str) -> None:
    """ValueError for a key that would not come back the same in both ways of sending
    it (a header is Latin-1, a Basic user name ends at ':')."""
    if not key or not key.isascii() or not key.isprintable() or ":" in key or " " in key:
        raise ValueError("a key is printable ASCII without ':' or blanks")


def _entry(entry: dict[str, object]) -> ApiKey:
    """A key of the file or of a record; ValueError (KeyError for a missing field) that
    names the bad field only: the message is logged, and the entry holds the key."""
    key, scope, expires_at = entry["key"], entry["scope"], entry.get("expires_at")
    if not isinstance(key, str):
        raise ValueError("bad key: not a string")
    try:
        check_key(key)
    except ValueError as exc:
        raise ValueError(f"bad key: {exc}") from None
    if not isinstance(scope, str) or scope not in SCOPES:
        raise ValueError(f"bad scope: not one of {', '.join(SCOPES)}")
    if expires_at is not None and (
        isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)) or not 0 < expires_at < YEAR_10000
    ):
        raise ValueError("bad expires_at: not a Unix time between 1970 and 9999, or null")
    return ApiKey(key, scope, float(expires_at) if expires_at is not None else None)


def parse_moment(text: str) -> float:
    """An ISO 8601 / RFC 3339 date and time (UTC unless it names its offset) as Unix
    time; ValueError for another form."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    except OverflowError:  # an offset that moves it outside what datetime holds
        raise ValueError(f"{text!r} is out of range") from None


def parse_expiry(text: str, max_days: int) -> float:
    """``2027-01-31T12:00:00`` (UTC unless it says otherwise) as Unix time; ValueError for
    another form, a time past, or one beyond ``max_days`` (0: no bound) from now."""
    try:
        expires_at = parse_moment(text)
    except ValueError:
        raise ValueError(f"expires must be a date and time such as 2027-01-31T12:00:00, not {text!r}") from None
    if expires_at >= YEAR_10000:
        raise ValueError(f"expires {text} is past the year 9999")
    now = time.time()
    if expires_at <= now:
        raise ValueError(f"expires {text} is in the past")
    if max_days and expires_at > now + max_days * 86400:
        raise ValueError(f"expires {text} is more than max_apikey_expiry_days ({max_days}) away")
    return expires_at


T = TypeVar("T")


def read_entries(file: Path, what: str, entry: Callable[[dict[str, Any]], T]) -> list[T] | None:
    """The entries of a JSON list file, each built by ``entry``; None when there is no
    file yet; ValueError naming the file when it cannot be read or an entry is bad."""
    raw = read_json_list(file, what)
    if raw is None:
        return None
    try:
        return [entry(item) for item in raw]
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise ValueError(f"{file}: not a list of {what} ({exc})") from None


def record_value(entry: Any) -> bytes:
    """An entry (an attrs instance) as a record's value: its fields as JSON."""
    return json.dumps(attrs.asdict(entry), separators=(",", ":")).encode()


async def load_records(
    service: Service,
    namespace: str,
    file: Path,
    what: str,
    entry: Callable[[dict[str, Any]], T],
    record_key: Callable[[T], str],
) -> list[T]:
    """The entries kept as records of ``namespace``, each built by ``entry`` from the
    record's JSON object. A record that cannot be used, or whose key is not the one its
    entry would have, is logged and skipped.

    When the store has a file to import (``Service.import_pending``: it holds no record
    of ``namespace`` and was never told of an import into it) and ``file`` (a JSON list
    of what :func:`read_entries` reads) exists, its entries are saved as records, the
    import noted, both committed, and the file renamed ``<name>.imported``: imported
    once, even if the file stays (a failed commit, a refused rename) and its entries are
    deleted later. ValueError naming the file when it cannot be read (it is then left as
    it is, and not noted as imported)."""
    records = await service.load_records(namespace)
    if not records and await service.import_pending(namespace):
        imported = read_entries(file, what, entry)
        if imported is None:
            return []
        for item in imported:
            service.save_record(namespace, record_key(item), record_value(item))
        service.note_import(namespace, str(file))
        if await service.commit_store():
            set_aside_imported(file, what, len(imported), log)
        else:
            log.error("%s: the store failed to commit the %s imported from it; the file stays", file, what)
        return imported
    entries: list[T] = []
    for key, value in records.items():
        try:
            raw = json.loads(value)
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            item = entry(raw)
            if record_key(item) != key:
                raise ValueError("its key is not its entry's")
        except (TypeError, KeyError, AttributeError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            log.error("record %r of %s cannot be used as one of the %s (%s): skipped", key, namespace, what, exc)
            continue
        entries.append(item)
    return entries


def unavailable(namespace: str) -> OSError:
    """What a change kept as records raises when no store keeps them any more."""
    return OSError(f"no store plugin keeps the records of {namespace} now (the store was unloaded)")


class NotCommitted(Exception):
    """A change made (in force from now on) whose records the store failed to commit:
    not durable yet; the store retries, and a restart before it succeeds loses it."""

    def __init__(self, namespace: str) -> None:
        super().__init__(
            f"the change is in force, but the store has not saved it yet: its commit failed "
            f"(the broker's log says why) and it retries; until it succeeds a restart loses the change "
            f"(records of {namespace})"
        )
        self.namespace = namespace


async def commit_records(service: Service, namespace: str) -> None:
    """Return once the records handed to ``service``'s store are durable; NotCommitted
    when its commit failed (the changes stay in force)."""
    if not await service.commit_store():
        raise NotCommitted(namespace)


class KeyStore:
    """The keys, checked in constant time, written to ``file`` whole or not at all, or
    kept as records of ``service``'s store (:meth:`load_records`)."""

    def __init__(self, file: Path | None = None) -> None:
        self.file = file
        self._keys: list[ApiKey] = []
        self.loaded = False  # the file (or the records) have been read once
        self.records: Service | None = None  # whose store keeps the keys (once loaded so)

    @staticmethod
    def record_key(entry: ApiKey) -> str:
        """A key's record key: its scope and a digest of the key (the key is a secret,
        and a record key shows in the log when its record cannot be used)."""
        return f"{entry.scope}:{hashlib.sha256(entry.key.encode()).hexdigest()[:32]}"

    def __iter__(self) -> Iterator[ApiKey]:
        return iter(self._keys)

    def load(self) -> None:
        """Read the file (none yet: no keys); ValueError naming it when it cannot be used."""
        if self.file is None:
            return
        keys = read_entries(self.file, "API keys", _entry)
        if keys is not None or self.records is not None:  # (records: none of them is in the file)
            self._keys = keys or []
        self.records = None  # the file keeps them from now on
        self.loaded = True

    async def load_records(self, service: Service, file: Path) -> None:
        """Use the records of ``service``'s store from now on (importing ``file`` once:
        :func:`load_records`); ValueError naming ``file`` when it cannot be imported."""
        self._keys = await load_records(service, NAMESPACE, file, "API keys", _entry, self.record_key)
        self.records, self.file = service, None
        self.loaded = True

    async def commit(self) -> None:
        """Return once the changes made so far are durable (a file is at once);
        :class:`NotCommitted` when the store failed to commit them."""
        if self.records is not None:
            await commit_records(self.records, NAMESPACE)

    def create(self, scope: str, expires_at: float | None) -> ApiKey:
        return self.add(secrets.token_urlsafe(_CREATED_BYTES), scope, expires_at)

    def add(self, key: str, scope: str, expires_at: float | None) -> ApiKey:
        """Keep a key (ValueError if it is there for this scope already); saved at once."""
        if any(k.key == key and k.scope == scope for k in self._keys):
            raise ValueError(f"the key is already in scope {scope}")
        entry = ApiKey(key, scope, expires_at)
        self._keys.append(entry)
        try:
            self.save(entry)
        except OSError:
            self._keys.remove(entry)
            raise
        return entry

    def delete(self, key: str, scope: str) -> int:
        """Forget a key of one scope; how many entries went (0 or 1)."""
        kept = [k for k in self._keys if not (k.key == key and k.scope == scope)]
        removed = len(self._keys) - len(kept)
        if removed:
            previous, self._keys = self._keys, kept
            try:
                self.save(deleted=ApiKey(key, scope))
            except OSError:
                self._keys = previous
                raise
        return removed

    def allows(self, key: str, scope: str) -> bool:
        """Whether ``key`` is a live key of ``scope``. Every stored key is compared, in
        constant time, so the answer's timing tells nothing about the keys."""
        if not key:
            return False
        found = False
        now = time.time()
        given = key.encode()
        for entry in self._keys:
            if hmac.compare_digest(entry.key.encode(), given) and entry.scope == scope and not entry.expired(now):
                found = True
        return found

    def save(self, saved: ApiKey | None = None, deleted: ApiKey | None = None) -> None:
        """Keep the change: the record of the key ``saved`` or ``deleted`` (committed
        by :meth:`commit`), or the whole file. OSError when it cannot be kept."""
        if self.records is not None:
            if not self.records.records_available:
                raise unavailable(NAMESPACE)
            if saved is not None:
                self.records.save_record(NAMESPACE, self.record_key(saved), record_value(saved))
            if deleted is not None:
                self.records.delete_record(NAMESPACE, self.record_key(deleted))
        elif self.file is not None:
            entries: list[dict[str, Any]] = [attrs.asdict(k) for k in self._keys]
            write_atomically(self.file, json.dumps(entries, indent=2) + "\n", mode=0o600)  # keys are secrets
