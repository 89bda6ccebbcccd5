"""The admin commands of listeners: show, start and stop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import trio

from .admin import AdminRegistry, Arguments, CommandError, Table, Text, option_error, parse_value
from .config import ConfigError, ListenerConfig, build_attrs

if TYPE_CHECKING:
    from .broker import Broker


def _listener_rows(broker: Broker) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "type": running.config.type,
            "status": running.status,
            "address": running.config.address,
            "port": running.port,
            "max_conns": running.config.max_connections,
            "active_conns": running.active,
            "all_conns": running.total,
        }
        for name, running in broker.listeners.items()
    ]


def _listener_show(broker: Broker, args: Arguments) -> Table:
    return Table(tuple(_listener_rows(broker)))


def _listener_table(args: Arguments) -> dict[str, Any]:
    """The listener's table from the command line, each value read as its key's type."""
    kinds = {field.name: field.type for field in attrs.fields(attrs.resolve_types(ListenerConfig))}
    table: dict[str, Any] = {}
    for name, value in args.keys.items():
        # A string key (name, address) keeps what was typed: name=1 is a name, not a number.
        table[name] = value if kinds.get(name) in (str, str | None) else parse_value(value)
    for name in args.flags:
        if kinds.get(name) is bool:
            table[name] = args.bool_flag(name)
        elif kinds.get(name) in (str, str | None):
            table[name] = args.text_flag(name)
        else:
            table[name] = parse_value(args.text_flag(name) or "")
    return table


async def _listener_start(broker: Broker, args: Arguments) -> Text:
    table = _listener_table(args)
    try:
        config = build_attrs(ListenerConfig, table, "command line", "listener start")
    except ConfigError as exc:
        raise option_error(exc, args) from None
    previous = broker.listeners.get(config.name)
    try:
        running = await broker.start_listener(config)
    except (ConfigError, ValueError, OSError) as exc:
        # start_listener lists the listener before it binds; one that could not start
        # leaves the table as it was (without a new row, or with the stopped one it replaced).
        failed = broker.listeners.get(config.name)
        if failed is not None and failed is not previous and failed.status != "running":
            if previous is None:
                del broker.listeners[config.name]
            else:
                broker.listeners[config.name] = previous
        # The OSError's strerror is the whole message ("listener x cannot listen on ..."),
        # without the "[Errno 98]" that str() puts in front.
        raise CommandError(exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) from None
    return Text(f"Done: {config.name} on {config.address}:{running.port}")


async def _listener_stop(broker: Broker, args: Arguments) -> Text:
    name = args.keys["name"]
    if not broker.stop_listener(name, kill_sessions=args.bool_flag("kill_sessions")):
        raise CommandError(f"no running listener {name!r}")
    # Stopping cancels the listener's task; "Done" only once it has closed its port.
    running = broker.listeners[name]
    with trio.move_on_after(5):
        await running.stopped.wait()
    return Text("Done")


def register_listener_commands(registry: AdminRegistry) -> None:
    registry.describe("listener", "Show, start and stop listeners.")
    registry.add("listener show", _listener_show, help="List listeners.")
    registry.add(
        "listener start",
        _listener_start,
        required=("name",),
        help="Start a listener (address=, port=, --type=tcp|tls|ws|wss, TLS flags).",
        keys={"name": "listener name", "address": "IP address", "port": "port (0 = any)"},
        flags={
            "type": "tcp, tls, ws or wss",
            "certfile": "PEM",
            "keyfile": "PEM",
            "cafile": "PEM",
            "require_certificate": "refuse TLS clients without a valid certificate (needs cafile)",
            "use_identity_as_username": "the client certificate's CN becomes the username",
            "max_connections": "limit",
            "path": "WebSocket path",
        },
    )
    registry.add(
        "listener stop",
        _listener_stop,
        required=("name",),
        help="Stop a listener.",
        keys={"name": "listener name"},
        flags={"kill_sessions": "also close its clients"},
    )
