"""MQTT topic names, topic filters and the subscription trie (MQTT 5 §4.7, §4.8.2).

Pure data structures: no I/O, no trio. ``SubscriptionTrie.match`` runs for every PUBLISH, so it
walks the trie level by level with an explicit frontier (no recursion, no regexes) and the
wildcard children of a node live in their own slots (``plus``/``hash``) beside the dict of
literal children.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from ..codec import ReasonCode

__all__ = ["TopicError", "validate_topic_name", "validate_topic_filter", "parse_shared"]
__all__ += ["topic_matches", "SubscriptionTrie"]

TOPIC_FILTER_INVALID = ReasonCode.TOPIC_FILTER_INVALID
TOPIC_NAME_INVALID = ReasonCode.TOPIC_NAME_INVALID
MAX_TOPIC_BYTES = 65535
_SHARE = "$share/"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TopicError(ValueError):
    """An invalid topic name (``reason_code`` 0x90) or topic filter (0x8F)."""

    def __init__(self, message: str, reason_code: int) -> None:
        super().__init__(message)
        self.reason_code = reason_code


def _check_common(topic: str, max_levels: int, code: int, what: str) -> None:
    if not topic:
        raise TopicError(f"empty {what}", code)
    if "\x00" in topic:
        raise TopicError(f"{what} contains U+0000", code)
    # Every code point takes at most 4 UTF-8 bytes: only encode when it could be too long.
    if len(topic) > MAX_TOPIC_BYTES // 4:
        try:
            size = len(topic.encode("utf-8"))
        except UnicodeEncodeError:
            raise TopicError(f"{what} is not valid UTF-8", code) from None
        if size > MAX_TOPIC_BYTES:
            raise TopicError(f"{what} longer than {MAX_TOPIC_BYTES} bytes", code)
    if max_levels > 0 and topic.count("/") >= max_levels:
        raise TopicError(f"{what} has more than {max_levels} levels", code)


def validate_topic_name(topic: str, max_levels: int = 0) -> None:
    """Validate a PUBLISH topic name; raise ``TopicError(0x90)`` if it is not acceptable."""
    _check_common(topic, max_levels, TOPIC_NAME_INVALID, "topic name")
    if "+" in topic or "#" in topic:
        raise TopicError("wildcard in topic name", TOPIC_NAME_INVALID)


#: Where the topics of a mountpoint live inside the broker: ``$mount/<mountpoint>/<topic>``.
#: A ``$`` topic, so that no leading wildcard of another mountpoint reaches it; clients
#: may neither publish nor subscribe under it (``is_mount_topic``).
MOUNT_ROOT = "$mount/"


def mounted(mountpoint: str, topic: str) -> str:
    """A client's topic name as the broker routes it (unchanged for ``""``)."""
    return f"{MOUNT_ROOT}{mountpoint}/{topic}" if mountpoint else topic


def mounted_filter(mountpoint: str, topic_filter: str) -> str:
    """A client's topic filter as the broker keeps it: ``mounted``, with a shared
    subscription's ``$share/group/`` kept in front (a topic *name* that starts so is
    mounted whole, by ``mounted``)."""
    if mountpoint and topic_filter.startswith(_SHARE):
        group, _, inner = topic_filter[len(_SHARE) :].partition("/")
        return f"{_SHARE}{group}/{mounted(mountpoint, inner)}"
    return mounted(mountpoint, topic_filter)


def unmounted(mountpoint: str, topic: str) -> str:
    """A routed topic name as a client of ``mountpoint`` sees it."""
    if not mountpoint:
        return topic
    prefix = f"{MOUNT_ROOT}{mountpoint}/"
    return topic[len(prefix) :] if topic.startswith(prefix) else topic


# "$mount", the mountpoint, then the client's first level.
_MOUNT_GUARD = 2


def _dollar_in_mount(levels: list[str]) -> bool:
    """Whether split topic ``levels`` are a mountpoint's topic whose first level starts with $."""
    return len(levels) > _MOUNT_GUARD and levels[0] == MOUNT_ROOT[:-1] and levels[_MOUNT_GUARD].startswith("$")


def is_mount_topic(topic_filter: str) -> bool:
    """True for a topic (or the inner filter of a shared one) under ``$mount/``."""
    inner = parse_shared(topic_filter)[1] if topic_filter.startswith(_SHARE) else topic_filter
    return inner.startswith(MOUNT_ROOT) or inner == MOUNT_ROOT[:-1]


def is_broker_topic(topic: str) -> bool:
    """True for the broker's own trees, which clients may not publish to: ``$SYS`` (which
    they may read) and ``$mount`` (reached only from inside a mountpoint)."""
    if not topic.startswith("$"):
        return False
    return (topic.startswith("$SYS") and (len(topic) == 4 or topic[4] == "/")) or is_mount_topic(topic)


def validate_topic_filter(topic_filter: str, max_levels: int = 0) -> None:
    """Validate a SUBSCRIBE/UNSUBSCRIBE filter (plain or ``$share/group/filter``).

    Raise ``TopicError(0x8F)`` if it is not acceptable. The level limit applies to the inner
    filter of a shared subscription.
    """
    code = TOPIC_FILTER_INVALID
    inner = topic_filter
    if topic_filter.startswith(_SHARE):
        group, sep, inner = topic_filter[len(_SHARE) :].partition("/")
        if not sep or not group:
            raise TopicError("shared subscription without group or filter", code)
        if "+" in group or "#" in group:
            raise TopicError("wildcard in shared subscription group", code)
        _check_common(topic_filter, 0, code, "topic filter")
    _check_common(inner, max_levels, code, "topic filter")
    if "+" not in inner and "#" not in inner:
        return
    levels = inner.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            raise TopicError("'#' must be the whole last level", code)
        if "+" in level and level != "+":
            raise TopicError("'+' must be a whole level", code)


def parse_shared(topic_filter: str) -> tuple[str | None, str]:
    """``("group", "inner")`` for ``$share/group/inner``, ``(None, topic_filter)`` otherwise.

    Assumes a validated filter.
    """
    if topic_filter.startswith(_SHARE):
        group, _, inner = topic_filter[len(_SHARE) :].partition("/")
        return group, inner
    return None, topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a plain (non-shared) filter matches a topic name (MQTT 5 §4.7)."""
    flevels = topic_filter.split("/")
    tlevels = topic.split("/")
    if topic.startswith("$") and flevels[0] in ("+", "#"):
        return False
    if (
        _dollar_in_mount(tlevels)
        and len(flevels) > _MOUNT_GUARD
        and flevels[_MOUNT_GUARD] in ("+", "#")
        and flevels[:_MOUNT_GUARD] == tlevels[:_MOUNT_GUARD]
    ):
        return False  # "$x" inside a mountpoint, as "$x" outside
    n = len(tlevels)
    for i, f in enumerate(flevels):
        if f == "#":
            return True  # matches this level and below, including the parent itself
        if i >= n or (f != "+" and f != tlevels[i]):
            return False
    return len(flevels) == n


class _Node:
    """One trie level. ``subs``: key -> value of the plain subscriptions ending here; ``shared``:
    group -> {key: value}; both ``None`` while empty. ``inner``: this node's filter (for shared)."""

    __slots__ = ("children", "plus", "hash", "subs", "shared", "inner")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.plus: _Node | None = None
        self.hash: _Node | None = None
        self.subs: dict[Any, Any] | None = None
        self.shared: dict[str, dict[Any, Any]] | None = None
        self.inner = ""

    def is_empty(self) -> bool:
        return not (self.children or self.plus or self.hash or self.subs or self.shared)


class SubscriptionTrie(Generic[K, V]):
    """Subscriptions keyed by (filter, subscriber key), each with an opaque value.

    Filters are assumed validated (``validate_topic_filter``), topics given to ``match``
    validated as names (``validate_topic_name``).
    """

    def __init__(self) -> None:
        self._root = _Node()
        self._by_key: dict[K, dict[str, V]] = {}
        self._len = 0
        self._filters = 0

    def __len__(self) -> int:
        return self._len

    def count_filters(self) -> int:
        """Number of distinct stored filters (each ``$share/group/f`` counts on its own)."""
        return self._filters

    def filters_of(self, key: K) -> dict[str, V]:
        """A copy of the key's subscriptions: filter as given -> value."""
        return dict(self._by_key.get(key, ()))

    def add(self, topic_filter: str, key: K, value: V) -> bool:
        """Store or replace; True if the key had no subscription with this filter before."""
        group, inner = parse_shared(topic_filter)
        node = self._root
        for level in inner.split("/"):
            if level == "+":
                nxt = node.plus
                if nxt is None:
                    nxt = node.plus = _Node()
            elif level == "#":
                nxt = node.hash
                if nxt is None:
                    nxt = node.hash = _Node()
            else:
                nxt = node.children.get(level)
                if nxt is None:
                    nxt = node.children[level] = _Node()
            node = nxt
        if group is None:
            members = node.subs
            if members is None:
                members = node.subs = {}
                self._filters += 1
        else:
            shared = node.shared
            if shared is None:
                shared = node.shared = {}
                node.inner = inner
            members = shared.get(group)
            if members is None:
                members = shared[group] = {}
                self._filters += 1
        new = key not in members
        members[key] = value
        if new:
            self._len += 1
        self._by_key.setdefault(key, {})[topic_filter] = value
        return new

    def remove(self, topic_filter: str, key: K) -> bool:
        """Remove the key's subscription to this filter; True if there was one."""
        group, inner = parse_shared(topic_filter)
        node = self._root
        path: list[tuple[_Node, str]] = []
        for level in inner.split("/"):
            if level == "+":
                nxt = node.plus
            elif level == "#":
                nxt = node.hash
            else:
                nxt = node.children.get(level)
            if nxt is None:
                return False
            path.append((node, level))
            node = nxt
        if group is None:
            members = node.subs
            if not members or key not in members:
                return False
            del members[key]
            if not members:
                node.subs = None
                self._filters -= 1
        else:
            shared = node.shared
            if not shared:
                return False
            members = shared.get(group)
            if not members or key not in members:
                return False
            del members[key]
            if not members:
                del shared[group]
                self._filters -= 1
                if not shared:
                    node.shared = None
        self._len -= 1
        filters = self._by_key[key]
        del filters[topic_filter]
        if not filters:
            del self._by_key[key]
        # Prune the now empty nodes, deepest first.
        for parent, level in reversed(path):
            if not node.is_empty():
                break
            if level == "+":
                parent.plus = None
            elif level == "#":
                parent.hash = None
            else:
                del parent.children[level]
            node = parent
        return True

    def remove_key(self, key: K) -> int:
        """Remove every subscription of the key; return how many there were."""
        filters = self._by_key.get(key)
        if not filters:
            return 0
        removed = 0
        for topic_filter in list(filters):
            removed += self.remove(topic_filter, key)
        return removed

    def match(self, topic: str) -> tuple[list[tuple[K, V]], dict[tuple[str, str], list[tuple[K, V]]]]:
        """Subscriptions whose filter matches the topic name.

        Returns the plain ``(key, value)`` pairs (a key appears once per matching filter) and
        ``{(group, inner_filter): [(key, value), ...]}`` for the matching shared ones. A topic
        starting with ``$`` is not matched by a first level ``+`` or ``#``.
        """
        root = self._root
        levels = topic.split("/")
        found: list[_Node] = []  # nodes whose subscriptions match
        nodes: list[_Node] = []  # nodes matching the levels consumed so far
        node = root.children.get(levels[0])
        if node is not None:
            nodes.append(node)
        # The level whose wildcards a "$" topic does not reach: the first, or the first
        # inside a mountpoint ("$mount/m/$x" is "$x" in m).
        guarded = _MOUNT_GUARD if topic.startswith("$") and _dollar_in_mount(levels) else 0
        if not topic.startswith("$"):
            if root.hash is not None:
                found.append(root.hash)
            if root.plus is not None:
                nodes.append(root.plus)
        for i in range(1, len(levels)):
            if not nodes:
                break
            level = levels[i]
            nxt: list[_Node] = []
            if i == guarded:
                for node in nodes:
                    child = node.children.get(level)
                    if child is not None:
                        nxt.append(child)
                nodes = nxt
                continue
            for node in nodes:
                if node.hash is not None:
                    found.append(node.hash)
                child = node.children.get(level)
                if child is not None:
                    nxt.append(child)
                if node.plus is not None:
                    nxt.append(node.plus)
            nodes = nxt
        for node in nodes:
            found.append(node)
            if node.hash is not None:  # "a/#" also matches "a"
                found.append(node.hash)
        plain: list[tuple[K, V]] = []
        shared: dict[tuple[str, str], list[tuple[K, V]]] = {}
        for node in found:
            if node.subs:
                plain.extend(node.subs.items())
            if node.shared:
                inner = node.inner
                for group, members in node.shared.items():
                    shared[(group, inner)] = list(members.items())
        return plain, shared
