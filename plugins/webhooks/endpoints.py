"""Which endpoints are called for which hook, in which order, and where that is kept.

The configuration's endpoints come first, in the order they are written; endpoints
registered at run time (``ternmq-admin webhooks register``) follow in the order of
registration and are kept so that they come back after a restart, unless registered
``--transient``: as records of a store plugin (namespace ``webhooks``, one record per
registration, keyed ``"<hook> <endpoint>"``, with its place in the order) when one is
loaded and no ``registrations_file`` is configured, otherwise in a JSON file under the
data directory. The first time a store holds no registration, the data directory's
``webhooks.json`` is imported and renamed ``webhooks.json.imported``.
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
import trio

from ternmq.kernel import Service, read_json_list, set_aside_imported, write_atomically

from .wire import WEBHOOK_NAMES, PayloadOptions

log = logging.getLogger("ternmq.plugins.webhooks")

#: The records' namespace of run-time registrations (a store plugin's).
NAMESPACE = "webhooks"
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
        self.records: Service | None = None  # whose store keeps them (load_records)
        self._next_order = 0  # the order of the next registration kept as a record
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

    # -- where run-time registrations are kept ----------------------------------------

    def load(self, file: Path, defaults: Defaults) -> int:
        """Add the endpoints kept in ``file`` (none if it does not exist); ValueError
        naming the file for one that cannot be used, which is then left as it is."""
        self.file, self.records = file, None
        loaded = _read_file(file, defaults) or []
        for endpoint in loaded:
            if self.find(endpoint.hook, endpoint.url) is None:  # also in the configuration now
                self.add(endpoint)
        return len(loaded)

    async def load_records(self, service: Service, file: Path, defaults: Defaults) -> int:
        """Add the endpoints kept as records of ``service``'s store, which keeps the
        registrations from now on. When it holds none, ``file`` (the registrations file
        of the data directory) is imported once (``Service.import_pending``), then renamed
        ``<name>.imported``;
        ValueError naming it when it cannot be used (it is then left as it is). A record
        that cannot be used is logged and skipped."""
        records = await service.load_records(NAMESPACE)
        loaded: list[tuple[int, Endpoint]] = []
        if not await service.import_pending(NAMESPACE):
            if await trio.to_thread.run_sync(file.exists):
                log.warning("%s is not read: the store keeps the webhook registrations", file)
        else:
            imported = _read_file(file, defaults)
            if imported is not None:
                for order, endpoint in enumerate(imported):
                    service.save_record(NAMESPACE, record_key(endpoint), _record_value(endpoint, order))
                service.note_import(NAMESPACE, str(file))
                if await service.commit_store():
                    set_aside_imported(file, "webhook registrations", len(imported), log)
                else:
                    log.error("%s: the store failed to commit the registrations imported from it; the file stays", file)
                loaded = list(enumerate(imported))
        for key, value in records.items():
            try:
                order, endpoint = _from_record(value, defaults)
                if record_key(endpoint) != key:
                    raise ValueError(f"its key is not {record_key(endpoint)!r}")
            except (TypeError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
                log.error("record %r of %s cannot be used as a registration (%s): skipped", key, NAMESPACE, exc)
                continue
            loaded.append((order, endpoint))
        loaded.sort(key=lambda entry: entry[0])
        self.records, self.file = service, None
        self._next_order = max((order for order, _ in loaded), default=-1) + 1
        for _, endpoint in loaded:
            if self.find(endpoint.hook, endpoint.url) is None:  # also in the configuration now
                self.add(endpoint)
        return len(loaded)

    def keep(self, endpoint: Endpoint) -> None:
        """Keep a run-time registration: its record (committed by :meth:`commit`), or
        the whole file. OSError when it cannot be kept."""
        if self.records is None:
            self.save()
            return
        if not self.records.records_available:
            raise _unavailable()
        self.records.save_record(NAMESPACE, record_key(endpoint), _record_value(endpoint, self._next_order))
        self._next_order += 1

    def forget(self, endpoint: Endpoint) -> None:
        """Forget a run-time registration: its record, or the whole file. OSError when
        that cannot be done."""
        if self.records is None:
            self.save()
            return
        if not self.records.records_available:
            raise _unavailable()
        self.records.delete_record(NAMESPACE, record_key(endpoint))

    async def commit(self) -> None:
        """Return once what :meth:`keep` and :meth:`forget` did is durable (a file is
        at once). OSError when the store failed to commit it (the change is in force,
        and the store retries)."""
        if self.records is not None and not await self.records.commit_store():
            raise OSError("in force, but the store has not saved it yet (see the log; it retries)")

    def save(self) -> None:
        """Write the run-time endpoints to the file: whole or not at all (a temporary
        file renamed over it), so a crash while writing loses nothing."""
        if self.file is None:
            return
        entries = [e.as_table() for e in self._endpoints if e.origin == "runtime"]
        write_atomically(self.file, json.dumps(entries, indent=2) + "\n")


def record_key(endpoint: Endpoint) -> str:
    """A registration's record key: its hook and URL (a URL has no blank)."""
    return f"{endpoint.hook} {endpoint.url}"


def _record_value(endpoint: Endpoint, order: int) -> bytes:
    """A registration as a record: its table and its place among the registrations."""
    return json.dumps({"order": order, **endpoint.as_table()}, separators=(",", ":")).encode()


def _from_record(value: bytes, defaults: Defaults) -> tuple[int, Endpoint]:
    table = json.loads(value)
    if not isinstance(table, dict):
        raise ValueError("not a JSON object")
    order = table.pop("order", None)
    if not isinstance(order, int) or isinstance(order, bool):
        raise ValueError(f"order must be a whole number, not {order!r}")
    return order, endpoint_from(table, defaults, "runtime")


def _read_file(file: Path, defaults: Defaults) -> list[Endpoint] | None:
    """The endpoints of a registrations file; None when there is none; ValueError
    naming it when it cannot be used."""
    entries = read_json_list(file, "endpoints")
    if entries is None:
        return None
    try:
        return [endpoint_from(entry, defaults, "runtime") for entry in entries]
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}") from None


def _unavailable() -> OSError:
    return OSError(f"no store plugin keeps the records of {NAMESPACE} now (the store was unloaded)")
