"""Banned clients, by client id, user name or address (the ``banned`` built-in plugin).

EMQX's banned list in ternmq's shape. A ban has a kind (EMQX's ``as``) and a value
(``who``):

* ``clientid``, ``username``: the exact client id or user name;
* ``peerhost``: the client's IP address;
* ``clientid_re``, ``username_re``: a Python regular expression found anywhere in the
  client id or user name (``re.search``, as EMQX's ``re:run``; anchor it with ``^...$``
  for a whole match);
* ``peerhost_net``: a CIDR network (``10.0.0.0/8``; host bits are ignored).

and ``by`` (who banned), ``reason``, ``at`` (when) and ``until`` (Unix time, or forever).
A ban whose ``until`` has passed no longer applies: it is dropped from memory when it is
next met (a CONNECT, ``banned show``), from the file or the store at its next write.

``auth_on_register`` is answered first (``tryfirst``): a banned client is refused with
0x8A banned (MQTT 3.1.1: return code 5, not authorized); any other gets no answer, and
the next plugin decides. With no bans the check is one ``len``. Adding a ban disconnects
the matching connected clients at once; MQTT 5 clients get DISCONNECT 0x98
administrative action, since MQTT 5 allows 0x8A in CONNACK only. Their sessions stay.

Admin commands (also the management API's): ``banned add as=KIND who=VALUE [by=...]
[reason=...] [until=ISO-8601|UNIX-SECONDS|infinity]``, ``banned delete as=KIND
who=VALUE``, ``banned show``, ``banned clear``. Metrics: ``banned_entries`` (gauge),
``banned_refused`` (counter).

Where bans are kept:

* with a store plugin loaded before this one (``sqlite_store``: ``Service.records_available``
  at start) and no ``file`` configured, in the store's records: namespace ``banned``,
  one record per ban, key ``KIND:WHO`` (``clientid:bot-17``), value the JSON of
  :meth:`Ban.to_json`. A change saves and deletes the records that differ and returns
  once the store has made them durable (``Service.commit_store``). A record that cannot
  be read is logged with its key and skipped (left in the store); expired bans are
  deleted at start, as at a change. Migration: at start, when the store holds no ban
  records and ``<data_dir>/banned.json`` exists, its bans are imported, committed, read
  back, and the file is renamed ``banned.json.imported`` (logged); a file that cannot
  be used fails the load as below, and is left as it is.
* otherwise in a JSON file, written whole at every change: ``file`` (default none:
  ``<data_dir>/banned.json``), relative to the configuration file's folder. A file that
  cannot be used fails the load, naming it, and is left as it is; it is read and
  written in a worker thread. A configured ``file`` is used even with a store.

Addresses are compared normalized, the client's as the ban's: no IPv6 scope (``%eth0``),
an IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) as its IPv4 address. ``until`` must be
before the year 10000; in the file, a later one (``Infinity`` too) is read as forever.

A pattern runs on every CONNECT in the event loop, and ``re`` has no timeout: at most 256
characters, no repeated group holding a quantifier or ``|`` (``(a+)+``), at most two
unbounded quantifiers (three after a leading ``^``), searched in the first 256 characters
of a client id or user name only (a longer one is matched as if it ended there).
Details: ``_banned_values``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import trio

from ternmq.kernel import (
    AdminRegistry,
    Arguments,
    ClientInfo,
    CommandError,
    Deny,
    Service,
    Table,
    Text,
    deny,
    hookimpl,
    read_json_list,
    set_aside_imported,
    write_atomically,
)
from ternmq.plugins._banned_values import (
    MAX_SUBJECT,
    Address,
    Network,
    check_pattern,
    normalized_address,
    normalized_network,
)

log = logging.getLogger("ternmq.plugins.banned")

BANNED = 0x8A
# MQTT 5 allows 0x8A in CONNACK only; a DISCONNECT says why with this one.
ADMINISTRATIVE_ACTION = 0x98
EXACT_KINDS = ("clientid", "username", "peerhost")
PATTERN_KINDS = ("clientid_re", "username_re")
KINDS = (*EXACT_KINDS, *PATTERN_KINDS, "peerhost_net")
COLUMNS = ("as", "who", "by", "reason", "at", "until")
FILE_NAME = "banned.json"
NAMESPACE = "banned"  # the store's records of bans: KIND:WHO -> Ban.to_json as JSON
DEFAULT_BY = "ternmq-admin"
FOREVER = "infinity"  # how EMQX shows an until that never comes
END_OF_TIME = 253402300800  # 10000-01-01T00:00:00Z: RFC 3339 cannot show it


@attrs.frozen
class Config:
    file: Path | None = None


def rfc3339(moment: float) -> str:
    """Unix time as ``2026-11-29T19:00:00Z`` (whole seconds, UTC)."""
    return datetime.fromtimestamp(int(moment), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clipped(text: str) -> str:
    """``text`` short enough for a message."""
    return text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"


def _showable(ban: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    """A ban's times are in RFC 3339's range: ``banned show`` can list every ban."""
    if value is not None and not 0 <= value < END_OF_TIME:  # NaN too
        raise ValueError(f"{attribute.name} must be Unix seconds from 1970 to the year 9999, not {value!r}")


class NotSaved(CommandError):
    """A change in force that the store failed to commit (it retries)."""


@attrs.frozen
class Ban:
    kind: str  # EMQX's "as"
    who: str  # normalized (see normalized_who)
    by: str = DEFAULT_BY
    reason: str = ""
    at: float = attrs.field(default=0.0, validator=_showable)
    until: float | None = attrs.field(default=None, validator=_showable)

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.who

    def expired(self, now: float) -> bool:
        return self.until is not None and self.until <= now

    @property
    def record_key(self) -> str:
        """The key of the ban's record in the store: ``KIND:WHO`` (no kind has a colon)."""
        return f"{self.kind}:{self.who}"

    def record(self) -> bytes:
        """The value of the ban's record in the store: :meth:`to_json` as JSON."""
        return json.dumps(self.to_json(), allow_nan=False, separators=(",", ":")).encode()

    def to_json(self) -> dict[str, Any]:
        """The ban as the file keeps it: times as Unix seconds, None for forever."""
        return dict(zip(COLUMNS, (self.kind, self.who, self.by, self.reason, self.at, self.until), strict=True))

    def row(self) -> dict[str, str]:
        """The ban as ``banned show`` lists it: times as RFC 3339, EMQX's infinity for forever."""
        until = FOREVER if self.until is None else rfc3339(self.until)
        return {**self.to_json(), "at": rfc3339(self.at), "until": until}


def checked_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"as={kind}: unknown kind (kinds: {', '.join(KINDS)})")
    return kind


def normalized_who(kind: str, who: str) -> str:
    """``who`` as kept, so that two spellings of one address are one ban; ValueError
    when it is no value of its kind."""
    if not who:
        raise ValueError("who= must not be empty")
    try:
        if kind == "peerhost":
            return str(normalized_address(who))
        if kind == "peerhost_net":
            return str(normalized_network(who))
    except ValueError:
        wanted = "an IP address" if kind == "peerhost" else "a CIDR network (10.0.0.0/8)"
        raise ValueError(f"who={clipped(who)}: not {wanted}") from None
    if kind in PATTERN_KINDS:
        try:
            check_pattern(who)
        except ValueError as exc:
            raise ValueError(f"who={clipped(who)}: {exc}") from None
    return who


def parse_until(text: str, now: float) -> float | None:
    """``until=``: an ISO 8601 date-time (UTC unless it has an offset), Unix seconds, or
    ``infinity``; ValueError when it is none of them, not in the future or not before
    the year 10000."""
    if text == FOREVER:
        return None
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        moment = float(text)  # inf for 400 digits
    else:
        try:
            parsed = datetime.fromisoformat(text)
            moment = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            raise ValueError(
                f"until={clipped(text)}: not an ISO 8601 date-time (2026-11-29T19:00:00Z), Unix seconds or {FOREVER}"
            ) from None
    if not moment < END_OF_TIME:
        raise ValueError(f"until={clipped(text)}: not before the year 10000 (until={FOREVER} for a ban without end)")
    if moment <= now:
        raise ValueError(f"until={text}: {rfc3339(moment) if moment >= 0 else text} is in the past")
    return moment


class BanList:
    """The bans by (kind, who), with the indexes a CONNECT is checked against: exact
    kinds in dicts, regular expressions and networks in lists scanned only when not empty."""

    def __init__(self, bans: Iterable[Ban] = ()) -> None:
        self.bans: dict[tuple[str, str], Ban] = {}
        for ban in bans:
            self.add(ban)

    def __len__(self) -> int:
        return len(self.bans)

    def add(self, ban: Ban) -> None:
        """ValueError if (kind, who) is banned already."""
        if ban.key in self.bans:
            raise ValueError(f"{ban.kind} {ban.who} is already banned")
        self.bans[ban.key] = ban
        self._index()

    def remove(self, kind: str, who: str) -> Ban:
        """KeyError if there is no such ban."""
        ban = self.bans.pop((kind, who))
        self._index()
        return ban

    def live(self, now: float) -> list[Ban]:
        """The bans in force, in the order added; expired ones are dropped."""
        for ban in [ban for ban in self.bans.values() if ban.expired(now)]:
            self.remove(*ban.key)
        return list(self.bans.values())

    def _index(self) -> None:
        # Rebuilt on every change: changes are admin commands, checks are every CONNECT.
        self._exact: dict[str, dict[str, Ban]] = {kind: {} for kind in EXACT_KINDS}
        self._patterns: list[tuple[Ban, re.Pattern[str]]] = []
        self._networks: list[tuple[Ban, Network]] = []
        for ban in self.bans.values():
            if ban.kind in EXACT_KINDS:
                self._exact[ban.kind][ban.who] = ban
            elif ban.kind in PATTERN_KINDS:
                self._patterns.append((ban, re.compile(ban.who)))
            else:
                self._networks.append((ban, ipaddress.ip_network(ban.who)))

    def match(self, client_id: str, username: str | None, peer_host: str | None, now: float) -> Ban | None:
        """The ban in force that applies to the client, if any; expired ones met are dropped."""
        while self.bans:
            ban = self._first_match(client_id, username, peer_host)
            if ban is None or not ban.expired(now):
                return ban
            self.remove(*ban.key)  # and look again: another ban may still apply
        return None

    def _first_match(self, client_id: str, username: str | None, peer_host: str | None) -> Ban | None:
        exact = self._exact
        ban = exact["clientid"].get(client_id)
        if ban is None and username is not None:
            ban = exact["username"].get(username)
        if ban is None and peer_host and (exact["peerhost"] or self._networks):
            try:
                address: Address | None = normalized_address(peer_host)
            except ValueError:  # not an IP address: no address ban applies
                address = None
            if address is not None:
                ban = exact["peerhost"].get(str(address))
                ban = ban or next((b for b, network in self._networks if address in network), None)
        if ban is None:
            for candidate, pattern in self._patterns:
                subject = client_id if candidate.kind == "clientid_re" else username
                # the first MAX_SUBJECT characters only: bounded time (module docstring)
                if subject is not None and pattern.search(subject, 0, MAX_SUBJECT):
                    return candidate
        return ban


# -- the file -----------------------------------------------------------------------------------


def ban_from_json(entry: Any) -> Ban:
    """A ban as the file keeps it (Ban.to_json); ValueError says what is wrong."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"must be an object with {', '.join(COLUMNS)}, not {entry!r}")
    unknown = sorted(set(entry) - set(COLUMNS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (keys: {', '.join(COLUMNS)})")
    for key in ("as", "who", "at"):
        if key not in entry:
            raise ValueError(f"{key} is required")
    values = {"by": DEFAULT_BY, "reason": "", "until": None, **entry}
    for key in ("as", "who", "by", "reason"):
        if not isinstance(values[key], str):
            raise ValueError(f"{key} must be a string, not {values[key]!r}")
    for key in ("at", "until"):
        value = values[key]
        if not (value is None and key == "until") and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise ValueError(f"{key} must be Unix seconds{' or null' if key == 'until' else ''}, not {value!r}")
    if values["until"] is not None and values["until"] >= END_OF_TIME:
        values["until"] = None  # Infinity, or too far to show: forever (and so kept)
    kind = checked_kind(values["as"])
    who = normalized_who(kind, values["who"])
    return Ban(kind, who, values["by"], values["reason"], values["at"], values["until"])


def load_bans(file: Path) -> BanList:
    """The bans kept in ``file`` (none if it does not exist); ValueError naming the file
    for one that cannot be used, which is left as it is."""
    entries = read_json_list(file, "bans")
    bans = BanList()
    if entries is None:
        return bans
    for number, entry in enumerate(entries, 1):
        try:
            bans.add(ban_from_json(entry))
        except ValueError as exc:
            raise ValueError(f"{file}: entry {number}: {exc}") from None
    return bans


def read_records(records: Mapping[str, bytes], now: float) -> tuple[BanList, dict[str, Ban], dict[str, str]]:
    """The store's ban records read: (the bans in force, oldest first; the records each
    ban is kept under, key -> ban; why each record that is no ban is not, key -> reason).

    A ban kept under another key than its own (a normalization that changed) or twice
    is still one ban: its records are all in the second dict, for the caller to rewrite.
    """
    bans: list[Ban] = []
    kept: dict[str, Ban] = {}
    unreadable: dict[str, str] = {}
    for key, value in records.items():
        try:
            ban = ban_from_json(json.loads(value))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSON errors are ValueErrors
            unreadable[key] = str(exc) or type(exc).__name__
            continue
        kept[key] = ban
        bans.append(ban)
    in_force = BanList()
    for ban in sorted(bans, key=lambda ban: (ban.at, ban.record_key)):
        if not ban.expired(now) and ban.key not in in_force.bans:
            in_force.add(ban)
    return in_force, kept, unreadable


# -- the plugin ---------------------------------------------------------------------------------


class Plugin:
    """Refuses banned clients at CONNECT and keeps the ban list (module docstring)."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.bans = BanList()
        self.file: Path | None = None  # known once served: it may be in the data directory
        self.store: Service | None = None  # set when served with a store and no file: bans are records
        self.stored: dict[str, Ban] = {}  # the store's ban records as handed to it, key -> ban
        self.refused = 0
        self._changing = trio.Lock()  # one change at a time, from its reading to its writing

    @hookimpl
    def register_metrics(self, registry: Any) -> None:
        registry.gauge("banned_entries", lambda: len(self.bans.live(time.time())), "bans in force")
        registry.counter("banned_refused", lambda: self.refused, "connections refused as banned")

    @hookimpl(tryfirst=True)
    def auth_on_register(self, client: ClientInfo) -> Deny | None:
        if not self.bans:
            return None
        ban = self.bans.match(client.client_id, client.username, client.peer_host, time.time())
        if ban is None:
            return None
        self.refused += 1
        # debug: a banned client retrying in a loop must not flood the log
        log.debug("client %s refused: banned as %s %s", client.client_id, ban.kind, ban.who)
        return deny(BANNED, "banned")

    def kick(self, service: Service, bans: BanList) -> None:
        """Disconnect the connected clients ``bans`` apply to."""
        now = time.time()
        for session in service.sessions():
            if session.is_online and bans.match(session.client_id, session.user, session.peer_host, now):
                service.disconnect(session.client_id, ADMINISTRATIVE_ACTION)
                log.info("client %s disconnected: banned", session.client_id)

    async def serve(self, service: Service, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.config.file is None and service.records_available:
            self.store = service
            self.bans = await self._load_records(service)  # a bad banned.json to import fails the load
        else:
            self.file = self.config.file or service.data_dir / FILE_NAME
            self.bans = await trio.to_thread.run_sync(load_bans, self.file)  # a ValueError fails the load
        task_status.started()
        if self.bans:
            # Enabled in a running broker: the clients already connected meet the list too.
            self.kick(service, self.bans)

    async def _load_records(self, service: Service) -> BanList:
        """The bans of the store's records, or those of ``banned.json`` imported into an
        empty store (module docstring); the records are made to match them."""
        records = await service.load_records(NAMESPACE)
        bans, kept, unreadable = read_records(records, time.time())
        for key, reason in unreadable.items():
            log.error("banned: record %r skipped: %s", key, reason)
        self.stored = kept
        if self._write_records(service, bans):  # expired bans, and records under an old key, go
            await service.commit_store()
        legacy = service.data_dir / FILE_NAME
        if not await trio.to_thread.run_sync(legacy.exists):
            return bans
        if not await service.import_pending(NAMESPACE):
            log.warning("banned: %s is not read: the store keeps the bans", legacy)
            return bans
        from_file = await trio.to_thread.run_sync(load_bans, legacy)  # ValueError: as a file
        imported = BanList(from_file.live(time.time()))
        self._write_records(service, imported)
        service.note_import(NAMESPACE, str(legacy))
        await service.commit_store()
        # Read back before the file goes: a store that failed says so in its log only.
        found = await service.load_records(NAMESPACE)
        missing = [key for key in self.stored if key not in found]
        if missing:
            log.error(
                "banned: %d of %d bans from %s not found in the store after the import; the file stays",
                len(missing),
                len(imported),
                legacy,
            )
            return imported
        await trio.to_thread.run_sync(set_aside_imported, legacy, "bans", len(imported), log)
        return imported

    def _write_records(self, service: Service, bans: BanList) -> bool:
        """Hand the store the changes that make its records ``bans``: records of bans not
        in it deleted, new or changed bans saved (``stored`` follows). False when there
        was nothing to change."""
        wanted = {ban.record_key: ban for ban in bans.bans.values()}
        gone = [key for key in self.stored if key not in wanted]
        changed = [ban for key, ban in wanted.items() if self.stored.get(key) != ban]
        for key in gone:
            service.delete_record(NAMESPACE, key)
            del self.stored[key]
        for ban in changed:
            service.save_record(NAMESPACE, ban.record_key, ban.record())
            self.stored[ban.record_key] = ban
        return bool(gone or changed)

    async def _commit(self, bans: BanList) -> None:
        """Keep ``bans``, then put them in force: in the store (the records that differ,
        returning once durable), or in the file (in a worker thread: it waits for the
        disk), where one that cannot be written (CommandError naming it) leaves the bans
        as they were, on disk as here. Called holding ``_changing``."""
        if self.store is not None:
            if not self.store.records_available:
                raise CommandError("no store plugin keeps the bans now (the store was unloaded): nothing changed")
            self._write_records(self.store, bans)
            if not await self.store.commit_store():
                self.bans = bans
                raise NotSaved("in force, but the store has not saved it yet (see the log; it retries)")
        elif self.file is not None:
            file = self.file
            text = json.dumps([ban.to_json() for ban in bans.bans.values()], indent=2, allow_nan=False) + "\n"
            try:
                await trio.to_thread.run_sync(lambda: write_atomically(file, text, mode=0o600))
            except OSError as exc:
                raise CommandError(f"{file}: cannot be written: {exc.strerror or exc}") from None
        self.bans = bans

    # -- admin commands -----------------------------------------------------------------------

    @hookimpl
    def register_admin_commands(self, registry: AdminRegistry) -> None:
        registry.describe("banned", "The banned list: clients refused at CONNECT (EMQX's banned).")
        who = {"as": f"the kind: {', '.join(KINDS)}", "who": "the client id, user name, address, pattern or network"}
        registry.add(
            "banned add",
            self._add,
            help="Ban clients; the connected ones it applies to are disconnected.",
            keys={
                **who,
                "by": f"who bans (default {DEFAULT_BY})",
                "reason": "why (default empty)",
                "until": f"when the ban ends: ISO 8601 (UTC unless it has an offset) or Unix seconds (default {FOREVER})",
            },
            required=("as", "who"),
        )
        registry.add("banned delete", self._delete, help="Lift a ban.", keys=who, required=("as", "who"))
        registry.add("banned show", self._show, help="The bans in force.")
        registry.add("banned clear", self._clear, help="Lift every ban.")

    async def _add(self, service: Service, args: Arguments) -> Table:
        keys = args.keys
        now = time.time()
        try:
            kind = checked_kind(keys["as"])
            ban = Ban(
                kind,
                normalized_who(kind, keys["who"]),
                keys.get("by") or DEFAULT_BY,
                keys.get("reason", ""),
                now,
                parse_until(keys["until"], now) if "until" in keys else None,
            )
        except ValueError as exc:
            raise args.usage_error(str(exc)) from None
        async with self._changing:
            try:
                # live(): an expired ban of the same (as, who) is no obstacle
                bans = BanList([*self.bans.live(now), ban])
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            try:
                await self._commit(bans)
            except NotSaved:
                self.kick(service, BanList([ban]))  # in force all the same
                raise
        self.kick(service, BanList([ban]))
        return Table((ban.row(),), COLUMNS)

    async def _delete(self, service: Service, args: Arguments) -> Text:
        try:
            kind = checked_kind(args.keys["as"])
        except ValueError as exc:
            raise args.usage_error(str(exc)) from None
        try:
            who = normalized_who(kind, args.keys["who"])
        except ValueError:
            who = args.keys["who"]  # no such value can have been banned: "no such ban" below
        async with self._changing:
            kept = [ban for ban in self.bans.live(time.time()) if ban.key != (kind, who)]
            if len(kept) == len(self.bans):
                raise CommandError(f"no such ban: as={kind} who={clipped(who)}")
            await self._commit(BanList(kept))
        return Text("Done")

    def _show(self, service: Service, args: Arguments) -> Table:
        return Table(tuple(ban.row() for ban in self.bans.live(time.time())), COLUMNS)

    async def _clear(self, service: Service, args: Arguments) -> Text:
        async with self._changing:
            await self._commit(BanList())
        return Text("Done")
