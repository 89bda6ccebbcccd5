"""The routes of the other nodes: which topic filters each node has subscribers for.

Each node keeps its own filters in Redis (a set ``PREFIX:routes:NODE``) and announces
every change on the channel ``PREFIX:routes``; every node keeps a local trie of the
other nodes' filters, loaded at start and kept current from the announcements, so that
a message is offered only to the nodes with a matching subscriber. A node with no
subscriber for a topic receives nothing for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ternmq.kernel import SubscriptionTrie


def routes_key(prefix: str, node: str) -> str:
    return f"{prefix}:routes:{node}"


def notice(
    node: str, *, added: Iterable[str] = (), removed: Iterable[str] = (), reset: bool = False, leaving: bool = False
) -> bytes:
    """A route change as announced on the routes channel (``leaving``: the node stops)."""
    body: dict[str, Any] = {"node": node, "add": sorted(added), "remove": sorted(removed)}
    if reset or leaving:
        body["reset"] = True
    if leaving:
        body["leaving"] = True
    return json.dumps(body, separators=(",", ":")).encode()


class RemoteRoutes:
    """The other nodes' filters (module docstring), matched like the kernel's own."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.trie: SubscriptionTrie[str, bool] = SubscriptionTrie()

    def targets(self, topic: str) -> tuple[set[str], dict[tuple[str, str], list[str]]]:
        """The other nodes with a plain subscription matching ``topic``, and for each
        matching shared group ((group, filter)) the other nodes with members of it."""
        plain, shared = self.trie.match(topic)
        nodes = {node for node, _ in plain if node != self.node} if plain else set()
        if not shared:
            return nodes, {}
        groups = {key: [node for node, _ in members if node != self.node] for key, members in shared.items()}
        return nodes, groups

    def nodes_for(self, topic: str) -> set[str]:
        """The other nodes with a subscriber (plain or shared) matching ``topic``."""
        plain, shared = self.trie.match(topic)
        nodes = {node for node, _ in plain}
        for members in shared.values():
            nodes.update(node for node, _ in members)
        nodes.discard(self.node)
        return nodes

    def replace(self, node: str, filters: Iterable[str], *, merge: bool = False) -> None:
        """All of ``node``'s filters, read from Redis (at start); with ``merge`` (after
        Redis came back, when its sets may be empty only because it lost them) added to
        what is known, nothing removed: a filter known too long costs a forwarded message
        nobody there wants, one forgotten a lost message."""
        if node == self.node:
            return
        if not merge:
            self.trie.remove_key(node)
        for topic_filter in filters:
            self.trie.add(topic_filter, node, True)

    def apply(self, data: bytes) -> tuple[str, bool] | None:
        """Apply an announcement: (the node it is from, whether it is leaving), or None
        for this node's own. ValueError for an announcement that does not read."""
        try:
            body = json.loads(data)
        except RecursionError:
            raise ValueError("not a route notice: nested too deep") from None
        if not isinstance(body, dict) or not isinstance(body.get("node"), str):
            raise ValueError("not a route notice")
        for field in ("add", "remove"):
            filters = body.get(field, [])
            if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
                raise ValueError(f"not a route notice: {field} is not a list of filters")
        node = str(body["node"])
        if node == self.node:
            return None
        if body.get("reset"):
            self.trie.remove_key(node)
        for topic_filter in body.get("add", ()):
            self.trie.add(str(topic_filter), node, True)
        for topic_filter in body.get("remove", ()):
            self.trie.remove(str(topic_filter), node)
        return node, bool(body.get("leaving"))

    def forget(self, node: str) -> None:
        self.trie.remove_key(node)
