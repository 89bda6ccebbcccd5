"""What plugins register at load: metrics (``register_metrics``), live settings
(``register_config``) and HTTP routes of the management API (``register_api_routes``).
All are removed again when the plugin unloads.

* ``registry.counter(name, read, help)`` / ``registry.gauge(...)``: a metric whose value
  ``read()`` returns when metrics are shown (``metrics show``, later Prometheus). With
  ``labels=("hook", "endpoint")``, ``read()`` returns one value per label values instead,
  ``{("auth_on_register", "http://..."): 3, ...}``, shown as
  ``counter.NAME{hook="auth_on_register",endpoint="http://..."}``.
* ``routes.add(rule, handler, methods=("GET",), scope="mgmt")``: ``await handler()``
  answers ``rule`` (an exact path) while the management API is loaded, behind a key of
  ``scope``; it reads the request from ``quart.request`` and returns what a quart view
  returns (a dict is JSON).
* ``settings.add(name, read, write, help)``: a live setting for ``show``/``set``;
  ``write(value)`` receives the value parsed as TOML would (``5``, ``true``, ``"x"``)
  and raises ValueError to refuse it.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, Generic, Protocol, Self, TypeVar

import attrs

Number = int | float
#: What a metric's reader returns: a value, or (with labels) a value per label values.
Reading = Number | Mapping[tuple[str, ...], Number]


@attrs.frozen
class Metric:
    name: str
    kind: str  # "counter" or "gauge"
    read: Callable[[], Reading]
    help: str = ""
    owner: str = ""
    labels: tuple[str, ...] = ()

    def reading(self) -> Number | dict[tuple[str, ...], Number] | None:
        """What ``read()`` returns, checked: a number, or with labels a mapping of
        label-value tuples (as strings) to numbers; None when the reader raises or returns
        anything else (a plugin's broken reader must not break a listing)."""
        try:
            reading = self.read()
        except Exception:
            return None
        if not self.labels:
            return reading if isinstance(reading, (int, float)) and not isinstance(reading, bool) else None
        if not isinstance(reading, Mapping):
            return None
        checked: dict[tuple[str, ...], Number] = {}
        for values, value in reading.items():
            if not isinstance(values, tuple) or len(values) != len(self.labels) or not _is_number(value):
                return None
            checked[tuple(str(v) for v in values)] = value
        return checked

    def total(self) -> Number | None:
        """The value, or with labels the sum over them (what ``metrics show`` and $SYS
        show); None when the reader fails."""
        reading = self.reading()
        return sum(reading.values()) if isinstance(reading, dict) else reading

    def samples(self) -> dict[str, Number]:
        """``{"NAME": value}``, or ``{'NAME{label="value",...}': value, ...}`` with labels;
        a reader that fails (``reading()`` is None) reads -1."""
        reading = self.reading()
        if reading is None:
            return {self.name: -1}
        if not isinstance(reading, dict):
            return {self.name: reading}
        return {f"{self.name}{{{label_text(self.labels, values)}}}": value for values, value in reading.items()}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """``hook="a",endpoint="b"`` (Prometheus' label syntax, quotes and backslashes escaped)."""

    def escaped(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return ",".join(f'{name}="{escaped(value)}"' for name, value in zip(names, values, strict=True))


@attrs.frozen
class Setting:
    name: str
    read: Callable[[], object]
    # Any: the value is whatever TOML parsing gave; the plugin's ``write`` checks it
    # (ValueError refuses it), so its parameter may be typed as what it accepts.
    write: Callable[[Any], None]
    help: str = ""
    owner: str = ""


class OwnerTracked(Protocol):
    """A registry whose entries remember the plugin that added them (the plugin host
    hands each plugin a view that records it, and removes its entries at unload)."""

    def owned_by(self, owner: str) -> Self: ...

    def remove_owner(self, owner: str) -> None: ...


class _Entry(Protocol):
    @property
    def owner(self) -> str: ...


_Key = TypeVar("_Key", bound=Hashable)
_Value = TypeVar("_Value", bound=_Entry)


class Owned(Generic[_Key, _Value]):
    """Base of the plugin-facing registries: entries remember which plugin added them."""

    def __init__(self) -> None:
        self.entries: dict[_Key, _Value] = {}
        self._owner = ""

    def owned_by(self, owner: str) -> Self:
        """A view sharing this registry's contents whose additions record ``owner``."""
        view = copy.copy(self)  # shallow: the dicts stay shared
        view._owner = owner
        return view

    def remove_owner(self, owner: str) -> None:
        for name in [name for name, entry in self.entries.items() if entry.owner == owner]:
            del self.entries[name]

    def _put(self, name: _Key, entry: _Value) -> None:
        if name in self.entries:
            raise ValueError(f"{name!r} is already registered")
        self.entries[name] = entry


class MetricsRegistry(Owned[str, Metric]):
    """Metrics that plugins add (the kernel's own counters are in ``Broker.metrics``, values/counters.py)."""

    def counter(self, name: str, read: Callable[[], Reading], help: str = "", *, labels: tuple[str, ...] = ()) -> None:
        self._put(name, Metric(name, "counter", read, help, self._owner, labels))

    def gauge(self, name: str, read: Callable[[], Reading], help: str = "", *, labels: tuple[str, ...] = ()) -> None:
        self._put(name, Metric(name, "gauge", read, help, self._owner, labels))


class SettingsRegistry(Owned[str, Setting]):
    """Live settings that plugins add for ``show``/``set``."""

    def add(self, name: str, read: Callable[[], object], write: Callable[[Any], None], help: str = "") -> None:
        self._put(name, Setting(name, read, write, help, self._owner))


#: Paths of the management API itself, which a plugin's route may not take.
RESERVED_API_PATHS = (
    "/api/v1/",
    "/api/v2/",
    "/api/v3/",
    "/api/v5/",
    "/api-docs",
    "/metrics",
    "/health",
    "/status",
    "/restmqtt/",
)
#: The API's key scopes (VerneMQ's), one of which guards each route.
API_SCOPES = ("mgmt", "status", "metrics", "health", "api2", "httppub")


@attrs.frozen
class ApiRoute:
    rule: str
    method: str
    handler: Callable[[], Awaitable[Any]]
    scope: str = "mgmt"
    owner: str = ""


class ApiRoutes(Owned[tuple[str, str], ApiRoute]):
    """HTTP routes plugins add to the management API, by (method, path)."""

    def add(
        self,
        rule: str,
        handler: Callable[[], Awaitable[Any]],
        *,
        methods: tuple[str, ...] = ("GET",),
        scope: str = "mgmt",
    ) -> None:
        if not rule.startswith("/") or any(
            rule.startswith(reserved) or rule == reserved.rstrip("/") for reserved in RESERVED_API_PATHS
        ):
            raise ValueError(f"{rule!r}: a path from / that is not the API's own ({', '.join(RESERVED_API_PATHS)})")
        if scope not in API_SCOPES:
            raise ValueError(f"scope {scope!r} is not one of {', '.join(API_SCOPES)}")
        for method in methods:
            self._put((method.upper(), rule), ApiRoute(rule, method.upper(), handler, scope, self._owner))

    def find(self, method: str, path: str) -> ApiRoute | None:
        return self.entries.get((method.upper(), path))
