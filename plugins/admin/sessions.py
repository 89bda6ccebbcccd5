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
SUBSCRIPTION_ITEMS = ("topic", "qos", "rap", "no_local")


def _vernemq_items(info: SessionInfo) -> dict[str, Any]:
    """VerneMQ's names for what a session row shows, beside the SessionInfo fields:
    its queue and session items, so that ``session show --offline_messages ...`` written
    for VerneMQ runs. One queue per session (VerneMQ's ``fanout`` deliver mode), no
    plugin sessions."""
    online = info.is_online
    return {
        "is_offline": not online,
        "offline_messages": 0 if online else info.queued,
        "online_messages": info.queued if online else 0,
        "queue_size": info.queued,
        "num_sessions": 1 if online else 0,
        "statename": "online" if online else "offline",
        "deliver_mode": "fanout",
        "is_plugin": False,
        "waiting_acks": info.inflight,
        "queue_started_at": int(info.created_at),
        "session_started_at": int(info.connected_at) if online and info.connected_at else None,
    }


# The item names _vernemq_items adds (taken from a blank session's row).
_VERNEMQ_ITEMS = tuple(_vernemq_items(SessionInfo("", False, None, None, None, 4, True, None, 0, 0, 0, "")))


async def _session_show(service: Service, args: Arguments) -> Table:
    # Every node's (a cluster's other nodes through its plugin); subscription rows are
    # this node's sessions' only.
    rows = [{**attrs.asdict(info), **_vernemq_items(info)} for info in await service.all_sessions()]
    if any(item in args.flags for item in SUBSCRIPTION_ITEMS):
        rows = [
            {
                **row,
                "topic": sub.topic_filter,
                "qos": sub.qos,
                "rap": sub.retain_as_published,
                "no_local": sub.no_local,
            }
            for row in rows
            for sub in service.subscriptions(row["client_id"])
        ]
    known = {*attrs.fields_dict(SessionInfo), *_VERNEMQ_ITEMS, *SUBSCRIPTION_ITEMS}
    columns: list[str] = []
    limit = args.int_flag("limit", 100, minimum=1)
    for name, value in args.flags.items():
        if name in ("limit", "rowtimeout"):  # rowtimeout: VerneMQ's per-node wait, nothing here
            continue
        if name not in known:
            raise args.usage_error(f"unknown session item --{name} (known: {', '.join(sorted(known))})")
        if value is not True:
            keep = _column_filter(name, str(value), args)
            rows = [row for row in rows if keep(row.get(name))]
        columns.append(name)
    columns = columns or list(SESSION_COLUMNS)
    return Table(tuple({c: row.get(c) for c in columns} for row in rows[:limit]), tuple(columns))


def _known_session(service: Service, args: Arguments, client_id: str) -> None:
    """Refuse a client id without a session, or whose session is in another mountpoint
    than ``--mountpoint`` names (VerneMQ's sessions are per mountpoint; ours have one
    client id each, the flag only checks)."""
    info = service.session_info(client_id)
    mountpoint = args.text_flag("mountpoint")
    if info is None or mountpoint is not None and info.mountpoint != mountpoint:
        where = f" in mountpoint {mountpoint!r}" if mountpoint is not None else ""
        raise CommandError(f"no session with client id {client_id!r}{where}")


async def _session_disconnect(service: Service, args: Arguments) -> Text:
    client_id, cleanup = args.keys["client-id"], args.bool_flag("cleanup")
    if service.session_info(client_id) is None and args.text_flag("mountpoint") is None:
        # Not here: on another node of the cluster, if any has it (reason 0x98 there too).
        if await service.disconnect_anywhere(client_id, cleanup=cleanup):
            return Text("Done")
    _known_session(service, args, client_id)
    # The service's reason code: 0x98, administrative action.
    service.disconnect(client_id, cleanup=cleanup)
    return Text("Done")


def _session_disconnect_clients(service: Service, args: Arguments) -> Text:
    # dict.fromkeys: each client once, in the order given
    client_ids = list(dict.fromkeys(client_id for client_id in args.keys["client-ids"].split(",") if client_id))
    cleanup = args.bool_flag("cleanup")
    if not client_ids:
        raise args.usage_error("client-ids= names one client id or more, separated by commas")
    for client_id in client_ids:
        _known_session(service, args, client_id)  # all checked before any is disconnected
    for client_id in client_ids:
        service.disconnect(client_id, cleanup=cleanup)
    return Text("Done")


async def _session_unsubscribe(service: Service, args: Arguments) -> Text:
    client_id, topic_filter = args.keys["client-id"], args.keys["topic"]
    _known_session(service, args, client_id)
    # Checked first: an unsubscribe fires on_unsubscribe and stores the session.
    if all(sub.topic_filter != topic_filter for sub in service.subscriptions(client_id)):
        raise CommandError(f"{client_id!r} has no subscription {topic_filter!r}")
    await service.unsubscribe(client_id, [topic_filter])
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
        flags={"cleanup": "also delete its session", "mountpoint": "only if its session is in this mountpoint"},
    )
    registry.add(
        "session disconnect clients",
        _session_disconnect_clients,
        required=("client-ids",),
        help="Disconnect several clients (all must have a session; none is disconnected otherwise).",
        keys={"client-ids": "client ids separated by commas"},
        flags={"cleanup": "also delete their sessions", "mountpoint": "only sessions in this mountpoint"},
    )
    registry.add(
        "session unsubscribe",
        _session_unsubscribe,
        required=("client-id", "topic"),
        help="Remove one subscription of a session, online or not (on_unsubscribe fires).",
        keys={"client-id": "the client id", "topic": "the topic filter, as subscribed"},
        flags={"mountpoint": "only if its session is in this mountpoint"},
    )
