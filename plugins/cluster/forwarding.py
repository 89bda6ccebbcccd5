"""Forwarding: messages to the other nodes with matching subscribers, in frames.

``cluster_forward`` (after local routing) queues the message for each node that wants
it: one bounded queue and one forwarder task per peer node, which waits ``linger``
seconds after the first message and sends everything queued by then in one frame
(frames.py), one Redis PUBLISH for many messages. The receiving node delivers each to its
own subscribers as its router delivers any message.
"""

from __future__ import annotations

import logging
import time

import trio

from ternmq.kernel import ClientInfo, Message, hookimpl

from .frames import Control, Forwarded, Group, decode_frame, encode_frame, inbox_channel
from .state import COMMAND_TIMEOUT, MAX_FRAME_BYTES, NO_GROUPS, RETRY_DELAY, NodeState

log = logging.getLogger("ternmq.plugins.cluster")


class Forwarding(NodeState):
    """The cluster plugin's forwarding and receiving of messages (module docstring)."""

    @hookimpl
    def cluster_shared_here(self, group: str, topic_filter: str, message: Message) -> bool:
        """One node per shared group and message, in turn among the running nodes with
        members (this one has some: the router asks); the choice goes with the message
        (cluster_forward)."""
        remote = self._targets(message)[1].get((group, topic_filter), [])
        chosen = self._choose((group, topic_filter), [self.node, *remote])
        if len(self._choices) > 10_000:  # cluster_forward takes them; this one never came
            self._choices.clear()
        self._choices.setdefault(id(message), {})[(group, topic_filter)] = chosen
        return chosen == self.node

    def _targets(self, message: Message) -> tuple[set[str], dict[Group, list[str]]]:
        cached = self._match_cache
        if cached is not None and cached[0] is message:
            return cached[1]
        targets = self.routes.targets(message.topic)
        self._match_cache = (message, targets)
        return targets

    def _choose(self, group: Group, candidates: list[str]) -> str:
        now = time.time()
        running = sorted({node for node in candidates if node == self.node or self.running(node, now)})
        turn = self._turns.get(group, 0)
        self._turns[group] = turn + 1
        return running[turn % len(running)]

    @hookimpl
    def cluster_forward(self, message: Message, origin: ClientInfo) -> None:
        choices = self._choices.pop(id(message), None) if self._choices else None
        if message.topic.startswith("$SYS/"):
            self._match_cache = None
            return  # each node's $SYS tree is its own (the same topics on every node)
        plain, groups = self._targets(message)
        self._match_cache = None
        if not plain and not groups and not message.retain:
            return  # the common case of a topic nobody elsewhere wants: nothing to do
        now = time.time()
        targets: dict[str, set[Group]] = {node: set() for node in plain if self.running(node, now)}
        if message.retain:  # every node retains it
            targets.update({node: set() for node in self.heartbeats if node != self.node and self.running(node, now)})
        for group, members in groups.items():
            chosen = choices.get(group) if choices else None
            if chosen is None:  # no member here: one of the other nodes'
                candidates = [node for node in members if self.running(node, now)]
                if not candidates:
                    continue
                chosen = self._choose(group, candidates)
            if chosen != self.node:
                targets.setdefault(chosen, set()).add(group)
        origin_id = origin.client_id
        for node, served in targets.items():
            send = self._peers.get(node) or self._start_peer(node)
            try:
                send.send_nowait((message, origin_id, frozenset(served) if served else NO_GROUPS))
            except trio.WouldBlock:
                self.dropped += 1

    def _start_peer(self, node: str) -> trio.MemorySendChannel[Forwarded]:
        assert self._nursery is not None
        send, receive = trio.open_memory_channel[Forwarded](self.config.forward_queue)
        self._peers[node] = send
        self._nursery.start_soon(self._forward, node, receive)
        return send

    async def _forward(self, node: str, receive: trio.MemoryReceiveChannel[Forwarded]) -> None:
        """The forwarder of one peer node: frames of everything queued within ``linger``."""
        assert self.redis is not None
        config = self.config
        channel = inbox_channel(config.prefix, node)
        sequence = 0
        async for first in receive:
            batch = [first]
            size = len(first[0].payload)
            if config.linger:
                await trio.sleep(config.linger)
            # A frame stays well under Redis' pub/sub output limit (32 MB by default: a
            # subscriber past it is dropped by Redis, and with it every frame).
            while len(batch) < config.max_frame_messages and size < MAX_FRAME_BYTES:
                try:
                    forwarded = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(forwarded)
                size += len(forwarded[0].payload)
            sequence += 1
            await self._send(node, channel, encode_frame(self.node, sequence, batch), len(batch))

    async def _send(self, node: str, channel: str, frame: bytes, count: int) -> None:
        """One frame to a peer. Redis down: the frame waits and is tried again every
        RETRY_DELAY (what comes meanwhile waits in the peer's bounded queue); a peer that
        is down by then gets nothing, and the frame's messages are counted as dropped."""
        assert self.redis is not None
        while True:
            try:
                # A connection Redis lost may never answer (coredis has no deadline of
                # its own here): after COMMAND_TIMEOUT the frame is tried again.
                with trio.fail_after(COMMAND_TIMEOUT):
                    receivers = await self.redis.publish(channel, frame)
                if not receivers:  # the peer is not subscribed (yet: it reconnects)
                    raise ConnectionError(f"{node} does not listen")
            except Exception as exc:  # TooSlowError too
                if not self.running(node):
                    self.dropped += count
                    log.warning("cluster: %d messages for %s dropped: %s", count, node, exc)
                    return
                await self.reachable()
                await trio.sleep(RETRY_DELAY)
            else:
                self.forwarded += count
                return

    async def _receive(self, data: bytes) -> None:
        assert self.service is not None
        try:
            frame = decode_frame(data)
        except ValueError as exc:
            log.warning("cluster: a frame that does not read: %s", exc)
            return
        if isinstance(frame, Control):
            try:
                await self._control(frame)
            except Exception:  # one bad request must not stop the inbox
                log.exception("cluster: control frame %r from %s failed", frame.kind, frame.node)
            return
        last = self._sequences.get(frame.node)
        # A sequence 1 is a node that started again (killed: it could not say it left).
        if last is not None and frame.sequence != last + 1 and frame.sequence != 1:
            self.gaps += 1
            log.warning("cluster: frames from %s lost (%d after %d)", frame.node, frame.sequence, last)
            # What else was lost may be route notices too: everything is read again.
            self._resync = True
            self._routes_changed.set()
        self._sequences[frame.node] = frame.sequence
        route = self.service.route_forwarded
        for message, origin, groups in frame.messages:
            self.received += 1
            try:
                await route(message, origin, groups)
            except Exception:  # one message that cannot be delivered must not stop the inbox
                log.exception("cluster: a message from %s could not be delivered", frame.node)
