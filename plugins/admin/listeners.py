"""The admin commands of listeners: show, start and stop."""

from __future__ import annotations

from typing import Any

import attrs
import trio

from ternmq.kernel import (
    AdminRegistry,
    Arguments,
    CommandError,
    ConfigError,
    ListenerConfig,
    Service,
    Table,
    Text,
    build_attrs,
    option_error,
    parse_value,
)


def _listener_show(service: Service, args: Arguments) -> Table:
    tls, mqtt = args.bool_flag("tls"), args.bool_flag("mqtt")
    rows = []
    for info in service.listeners():
        row: dict[str, Any] = {
            "name": info.name,
            "type": info.type,
            "status": info.status,
            "address": info.address,
            "port": info.port,
            "max_conns": info.max_connections,
            "active_conns": info.active_connections,
            "all_conns": info.total_connections,
            "mountpoint": info.mountpoint,
        }
        config = info.config
        if tls and config is not None:
            # VerneMQ's --tls columns; TLS 1.2 is the least any TLS listener accepts,
            # and there is no pre-shared-key TLS.
            row |= {
                "tls_version": "tlsv1.2+" if config.uses_tls else None,
                "certfile": config.certfile,
                "cafile": config.cafile,
                "keyfile": config.keyfile,
                "require_certificate": config.require_certificate,
                "use_identity_as_username": config.use_identity_as_username,
                "psk_support": False,
                "pskfile": None,
            }
        if mqtt:
            # Every listener speaks MQTT 3.1, 3.1.1 and 5; anonymous access is the
            # broker's setting, never a listener's.
            row |= {"allowed_protocol_versions": "3,4,5", "allow_anonymous_override": False}
        rows.append(row)
    return Table(tuple(rows))


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


async def _listener_start(service: Service, args: Arguments) -> Text:
    table = _listener_table(args)
    try:
        config = build_attrs(ListenerConfig, table, "command line", "listener start")
    except ConfigError as exc:
        raise option_error(exc, args) from None
    try:
        info = await service.start_listener(config)
    except (ConfigError, ValueError, OSError) as exc:
        # The OSError's strerror is the whole message ("listener x cannot listen on ..."),
        # without the "[Errno 98]" that str() puts in front.
        raise CommandError(exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) from None
    return Text(f"Done: {config.name} on {config.address}:{info.port}")


async def _listener_stop(service: Service, args: Arguments) -> Text:
    name = args.keys["name"]
    if not service.stop_listener(name, kill_sessions=args.bool_flag("kill_sessions")):
        raise CommandError(f"no running listener {name!r}")
    # Stopping cancels the listener's task; "Done" only once it has closed its port.
    with trio.move_on_after(5):
        await service.listener_stopped(name)
    return Text("Done")


def register(registry: AdminRegistry) -> None:
    registry.describe("listener", "Show, start and stop listeners.")
    registry.add(
        "listener show",
        _listener_show,
        help="List listeners.",
        flags={"tls": "add the TLS columns", "mqtt": "add the MQTT columns"},
    )
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
            "mountpoint": "the topic namespace of its clients",
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
