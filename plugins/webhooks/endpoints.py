"""Which endpoints are called for which hook, in which order, and where that is kept.

The configuration's endpoints come first, in the order they are written; endpoints
registered at run time (``ternmq-admin webhooks register``) follow in the order of
registration and are kept in a JSON file under the data directory, so that they come
back after a restart, unless registered ``--transient``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx

from ternmq.kernel import write_atomically

from .wire import WEBHOOK_NAMES, PayloadOptions

log = logging.getLogger("ternmq.plugins.webhooks")

FAILURE_POLICIES = ("deny", "next")
# Keys of an endpoint, in the configuration and in the registrations file.
ENDPOINT_KEYS = ("hook", "endpoint", "base64payload", "no_payload", "response_timeout", "on_failure")


@attrs.frozen
class Endpoint:
    """One endpoint of one hook. ``response_timeout`` is in milliseconds, as VerneMQ's."""

    hook: str
    url: str
    base64payload: bool = True
    no_payload: bool = False
    response_timeout: int = 5000
    on_failure: str = "deny"
    # "config" (plugins.toml), "runtime" (kept in the registrations file) or "transient".
    origin: str = "config"

    @property
    def options(self) -> PayloadOptions:
        return PayloadOptions(self.base64payload, self.no_payload and self.hook.startswith("auth_on_publish"))

    def as_table(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "endpoint": self.url,
            "base64payload": self.base64payload,
            "no_payload": self.no_payload,
            "response_timeout": self.response_timeout,
            "on_failure": self.on_failure,
        }


@attrs.frozen
class Defaults:
    """What an endpoint that does not say gets (the plugin's table)."""

    base64payload: bool = True
    response_timeout: int = 5000
    on_failure: str = "deny"


def check_url(url: str) -> None:
    """ValueError unless ``url`` is an http(s) URL httpx can post to."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"endpoint must be an http:// or https:// URL, not {url!r}")
    try:
        parsed = httpx.URL(url)
        httpx.Request("POST", parsed)
        host = parsed.host
        if not _is_address(host):
            host.encode("idna")  # what the connection will do: empty or bad labels fail here
    except Exception as exc:  # httpx.InvalidURL, UnicodeError, ValueError: any is a bad URL
        raise ValueError(f"endpoint {url!r} is not a usable URL: {exc}") from None
    if "%" in parsed.host:
        raise ValueError(f"endpoint {url!r} is not a usable URL: the host has characters a host cannot have")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_hook(hook: str) -> None:
    if hook not in WEBHOOK_NAMES:
        raise ValueError(f"unknown hook {hook!r} (hooks: {', '.join(sorted(WEBHOOK_NAMES))})")


def endpoint_from(table: Mapping[str, Any], defaults: Defaults, origin: str = "config") -> Endpoint:
    """An endpoint from a table of ENDPOINT_KEYS; ValueError names the key at fault."""
    if not isinstance(table, Mapping):
        raise ValueError(f"must be a table {{hook = ..., endpoint = ...}}, not {table!r}")
    unknown = sorted(set(table) - set(ENDPOINT_KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (keys: {', '.join(ENDPOINT_KEYS)})")
    for key in ("hook", "endpoint"):
        if not isinstance(table.get(key), str):
            raise ValueError(f"{key} is required (a string)")
    check_hook(table["hook"])
    check_url(table["endpoint"])
    for key in ("base64payload", "no_payload"):
        if not isinstance(table.get(key, False), bool):
            raise ValueError(f"{key} must be true or false, not {table[key]!r}")
    timeout = table.get("response_timeout", defaults.response_timeout)
    check_timeout(timeout)
    on_failure = table.get("on_failure", defaults.on_failure)
    check_policy(on_failure)
    return Endpoint(
        table["hook"],
        table["endpoint"],
        table.get("base64payload", defaults.base64payload),
        table.get("no_payload", False),
        timeout,
        on_failure,
        origin,
    )


def check_timeout(timeout: Any) -> None:
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 600_000:
        raise ValueError(f"response_timeout is in milliseconds, a whole number from 1 to 600000, not {timeout!r}")


def check_policy(on_failure: Any) -> None:
    if on_failure not in FAILURE_POLICIES:
        raise ValueError(f"on_failure must be 'deny' or 'next', not {on_failure!r}")


class Registrations:
    """The endpoints per hook, in calling order (module docstring)."""

    def __init__(self, configured: Sequence[Endpoint] = ()) -> None:
        self._endpoints: list[Endpoint] = []
        self._chains: dict[str, tuple[Endpoint, ...]] = {}
        self.file: Path | None = None
        for endpoint in configured:
            self.add(endpoint)

    def chain(self, hook: str) -> tuple[Endpoint, ...]:
        """The endpoints of ``hook`` in calling order; () when none."""
        return self._chains.get(hook, ())

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._endpoints)

    def add(self, endpoint: Endpoint, position: int | None = None) -> None:
        """Put ``endpoint`` in its hook's chain, last unless ``position`` says where
        among all endpoints; ValueError if it is there already."""
        if self.find(endpoint.hook, endpoint.url) is not None:
            raise ValueError(f"{endpoint.url} is already registered for {endpoint.hook}")
        self._endpoints.insert(len(self._endpoints) if position is None else position, endpoint)
        self._rebuild()

    def remove(self, hook: str, url: str) -> tuple[Endpoint, int]:
        """Take the endpoint out; it and where it stood. KeyError if it is not registered."""
        endpoint = self.find(hook, url)
        if endpoint is None:
            raise KeyError(f"{url} is not registered for {hook}")
        position = self._endpoints.index(endpoint)
        del self._endpoints[position]
        self._rebuild()
        return endpoint, position

    def find(self, hook: str, url: str) -> Endpoint | None:
        return next((e for e in self._endpoints if e.hook == hook and e.url == url), None)

    def _rebuild(self) -> None:
        chains: dict[str, list[Endpoint]] = {}
        for endpoint in self._endpoints:
            chains.setdefault(endpoint.hook, []).append(endpoint)
        self._chains = {hook: tuple(chain) for hook, chain in chains.items()}

    # -- the registrations file --------------------------------------------------------

    def load(self, file: Path, defaults: Defaults) -> int:
        """Add the endpoints kept in ``file`` (none if it does not exist); ValueError
        naming the file for one that cannot be used, which is then left as it is."""
        self.file = file
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise ValueError(f"{file}: cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{file}: not UTF-8 text") from None
        try:
            entries = json.loads(text)
            if not isinstance(entries, list):
                raise ValueError("must be a JSON list of endpoints")
            loaded = [endpoint_from(entry, defaults, "runtime") for entry in entries]
        except ValueError as exc:
            raise ValueError(f"{file}: {exc}") from None
        for endpoint in loaded:
            if self.find(endpoint.hook, endpoint.url) is None:  # also in the configuration now
                self.add(endpoint)
        return len(loaded)

    def save(self) -> None:
        """Write the run-time endpoints to the file: whole or not at all (a temporary
        file renamed over it), so a crash while writing loses nothing."""
        if self.file is None:
            return
        entries = [e.as_table() for e in self._endpoints if e.origin == "runtime"]
        write_atomically(self.file, json.dumps(entries, indent=2) + "\n")
