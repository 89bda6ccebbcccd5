"""The admin commands of sessions: show and disconnect."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs

from ternmq.kernel import AdminRegistry, Arguments, CommandError, Service, SessionInfo, Table, Text, cell_text

SESSION_COLUMNS = ("client_id", "is_online", "mountpoint", "peer_host", "peer_port", "user")


def _column_filter(name: str, wanted: str, args: Arguments) -> Callable[[Any], bool]:
    """``--name=value`` keeps cells equal to value; ``--name=~regex`` cells the regex matches."""
    if not wanted.startswith("~"):
        return lambda value: cell_text(value) == wanted
    try:
        pattern = re.compile(wanted[1:])
    except re.error as exc:
        raise args.usage_error(f"--{name}={wanted}: not a regular expression ({exc})") from None
    return lambda value: pattern.search("" if value is None else str(value)) is not None


# VerneMQ's per-subscription items: asking for one lists a row per subscription.
SUBSCRIPTION_ITEMS = ("topic", "qos")


def _session_show(service: Service, args: Arguments) -> Table:
    rows = [attrs.asdict(info) for info in service.sessions()]
    if any(item in args.flags for item in SUBSCRIPTION_ITEMS):
        rows = [
            {**row, "topic": sub.topic_filter, "qos": sub.qos}
            for row in rows
            for sub in service.subscriptions(row["client_id"])
        ]
    known = set(attrs.fields_dict(SessionInfo)) | set(SUBSCRIPTION_ITEMS)
    columns: list[str] = []
    limit = args.int_flag("limit", 100, minimum=1)
    for name, value in args.flags.items():
        if name == "limit":
            continue
        if name not in known:
            raise args.usage_error(f"unknown session item --{name} (known: {', '.join(sorted(known))})")
        if value is not True:
            keep = _column_filter(name, str(value), args)
            rows = [row for row in rows if keep(row.get(name))]
        columns.append(name)
    columns = columns or list(SESSION_COLUMNS)
    return Table(tuple({c: row.get(c) for c in columns} for row in rows[:limit]), tuple(columns))


def _session_disconnect(service: Service, args: Arguments) -> Text:
    client_id = args.keys["client-id"]
    # The service's reason code: 0x98, administrative action.
    if not service.disconnect(client_id, cleanup=args.bool_flag("cleanup")):
        raise CommandError(f"no session with client id {client_id!r}")
    return Text("Done")


def register(registry: AdminRegistry) -> None:
    registry.describe("session", "Show and disconnect client sessions.")
    registry.add(
        "session show",
        _session_show,
        any_flags=True,
        help="List sessions. --<item> adds a column, --<item>=value filters, --<item>=~regex matches; --limit=N. "
        "--topic or --qos lists a row per subscription.",
    )
    registry.add(
        "session disconnect",
        _session_disconnect,
        required=("client-id",),
        help="Disconnect a client (MQTT 5 reason 0x98).",
        keys={"client-id": "the client id"},
        flags={"cleanup": "also delete its session"},
    )
