"""Topic access control from a file (the ``acl`` built-in plugin).

Reads an ACL file in the format of Mosquitto's ``acl_file`` and VerneMQ's ``vmq_acl``
(files written for either work unchanged) and answers ``auth_on_publish`` (write
access to the topic) and ``auth_on_subscribe`` (read access, decided per filter). The
file is polled and reloaded when it changes.

Config keys (``[plugins.acl]``):

* ``acl_file`` (required): the ACL file; a relative path is joined to the
  configuration file's folder. A missing or invalid file fails the plugin's load.
* ``reload_interval`` (default 10.0 seconds; 0 = never): how often the file's
  modification time and size are checked; a changed file is read again. A file that
  does not parse (or cannot be read) keeps the previous rules: the error, naming file
  and line, is logged and kept in ``last_error`` until a good file is loaded.
* ``revoke_subscriptions`` (default true): after a reload, remove the subscriptions the
  new rules deny from live sessions (below).
* ``on_no_rule`` (default ``"deny"``): what a request that no rule grants or denies
  gets. ``"deny"`` makes the plugin authoritative, as Mosquitto's ``acl_file``: what
  the file does not grant is refused (0x87). ``"next"`` answers nothing, as VerneMQ's
  ``vmq_acl``: the next plugin, then the broker's ``no_match``, decides.

Syntax, one rule a line:

* ``# ...`` comments and blank lines are skipped; leading and trailing whitespace is
  trimmed.
* ``topic [read|write|readwrite|deny] FILTER``: a rule for the current section. Without
  an access word the rule grants read and write. ``FILTER`` is the rest of the line and
  must be a valid subscription filter (``+`` and ``#`` as in MQTT).
* ``user NAME``: the ``topic`` lines that follow apply to clients with that username
  (not client id). Rules before the first ``user`` line apply to every client.
* ``pattern [read|write|readwrite|deny] FILTER``: applies to every client, wherever it
  stands in the file. In ``FILTER``, ``%u`` is the username, ``%c`` the client id and
  ``%m`` the client's mountpoint; a placeholder must be a whole
  topic level.

Any other line is an error naming the file and the line.

Semantics:

* ``write`` lets a client publish to matching topics; ``read`` lets it subscribe. A
  subscription is granted only when one rule's filter covers the whole requested filter
  (``a/+`` covers ``a/b`` and ``a/+``; ``a/#`` covers ``a/b/#``, not ``#``). Each filter
  of a SUBSCRIBE gets its own answer; a shared subscription is checked by its inner
  filter.
* ``deny`` rules (read and write) win over every grant: a publish to a topic a deny
  rule matches is refused, and so is a subscription whose filter could receive any
  topic a deny rule matches (a subscription to ``a/#`` under ``topic deny a/secret``),
  since nothing filters messages on delivery.
* A pattern needing ``%u`` does not apply to a client without a username. A username
  or client id holding ``/``, ``+`` or ``#`` is not substituted: the grants of such a
  pattern do not apply, and its denials apply to every value of that level.
* UNSUBSCRIBE is not checked (Mosquitto and VerneMQ do not either).
* With ``on_no_rule = "next"``, a SUBSCRIBE whose filters the file decides only in part
  is answered as a whole (one answer ends the asking): the filters no rule decides are
  refused. Subscribed in a packet of their own, they are left to the next plugin and
  the broker's ``no_match``.
* Rules before the first ``user`` line apply to every client, as in VerneMQ; Mosquitto
  applies them to clients without a user name only. A Mosquitto file that grants
  anonymous clients something there grants it to everyone here.
* Live sessions follow the rules: after a reload (and when the plugin is loaded at run
  time) the subscriptions the rules in force deny are removed from live sessions, as
  the broker unsubscribing them (``revoke_subscriptions``, on by default). Only what
  this plugin denies goes: under ``on_no_rule = "next"`` a filter no rule decides stays.

Publishes are decided once per client, username and topic and then answered from a
cache, emptied on reload and per client when its connection ends. ``explain(username,
client_id, topic, access)`` says which line decides a request.

Admin commands: ``acl check topic=T access=read|write [username=U] [client-id=C]``
answers allowed or denied and the rule (file, line) that decided;
``session reauthorize [username=U] [client-id=C]`` removes from live sessions what the
rules in force deny, on demand. Metrics: ``acl_rules``
(gauge), ``acl_reloads`` and ``acl_reload_errors`` (counters).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from ternmq.kernel import (
    AdminRegistry,
    Allow,
    Arguments,
    ClientInfo,
    Deny,
    Message,
    Service,
    Table,
    Text,
    TopicSubscription,
    allow,
    deny,
    file_stamp,
    hookimpl,
    topic_matches,
)

log = logging.getLogger("ternmq.plugins.acl")

NOT_AUTHORIZED = 0x87
ACCESS_WORDS = ("read", "write", "readwrite", "deny")
PLACEHOLDERS = ("%u", "%c", "%m")
NO_RULE = "no rule"
# A client publishing to ever new topics (a topic per message) must not grow the cache
# without end: past this many entries its entries start again from nothing.
CACHE_PER_CLIENT = 1024
# Entries of clients that never disconnect cleanly (a refused CONNECT's will) are only
# dropped here.
CACHE_CLIENTS = 100_000
_SHARE = "$share/"
# Characters that would let a substituted name escape its topic level or act as a
# wildcard.
_UNSAFE = frozenset("/+#")

Access = Literal["read", "write"]


@attrs.frozen
class Config:
    acl_file: Path
    reload_interval: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))
    on_no_rule: str = attrs.field(default="deny", validator=attrs.validators.in_(("deny", "next")))
    # Live sessions follow the rules: after a reload, subscriptions the new rules deny
    # are removed, so a revoked client stops receiving at once.
    revoke_subscriptions: bool = True


class AclError(ValueError):
    """An ACL file that cannot be used; the message starts ``FILE:LINE:`` (``FILE:`` when
    the file itself cannot be read)."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")
        self.file = file
        self.line = line


@attrs.frozen
class Rule:
    """One ``topic`` or ``pattern`` line."""

    kind: str  # "topic" or "pattern"
    access: str  # one of ACCESS_WORDS
    topic_filter: str
    file: str  # the file's name, for explanations
    line: int
    text: str  # the line as written (trimmed)

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line} {self.text}"

    @property
    def is_deny(self) -> bool:
        return self.access == "deny"

    def grants(self, access: Access) -> bool:
        return self.access == access or self.access == "readwrite"


@attrs.frozen
class Rules:
    """A parsed ACL file: the rules for everyone, per username, and the patterns."""

    everyone: tuple[Rule, ...] = ()
    users: Mapping[str, tuple[Rule, ...]] = attrs.field(factory=dict)
    patterns: tuple[Rule, ...] = ()

    def __len__(self) -> int:
        return len(self.everyone) + sum(len(r) for r in self.users.values()) + len(self.patterns)


# -- topic filters ---------------------------------------------------------------------------


def check_filter(topic_filter: str) -> None:
    """Raise ValueError unless ``topic_filter`` is a valid plain subscription filter."""
    if not topic_filter:
        raise ValueError("empty topic filter")
    if "\x00" in topic_filter:
        raise ValueError("topic filter contains U+0000")
    if topic_filter.startswith(_SHARE):
        # A rule about a shared subscription would never match: requests are checked by
        # their inner filter.
        raise ValueError("a rule cannot name a shared subscription ($share/...)")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"'#' must be the whole last level in {topic_filter!r}")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level in {topic_filter!r}")


def inner_filter(topic_filter: str) -> str:
    """The filter of ``$share/group/filter``; any other filter unchanged."""
    if topic_filter.startswith(_SHARE):
        _, _, inner = topic_filter[len(_SHARE) :].partition("/")
        return inner
    return topic_filter


def _wildcard_first(level: str) -> bool:
    return level in ("+", "#")


def covers(rule_filter: str, requested: str) -> bool:
    """Whether every topic ``requested`` (a filter or a topic name) matches is matched
    by ``rule_filter``: the requested filter is a subset of the rule's."""
    rule = rule_filter.split("/")
    want = requested.split("/")
    # Filters starting with a wildcard never match "$" topics (MQTT 5 §4.7.2), so they
    # cannot cover a request for them.
    if want[0].startswith("$") and _wildcard_first(rule[0]):
        return False
    for index, level in enumerate(rule):
        if level == "#":
            return True  # this level and everything below, the parent included
        if index >= len(want):
            return False
        asked = want[index]
        if asked == "#":
            return False  # only "#" covers "#"
        if level != "+" and level != asked:
            return False  # a name covers only itself, not "+"
    return len(rule) == len(want)


def overlaps(first: str, second: str) -> bool:
    """Whether some topic name matches both filters."""
    a = first.split("/")
    b = second.split("/")
    if (a[0].startswith("$") and _wildcard_first(b[0])) or (b[0].startswith("$") and _wildcard_first(a[0])):
        return False
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != "+" and y != "+" and x != y:
            return False
    return True


# -- parsing ---------------------------------------------------------------------------------


def parse_acl(text: str, file: str = "<acl>", name: str | None = None) -> Rules:
    """Parse the text of an ACL file; ``AclError`` names ``file`` and the line.

    ``name`` is how rules name the file in explanations (default: ``file``).
    """
    shown = file if name is None else name
    everyone: list[Rule] = []
    users: dict[str, list[Rule]] = {}
    patterns: list[Rule] = []
    section: list[Rule] = everyone
    # Lines end at "\n" only (str.splitlines would also break at characters a topic may
    # hold), and a byte-order mark some editors put first is no part of the first line.
    for number, raw in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, *tail = line.split(None, 1)
        rest = tail[0] if tail else ""
        if keyword == "user":
            if not rest:
                raise AclError(file, number, "'user' without a username")
            section = users.setdefault(rest, [])
            continue
        if keyword not in ("topic", "pattern"):
            raise AclError(file, number, f"unknown keyword {keyword!r} (expected topic, pattern or user)")
        if not rest:
            raise AclError(file, number, f"{keyword!r} without a topic filter")
        words = rest.split(None, 1)
        if words[0] in ACCESS_WORDS:
            if len(words) == 1:
                raise AclError(file, number, f"{keyword} {words[0]!r} without a topic filter")
            access, topic_filter = words[0], words[1].strip()
        else:
            access, topic_filter = "readwrite", rest
        try:
            check_filter(topic_filter)
            if keyword == "pattern":
                for level in topic_filter.split("/"):
                    if any(p in level for p in PLACEHOLDERS) and level not in PLACEHOLDERS:
                        raise ValueError(f"a placeholder must be a whole topic level, not {level!r}")
        except ValueError as exc:
            raise AclError(file, number, str(exc)) from None
        rule = Rule(keyword, access, topic_filter, shown, number, line)
        (patterns if keyword == "pattern" else section).append(rule)
    return Rules(tuple(everyone), {user: tuple(rules) for user, rules in users.items()}, tuple(patterns))


def load_acl(path: Path) -> Rules:
    """Read and parse an ACL file (blocking: run it in a thread from async code)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AclError(str(path), 0, f"cannot read: {exc}") from None
    return parse_acl(text, str(path), path.name)


# -- deciding --------------------------------------------------------------------------------


def _substituted(rule: Rule, username: str | None, client_id: str, mountpoint: str) -> str | None:
    """The pattern's filter for this client, or None when it does not apply to it."""
    if "%" not in rule.topic_filter:
        return rule.topic_filter
    levels = rule.topic_filter.split("/")
    for index, level in enumerate(levels):
        if level not in PLACEHOLDERS:
            continue
        if level == "%u":
            if username is None:
                return None  # as both brokers: no username, no %u pattern
            value = username
        elif level == "%c":
            value = client_id
        else:
            value = mountpoint
        if _UNSAFE.intersection(value):  # a wildcard or "/" in a name is never itself
            if not rule.is_deny:
                return None
            value = "+"  # a denial must not be escaped by an odd name: deny every value
        elif index == 0 and value.startswith("$") and not rule.is_deny:
            return None  # a grant must not reach $SYS/... through a name
        levels[index] = value
    return "/".join(levels)


def _applicable(rules: Rules, username: str | None, client_id: str, mountpoint: str) -> Iterator[tuple[Rule, str]]:
    """The rules that apply to a client, each with its filter, in the order asked."""
    for rule in rules.everyone:
        yield rule, rule.topic_filter
    if username is not None:
        for rule in rules.users.get(username, ()):
            yield rule, rule.topic_filter
    for rule in rules.patterns:
        topic_filter = _substituted(rule, username, client_id, mountpoint)
        if topic_filter is not None:
            yield rule, topic_filter


def decide(
    rules: Rules, username: str | None, client_id: str, topic: str, access: Access, mountpoint: str = ""
) -> tuple[bool | None, Rule | None]:
    """(verdict, deciding rule): True granted, False denied by a ``deny`` rule, None when
    no rule applies. ``topic`` is a topic name for ``write``, a plain filter for ``read``."""
    applicable = list(_applicable(rules, username, client_id, mountpoint))
    for rule, topic_filter in applicable:
        if rule.is_deny and (
            topic_matches(topic_filter, topic) if access == "write" else overlaps(topic_filter, topic)
        ):
            return False, rule
    for rule, topic_filter in applicable:
        if rule.grants(access) and (
            topic_matches(topic_filter, topic) if access == "write" else covers(topic_filter, topic)
        ):
            return True, rule
    return None, None


# -- the plugin ------------------------------------------------------------------------------


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    """The file's stamp (file_stamp); None when it cannot be stat'ed."""
    try:
        return file_stamp(path)
    except OSError:
        return None


class Plugin:
    """Topic ACL read from ``acl_file``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # The stamp is taken before reading: a change during the read is seen next time.
        self._stamp = _stamp(config.acl_file)
        self.rules = load_acl(config.acl_file)  # an error here fails the plugin's load
        self.last_error: str | None = None
        self.reloads = 0
        self.reload_errors = 0
        self._cache: dict[str, dict[tuple[str | None, str], bool | None]] = {}
        self._service: Any = None

    # -- registration ------------------------------------------------------------------------

    @hookimpl
    def register_metrics(self, registry: Any) -> None:
        registry.gauge("acl_rules", lambda: len(self.rules), "rules of the ACL file in force")
        registry.counter("acl_reloads", lambda: self.reloads, "ACL file reloads")
        registry.counter("acl_reload_errors", lambda: self.reload_errors, "ACL file reloads that failed")

    # -- decisions ---------------------------------------------------------------------------

    def _verdict(
        self, username: str | None, client_id: str, topic: str, access: Access, mountpoint: str
    ) -> bool | None:
        verdict, _ = decide(self.rules, username, client_id, topic, access, mountpoint)
        if verdict is None and self.config.on_no_rule == "deny":
            return False
        return verdict

    @hookimpl
    def auth_on_publish(self, client: ClientInfo, message: Message) -> Allow | Deny | None:
        entries = self._cache.get(client.client_id)
        if entries is None:
            if len(self._cache) >= CACHE_CLIENTS:
                self._cache.clear()
            entries = self._cache[client.client_id] = {}
        key = (client.username, message.topic)
        try:
            verdict = entries[key]
        except KeyError:
            if len(entries) >= CACHE_PER_CLIENT:
                entries.clear()
            verdict = entries[key] = self._verdict(
                client.username, client.client_id, message.topic, "write", client.mountpoint
            )
        if verdict is None:
            return None
        return allow() if verdict else deny(NOT_AUTHORIZED, "not allowed by the ACL")

    @hookimpl
    def auth_on_subscribe(self, client: ClientInfo, subscriptions: Sequence[TopicSubscription]) -> Allow | None:
        verdicts = [
            self._verdict(client.username, client.client_id, inner_filter(s.topic_filter), "read", client.mountpoint)
            for s in subscriptions
        ]
        if all(v is True for v in verdicts):
            return allow()
        if all(v is None for v in verdicts):
            return None  # on_no_rule = "next" and nothing to say
        # One answer covers the whole packet, and an answer ends the asking: a filter
        # no rule decides (on_no_rule = "next") cannot be left to the next plugin here,
        # so it is refused rather than let through past a plugin that would refuse it.
        topics: list[TopicSubscription | tuple[str, int]] = []
        for subscription, verdict in zip(subscriptions, verdicts, strict=True):
            if verdict:
                topics.append(subscription)
            else:
                topics.append((subscription.topic_filter, NOT_AUTHORIZED))
        return allow(topics=topics)

    def _no_match(self) -> str:
        service = self._service
        if service is None:
            return "deny"  # not served (yet): refuse rather than guess
        return str(service.settings.no_match)

    @hookimpl
    def on_client_offline(self, client: ClientInfo) -> None:
        self._cache.pop(client.client_id, None)

    @hookimpl
    def on_client_gone(self, client: ClientInfo) -> None:
        self._cache.pop(client.client_id, None)

    def explain(self, username: str | None, client_id: str, topic: str, access: str) -> tuple[bool, str]:
        """Whether the rules in force let a client ``read`` (subscribe to the filter
        ``topic``) or ``write`` (publish to ``topic``), and why: the deciding rule as
        ``FILE:LINE RULE``, or ``"no rule"`` (then the answer is ``on_no_rule``'s; with
        ``"next"``, the broker's ``no_match``, as if no other plugin answered)."""
        if access in ("read", "subscribe"):
            wanted: Access = "read"
            topic = inner_filter(topic)
        elif access in ("write", "publish"):
            wanted = "write"
        else:
            raise ValueError(f"access must be read or write, not {access!r}")
        verdict, rule = decide(self.rules, username, client_id, topic, wanted)
        if rule is not None:
            return bool(verdict), rule.source
        if self.config.on_no_rule == "deny":
            return False, NO_RULE
        return self._no_match() == "allow", NO_RULE

    # -- live sessions and admin commands ------------------------------------------------

    async def reauthorize(self, service: Service, username: str | None = None, client_id: str | None = None) -> int:
        """Remove the subscriptions that the rules in force deny from live sessions (all
        of them, or those of ``username`` / ``client_id``); returns how many went. Only
        what this plugin denies goes: a filter no rule decides under ``on_no_rule =
        "next"`` was another plugin's or ``no_match``'s to allow, and stays."""
        removed = 0
        for session in service.sessions():
            if (username is not None and session.user != username) or (
                client_id is not None and session.client_id != client_id
            ):
                continue
            denied = [
                s.topic_filter
                for s in service.subscriptions(session.client_id)
                if self._verdict(session.user, session.client_id, inner_filter(s.topic_filter), "read", "") is False
            ]
            if denied and await service.unsubscribe(session.client_id, denied) is not None:
                removed += len(denied)
                log.info("ACL: removed %s from session %s", ", ".join(denied), session.client_id)
        return removed

    @hookimpl
    def register_admin_commands(self, registry: AdminRegistry) -> None:
        registry.describe("acl", "Ask the ACL plugin.")
        registry.add(
            "acl check",
            self._acl_check,
            help="Whether a client may read (subscribe to) or write (publish to) a topic, and which rule decides.",
            keys={
                "topic": "a topic (write) or a topic filter (read)",
                "access": "read or write",
                "username": "the client's user name (none: a client without one)",
                "client-id": "the client id (for %c patterns)",
            },
            required=("topic", "access"),
        )
        registry.add(
            "session reauthorize",
            self._session_reauthorize,
            help="Remove the subscriptions the ACL now denies from live sessions.",
            keys={"username": "only this user's sessions", "client-id": "only this client's session"},
        )

    def _acl_check(self, service: Service, args: Arguments) -> Table:
        keys = args.keys
        try:
            allowed, source = self.explain(
                keys.get("username"), keys.get("client-id", ""), keys["topic"], keys["access"]
            )
        except ValueError as exc:
            raise args.usage_error(str(exc)) from None
        return Table(({"Allowed": allowed, "Decided by": source},), ("Allowed", "Decided by"))

    async def _session_reauthorize(self, service: Service, args: Arguments) -> Text:
        removed = await self.reauthorize(service, args.keys.get("username"), args.keys.get("client-id"))
        return Text(f"Removed {removed} subscription{'' if removed == 1 else 's'}")

    # -- reloading ---------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Read the file again now; True if its rules are in force. A failure keeps the
        previous rules, is logged and kept in ``last_error``."""
        path = self.config.acl_file
        stamp = await trio.to_thread.run_sync(_stamp, path)
        try:
            rules = await trio.to_thread.run_sync(load_acl, path)
        except Exception as exc:  # a bad file must never leave the broker without rules
            # Reported once, read again when it changes: an edit, or a chmod or chown that
            # makes it readable (the ctime in the stamp).
            self._stamp = stamp
            self.reload_errors += 1
            self.last_error = str(exc)
            log.error("ACL not reloaded, keeping the previous rules: %s", exc)
            return False
        if await trio.to_thread.run_sync(_stamp, path) != stamp:
            # Changed while it was read (written in place): a half-written file would lose
            # rules, so the next poll reads the finished one.
            return False
        self._stamp = stamp
        self.rules = rules
        self._cache.clear()
        self.last_error = None
        self.reloads += 1
        log.info("ACL reloaded from %s: %d rules", path, len(rules))
        return True

    async def serve(self, service: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._service = service
        task_status.started()
        if self.config.revoke_subscriptions:
            # Loaded at run time (enable, reload): the live sessions meet these rules now.
            await self.reauthorize(service)
        interval = self.config.reload_interval
        if not interval:
            return
        while True:
            await trio.sleep(interval)
            stamp = await trio.to_thread.run_sync(_stamp, self.config.acl_file)
            if stamp == self._stamp:
                continue
            if stamp is None:
                # Gone or unreadable: say so once, keep the rules, reload when it is back.
                self._stamp = None
                self.reload_errors += 1
                self.last_error = f"{self.config.acl_file}: cannot read the file"
                log.error("ACL file %s cannot be read, keeping the previous rules", self.config.acl_file)
                continue
            if await self.reload() and self.config.revoke_subscriptions:
                await self.reauthorize(service)
