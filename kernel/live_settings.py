"""The live settings of ``show`` and ``set``: the live ``[broker]`` keys, every
``[broker.limits]`` key, and the settings plugins registered (``register_config``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from .values.config import BrokerSettings, Limits, build_attrs

if TYPE_CHECKING:
    from .hooks.registries import SettingsRegistry


class ServedBroker(Protocol):
    """What the live settings need of the broker."""

    @property
    def settings(self) -> BrokerSettings: ...

    @property
    def plugin_settings(self) -> SettingsRegistry: ...

    def apply_settings(self, settings: BrokerSettings) -> None: ...


# The live [broker] keys (show/set); every [broker.limits] key is live too.
LIVE_BROKER_KEYS = ("allow_anonymous", "no_match", "hook_timeout", "notification_timeout")


def read(broker: ServedBroker) -> dict[str, Any]:
    """Every live setting by name, as ``show`` lists them."""
    values: dict[str, Any] = {name: getattr(broker.settings, name) for name in LIVE_BROKER_KEYS}
    values.update(attrs.asdict(broker.settings.limits))
    entries = broker.plugin_settings.entries
    values.update((name, entries[name].read()) for name in sorted(entries))
    return values


def write(broker: ServedBroker, values: Mapping[str, Any]) -> None:
    """Change live settings, as ``Service.set_live_settings`` says."""
    plugin_settings = broker.plugin_settings.entries
    limit_keys = attrs.fields_dict(Limits)
    for name in values:
        if name not in plugin_settings and name not in LIVE_BROKER_KEYS and name not in limit_keys:
            raise KeyError(name)
    for name in [k for k in values if k in plugin_settings]:
        try:
            plugin_settings[name].write(values[name])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name}: {exc}") from exc
    broker_table = {k: v for k, v in values.items() if k in LIVE_BROKER_KEYS}
    limit_table = {k: v for k, v in values.items() if k in limit_keys and k not in plugin_settings}
    settings = broker.settings
    limits = build_attrs(Limits, {**attrs.asdict(settings.limits), **limit_table}, "command line", "set")
    current = {f.name: getattr(settings, f.name) for f in attrs.fields(type(settings)) if f.name != "limits"}
    new = build_attrs(type(settings), {**current, **broker_table}, "command line", "set")
    broker.apply_settings(attrs.evolve(new, limits=limits))
