"""API keys as VerneMQ keeps them: a key per scope, with an optional expiry, kept in a
JSON file under the data directory so that they survive a restart."""

from __future__ import annotations

import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import attrs

from ternmq.kernel import write_atomically

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
    key, scope, expires_at = entry["key"], entry["scope"], entry.get("expires_at")
    if not isinstance(key, str) or not isinstance(scope, str) or scope not in SCOPES:
        raise ValueError(f"bad entry {entry!r}")
    check_key(key)
    if expires_at is not None and (
        isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)) or not 0 < expires_at < YEAR_10000
    ):
        raise ValueError(f"bad expires_at in {entry!r}")
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
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{file}: cannot be read as {what}: {exc}") from None
    try:
        return [entry(item) for item in raw]
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise ValueError(f"{file}: not a list of {what} ({exc})") from None


class KeyStore:
    """The keys, checked in constant time, written to ``file`` whole or not at all."""

    def __init__(self, file: Path | None = None) -> None:
        self.file = file
        self._keys: list[ApiKey] = []
        self.loaded = False  # the file has been read once

    def __iter__(self) -> Iterator[ApiKey]:
        return iter(self._keys)

    def load(self) -> None:
        """Read the file (none yet: no keys); ValueError naming it when it cannot be used."""
        if self.file is None:
            return
        keys = read_entries(self.file, "API keys", _entry)
        if keys is not None:
            self._keys = keys
        self.loaded = True

    def create(self, scope: str, expires_at: float | None) -> ApiKey:
        return self.add(secrets.token_urlsafe(_CREATED_BYTES), scope, expires_at)

    def add(self, key: str, scope: str, expires_at: float | None) -> ApiKey:
        """Keep a key (ValueError if it is there for this scope already); saved at once."""
        if any(k.key == key and k.scope == scope for k in self._keys):
            raise ValueError(f"the key is already in scope {scope}")
        entry = ApiKey(key, scope, expires_at)
        self._keys.append(entry)
        try:
            self.save()
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
                self.save()
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

    def save(self) -> None:
        if self.file is not None:
            entries: list[dict[str, Any]] = [attrs.asdict(k) for k in self._keys]
            write_atomically(self.file, json.dumps(entries, indent=2) + "\n", mode=0o600)  # keys are secrets
