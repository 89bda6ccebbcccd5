"""The admin commands of live settings: show and set."""

from __future__ import annotations

from typing import Any

from ternmq.kernel import (
    AdminRegistry,
    Arguments,
    CommandError,
    ConfigError,
    Service,
    Table,
    Text,
    option_error,
    parse_value,
)


def _show(service: Service, args: Arguments) -> Table:
    for name, value in args.flags.items():
        if value is not True:
            raise args.usage_error(f"show takes --{name} without a value (set {name}={value} changes it)")
    live = service.live_settings()
    row: dict[str, Any] = {"node": service.node_name}
    for name in list(args.flags) or list(live):
        if name not in live:
            raise CommandError(f"unknown setting {name}")
        row[name] = live[name]
    return Table((row,), tuple(row))


def _set(service: Service, args: Arguments) -> Text:
    if not args.keys:
        raise args.usage_error("set needs key=value")
    try:
        service.set_live_settings({name: parse_value(value) for name, value in args.keys.items()})
    except KeyError as exc:
        raise CommandError(f"unknown setting {exc.args[0]}") from None
    except ConfigError as exc:
        raise option_error(exc, args) from None
    except ValueError as exc:
        # A plugin's setting refused its value; the message names it.
        raise CommandError(str(exc)) from None
    return Text("Done")


def register(registry: AdminRegistry) -> None:
    registry.add("show", _show, any_flags=True, help="Show live settings: show --allow_anonymous --max_inflight.")
    registry.add("set", _set, any_keys=True, help="Change live settings: set allow_anonymous=false max_inflight=64.")
