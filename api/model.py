"""The query model behind the EMQX dialects (/api/v5, /api/v3, /api/v2): what the broker
has (clients, subscriptions, topics, retained messages, plugins, listeners, stats), read
through the service face, filtered and paged once; each dialect only names the fields
and wraps the pages its own way.

A list is read whole from the service face and then filtered: the broker holds it in
memory already, and a filter such as ``like_clientid`` has to look at every entry anyway.
"""

from __future__ import annotations

import os
import resource
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs

from ternmq import __version__
from ternmq.kernel import (
    CommandError,
    ConfigError,
    Message,
    PluginError,
    Service,
    SessionInfo,
    Table,
    Text,
    TopicSubscription,
    topic_matches,
)

T = TypeVar("T")
Number = int | float

#: EMQX's bounds of ``limit``.
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100
#: MQTT's protocol names by level, as EMQX reports them.
PROTOCOL_NAMES = {3: "MQIsdp", 4: "MQTT", 5: "MQTT"}
STARTED_AT = time.time()


def rfc3339(moment: float | None) -> str | None:
    """A Unix time as EMQX writes it: ``2026-11-29T19:00:00.123+00:00``."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


@attrs.frozen
class Page:
    """One page of a list: the items, whether more follow, and the count of all items
    (None where counting would be a full scan of a fuzzy filter, as EMQX leaves it out)."""

    items: tuple[Any, ...]
    page: int
    limit: int
    count: int | None
    hasnext: bool


def paged(items: Sequence[T], page: int, limit: int, *, counted: bool = True) -> Page:
    start = (page - 1) * limit
    chosen = tuple(items[start : start + limit])
    return Page(chosen, page, limit, len(items) if counted else None, start + limit < len(items))


# -- clients -------------------------------------------------------------------------------


@attrs.frozen
class ClientQuery:
    """EMQX's filters of ``GET /clients``: equality on some fields, ``like_`` substrings,
    ``gte_``/``lte_`` bounds on the times (Unix seconds)."""

    client_ids: tuple[str, ...] = ()
    usernames: tuple[str, ...] = ()
    ip_address: str | None = None
    conn_state: str | None = None  # connected, idle or disconnected
    clean_start: bool | None = None
    proto_ver: int | None = None
    node: str | None = None
    like_clientid: str | None = None
    like_username: str | None = None
    gte_created_at: float | None = None
    lte_created_at: float | None = None
    gte_connected_at: float | None = None
    lte_connected_at: float | None = None

    @property
    def fuzzy(self) -> bool:
        return self.like_clientid is not None or self.like_username is not None

    def matches(self, info: SessionInfo) -> bool:
        state = "connected" if info.is_online else "disconnected"
        return (
            (not self.client_ids or info.client_id in self.client_ids)
            and (not self.usernames or info.user in self.usernames)
            and (self.ip_address is None or info.peer_host == self.ip_address)
            and (self.conn_state is None or self.conn_state == state)
            and (self.clean_start is None or info.clean_session == self.clean_start)
            and (self.proto_ver is None or info.protocol == self.proto_ver)
            and (self.node is None or info.node == self.node)
            and (self.like_clientid is None or self.like_clientid in info.client_id)
            and (self.like_username is None or self.like_username in (info.user or ""))
            and _within(info.created_at, self.gte_created_at, self.lte_created_at)
            and _within(info.connected_at, self.gte_connected_at, self.lte_connected_at)
        )


def _within(value: float | None, low: float | None, high: float | None) -> bool:
    if low is None and high is None:
        return True
    return value is not None and (low is None or value >= low) and (high is None or value <= high)


def clients(
    service: Service, query: ClientQuery, page: int, limit: int, *, sessions: Sequence[SessionInfo] | None = None
) -> Page:
    """A page of the sessions ``query`` matches, oldest first: of ``sessions`` (EMQX's
    ``/api/v5/clients``: every node's, ``Service.all_sessions()``), else this node's."""
    found = [info for info in (service.sessions() if sessions is None else sessions) if query.matches(info)]
    found.sort(key=lambda info: info.created_at)
    return paged(found, page, limit, counted=not query.fuzzy)


# -- subscriptions and topics ------------------------------------------------------------------


@attrs.frozen
class SubscriptionRow:
    client_id: str
    node: str
    subscription: TopicSubscription

    @property
    def topic(self) -> str:
        """The filter as subscribed (``$share/group/filter`` for a shared one)."""
        return self.subscription.topic_filter

    @property
    def share_group(self) -> str | None:
        return self.topic.split("/", 2)[1] if self.topic.startswith("$share/") else None

    @property
    def route(self) -> str:
        """The filter messages are routed by (a shared subscription's, without the group)."""
        return self.topic.split("/", 2)[2] if self.topic.startswith("$share/") else self.topic


@attrs.frozen
class SubscriptionQuery:
    client_id: str | None = None
    qos: int | None = None
    topic: str | None = None  # the filter, exactly
    match_topic: str | None = None  # a topic name the filters match
    share_group: str | None = None

    def matches(self, row: SubscriptionRow) -> bool:
        return (
            (self.client_id is None or row.client_id == self.client_id)
            and (self.qos is None or row.subscription.qos == self.qos)
            and (self.topic is None or row.topic == self.topic)
            and (self.share_group is None or row.share_group == self.share_group)
            and (self.match_topic is None or topic_matches(row.route, self.match_topic))
        )


def subscription_rows(service: Service, client_ids: Iterable[str] | None = None) -> list[SubscriptionRow]:
    node = service.node_name
    ids = client_ids if client_ids is not None else [info.client_id for info in service.sessions()]
    return [SubscriptionRow(client_id, node, sub) for client_id in ids for sub in service.subscriptions(client_id)]


def subscriptions(service: Service, query: SubscriptionQuery, page: int, limit: int) -> Page:
    ids = [query.client_id] if query.client_id is not None else None
    return paged([row for row in subscription_rows(service, ids) if query.matches(row)], page, limit)


def routes(service: Service) -> list[str]:
    """The topic filters this node routes by (EMQX's topics, EMQ's routes), sorted."""
    return sorted({row.route for row in subscription_rows(service)})


# -- retained messages --------------------------------------------------------------------------


async def retained(service: Service, topic_filter: str, page: int, limit: int) -> Page:
    return paged(list(await service.retained(topic_filter)), page, limit)


def message_id(message: Message) -> str:
    """An id for a retained message (EMQX shows its msgid; ours is derived, stable while
    the message is kept)."""
    return f"{int(message.created_at * 1_000_000):X}{zlib.crc32(message.topic.encode()) & 0xFFFF:04X}"


# -- the node ---------------------------------------------------------------------------------------


def totals(service: Service) -> dict[str, Number]:
    """Each metric by its bare name, summed over its labels (-1 for a broken reader)."""
    return {m.name: total if (total := m.total()) is not None else -1 for m in service.metric_list()}


def by_label(service: Service, name: str) -> Mapping[tuple[str, ...], Number]:
    """A labelled metric's values per label values (empty for none or a broken reader)."""
    reading = next((m.reading() for m in service.metric_list() if m.name == name), None)
    return reading if isinstance(reading, dict) else {}


def stats(service: Service) -> dict[str, int]:
    """EMQX's ``name.count`` / ``name.max`` figures (the max is the current value: the
    broker keeps no high-water marks)."""
    values = totals(service)
    subscriptions = int(values.get("subscriptions", 0))
    rows = subscription_rows(service)
    topics = len({row.route for row in rows})
    sessions = int(values.get("sessions", 0))
    figures = {
        "connections": sessions,
        "live_connections": int(values.get("clients_online", 0)),
        "sessions": sessions,
        "subscriptions": subscriptions,
        "subscriptions.shared": sum(1 for row in rows if row.share_group is not None),
        "suboptions": subscriptions,
        "subscribers": subscriptions,
        "topics": topics,
        "routes": topics,
        "retained": int(values.get("retained_messages", 0)),
    }
    return {f"{name}.{suffix}": value for name, value in figures.items() for suffix in ("count", "max")}


def metrics(service: Service) -> dict[str, Number]:
    """EMQX's metric names for what the broker counts (labelled counts summed)."""
    values = totals(service)
    names = {
        "bytes.received": "bytes_received",
        "bytes.sent": "bytes_sent",
        "packets.received": "packets_received",
        "packets.sent": "packets_sent",
        "messages.received": "publish_received",
        "messages.sent": "deliveries",
        "messages.dropped": "messages_dropped",
        "messages.publish": "publish_received",
        "messages.retained": "retained_messages",
        "client.connected": "connections_accepted",
        "client.auth.failure": "connect_refused",
        "authorization.deny": "publish_denied",
        "session.expired": "sessions_expired",
    }
    return {theirs: values.get(ours, 0) for theirs, ours in names.items()}


def node(service: Service) -> dict[str, Any]:
    """This node, as EMQX's ``/nodes`` lists one."""
    values = totals(service)
    return {
        "node": service.node_name,
        "node_status": "running",
        "version": __version__,
        "edition": "Opensource",
        "uptime": int((time.time() - STARTED_AT) * 1000),
        "connections": int(values.get("sessions", 0)),
        "live_connections": int(values.get("clients_online", 0)),
        "role": "core",
        "sys_path": str(service.data_dir),
    }


def plugin_listing(service: Service, stopped: Callable[[], Iterable[str]]) -> list[dict[str, Any]]:
    """Loaded plugins (running) and those the API stopped in this run (stopped)."""
    rows = [
        {"name": p.name, "version": p.version, "running": True, "source": p.source, "description": p.kind}
        for p in service.plugins()
    ]
    names = {row["name"] for row in rows}
    rows += [
        {"name": n, "version": "", "running": False, "source": "", "description": ""}
        for n in stopped()
        if n not in names
    ]
    return rows


# -- plugins started and stopped at run time ---------------------------------------------------


class ControlError(Exception):
    """Why a plugin or ban change was refused; ``kind`` is how dialects word it:
    ``not_found``, ``exists``, ``bad`` or ``unavailable``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@attrs.define
class Stopped:
    """A plugin stopped through the API: how to start it again as it was."""

    table: dict[str, Any]
    path: str | None = None


def plugin_name(service: Service, stopped: Mapping[str, Stopped], name: str) -> str:
    """The plugin a path names: its name, or EMQX's ``name-version``."""
    if name in stopped:
        return name
    for info in service.plugins():
        if name in (info.name, f"{info.name}-{info.version}"):
            return info.name
    return name


async def stop_plugin(service: Service, stopped: dict[str, Stopped], name: str) -> None:
    """Unload a plugin and remember its table and path, to start it again as it was."""
    loaded = {info.name: info for info in service.plugins()}
    if name not in loaded:
        if name in stopped:
            raise ControlError("stopped", f"plugin {name} is stopped already")
        raise ControlError("not_found", f"no plugin {name!r} is loaded")
    try:
        await service.unload_plugin(name)
    except PluginError as exc:
        raise ControlError("bad", str(exc)) from None
    stopped[name] = Stopped(dict(loaded[name].table or {}), loaded[name].path)


async def start_plugin(service: Service, stopped: dict[str, Stopped], name: str) -> None:
    """Load a plugin: one stopped at run time with its table and path, another by name."""
    if any(info.name == name for info in service.plugins()):
        raise ControlError("running", f"plugin {name} is running already")
    known = stopped.get(name)
    try:
        if known is None:
            await service.load_plugin(name, None, source_name="api")
        else:
            await service.load_plugin(name, known.table, path=known.path, source_name="api")
    except (PluginError, ConfigError) as exc:
        not_found = name not in stopped and isinstance(exc, PluginError) and "installed" in str(exc)
        raise ControlError("not_found" if not_found else "bad", str(exc)) from None
    stopped.pop(name, None)


# -- bans (the banned plugin's admin commands) ---------------------------------------------------

BAN_COLUMNS = ("as", "who", "by", "reason", "at", "until")


async def _banned(service: Service, argv: list[str]) -> Table | Text:
    try:
        return await service.run_command(["banned", *argv])
    except CommandError as exc:
        message = str(exc)
        if message.startswith("unknown command"):
            raise ControlError("unavailable", "the banned plugin is not loaded") from None
        kind = "exists" if "already" in message else "not_found" if "no such ban" in message else "bad"
        raise ControlError(kind, message) from None


async def bans(service: Service) -> list[dict[str, Any]]:
    result = await _banned(service, ["show"])
    return [{key: row.get(key) for key in BAN_COLUMNS} for row in getattr(result, "rows", ())]


async def ban(service: Service, kind: str, who: str, **details: str) -> dict[str, Any]:
    """Add a ban (``by``, ``reason``, ``until`` as the banned plugin takes them)."""
    argv = ["add", f"as={kind}", f"who={who}", *(f"{key}={value}" for key, value in details.items())]
    result = await _banned(service, argv)
    return {key: result.rows[0].get(key) for key in BAN_COLUMNS} if isinstance(result, Table) else {}


async def unban(service: Service, kind: str, who: str) -> None:
    await _banned(service, ["delete", f"as={kind}", f"who={who}"])


async def clear_bans(service: Service) -> None:
    await _banned(service, ["clear"])


# -- figures as EMQX 3 and EMQ 2 wrote them ---------------------------------------------------------


def local_time(moment: float | None) -> str | None:
    """``YYYY-MM-DD HH:MM:SS`` in local time, as EMQX 3 and EMQ 2 print times."""
    return None if moment is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def human_size(size: int) -> int | str:
    """Bytes as EMQX 3 and EMQ 2 show memory: ``12.34M`` (plain below a KiB)."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size > scale:
            return f"{size / scale:.2f}{unit}"
    return size


def resident_memory() -> tuple[int, int]:
    """This process's resident memory now and at its peak, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            now = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        now = peak
    return now, max(now, peak)
