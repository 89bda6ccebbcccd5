"""The ``webhooks`` admin commands, in the shape of ``vmq-admin webhooks``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ternmq.kernel import AdminRegistry, Arguments, Table, Text

from .endpoints import check_hook, check_policy, check_timeout, check_url, endpoint_from

if TYPE_CHECKING:
    from . import Plugin

SHOW_COLUMNS = ("hook", "endpoint", "base64payload", "no_payload", "response_timeout", "on_failure", "origin")
CACHE_COLUMNS = ("stat", "endpoint", "hook", "value")
_ENDPOINT_KEYS = {"hook": "the hook (auth_on_register, on_publish, ...)", "endpoint": "the URL to POST to"}


def add_commands(registry: AdminRegistry, plugin: Plugin) -> None:
    registry.describe("webhooks", "Endpoints called for hooks over HTTP.")
    registry.describe("webhooks cache", "The cache of auth hook answers.")
    registry.add(
        "webhooks register",
        lambda service, args: _register(plugin, args),
        help="Call an endpoint for a hook (after those registered before). Kept across restarts unless --transient.",
        keys=_ENDPOINT_KEYS,
        flags={
            "base64payload": "payloads in base64 (true, the default) or as text (false)",
            "no_payload": "leave the payload out of auth_on_publish requests (default false)",
            "response_timeout": "milliseconds to wait for the reply (default: the plugin's, 5000)",
            "on_failure": "deny (the default) or next: what a failed call answers",
            "transient": "forget this endpoint when the broker stops",
        },
        required=("hook", "endpoint"),
    )
    registry.add(
        "webhooks deregister",
        lambda service, args: _deregister(plugin, args),
        help="Stop calling an endpoint for a hook.",
        keys=_ENDPOINT_KEYS,
        required=("hook", "endpoint"),
    )
    registry.add(
        "webhooks show",
        lambda service, args: Table(
            tuple({**e.as_table(), "origin": e.origin} for e in plugin.registrations), SHOW_COLUMNS
        ),
        help="The endpoints of each hook, in the order they are called.",
    )
    registry.add(
        "webhooks cache show",
        lambda service, args: _cache_show(plugin, args),
        help="Cache hits, misses and entries per endpoint and hook.",
        flags={"reset": "set the hit and miss counts back to 0 after showing them"},
    )
    registry.add(
        "webhooks cache clear",
        lambda service, args: _cache_clear(plugin),
        help="Forget every cached answer.",
    )


async def _register(plugin: Plugin, args: Arguments) -> Text:
    defaults = plugin.config.defaults
    table: dict[str, Any] = {"hook": args.keys["hook"], "endpoint": args.keys["endpoint"]}
    try:
        check_hook(table["hook"])
        check_url(table["endpoint"])
        for name in ("base64payload", "no_payload"):
            if args.flag(name) is not None:
                table[name] = args.bool_flag(name)
        table["response_timeout"] = args.int_flag("response_timeout", defaults.response_timeout, minimum=1)
        check_timeout(table["response_timeout"])
        table["on_failure"] = args.text_flag("on_failure", defaults.on_failure)
        check_policy(table["on_failure"])
        endpoint = endpoint_from(table, defaults, "transient" if args.bool_flag("transient") else "runtime")
        plugin.register(endpoint)
    except (ValueError, OSError) as exc:
        raise args.usage_error(str(exc)) from None
    await _committed(plugin, args)
    return Text("Done")


async def _committed(plugin: Plugin, args: Arguments) -> None:
    try:
        await plugin.registrations.commit()
    except OSError as exc:
        raise args.usage_error(str(exc)) from None


async def _deregister(plugin: Plugin, args: Arguments) -> Text:
    try:
        plugin.deregister(args.keys["hook"], args.keys["endpoint"])
    except KeyError as exc:
        raise args.usage_error(str(exc.args[0])) from None
    except OSError as exc:
        raise args.usage_error(f"not deregistered: the registrations cannot be saved: {exc}") from None
    await _committed(plugin, args)
    return Text("Done")


def _cache_show(plugin: Plugin, args: Arguments) -> Table:
    """Hits and misses since the last ``--reset`` (the metrics count on from the start,
    so that Prometheus never sees a counter go back), and the entries now."""
    entries = plugin.cache.entries_by()
    shown_from = plugin.cache_counts_reset
    rows: list[dict[str, Any]] = []
    for key, stats in sorted(plugin.caller.stats.items()):
        hits_before, misses_before = shown_from.get(key, (0, 0))
        hits, misses = stats.cache_hits - hits_before, stats.cache_misses - misses_before
        if hits or misses or key in entries:
            hook, url = key
            rows.append({"stat": "hits", "endpoint": url, "hook": hook, "value": hits})
            rows.append({"stat": "misses", "endpoint": url, "hook": hook, "value": misses})
            rows.append({"stat": "entries", "endpoint": url, "hook": hook, "value": entries.get(key, 0)})
    if args.bool_flag("reset"):
        for key, stats in plugin.caller.stats.items():
            shown_from[key] = (stats.cache_hits, stats.cache_misses)
    return Table(tuple(rows), CACHE_COLUMNS)


def _cache_clear(plugin: Plugin) -> Text:
    plugin.cache.clear()
    return Text("Done")
