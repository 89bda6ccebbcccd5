"""Forwarding: messages to the other nodes with matching subscribers, in frames.

``cluster_forward`` (after local routing) queues the message for each node that wants
it: one bounded queue and one forwarder task per peer node, which waits ``linger``
seconds after the first message and sends everything queued by then in one frame
(frames.py), one Redis PUBLISH for many messages. The receiving node delivers each to its
own subscribers as its router delivers any message.

No forwarded message is lost to Redis (a restart, a subscriber it dropped): the sending
node keeps every frame until the receiving node acknowledges it (an ``ack`` control
frame every ACK_DELAY, once its store committed what it delivered) and sends it again
after RESEND_AFTER without one. The receiving node delivers frames of one sender in
sequence: one already delivered is skipped, one after a gap is held back and everything
from the gap asked for again, so one publisher's messages keep their order. The frames
not yet acknowledged count against ``forward_queue`` with those queued.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque

import trio

from ternmq.kernel import ClientInfo, Message, hookimpl

from .frames import (
    NO_GROUPS,
    Control,
    Forwarded,
    Group,
    decode_frame,
    encode_control,
    encode_messages,
    frame_bytes,
    inbox_channel,
)
from .state import COMMAND_TIMEOUT, MAX_FRAME_BYTES, RETRY_DELAY, NodeState

log = logging.getLogger("ternmq.plugins.cluster")

# Seconds after which frames a peer has not acknowledged are sent again.
RESEND_AFTER = 0.5
# Seconds a receiving node gathers deliveries before it acknowledges them (one Redis
# PUBLISH per sending node for all of them).
ACK_DELAY = 0.01


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
        # On the publisher's path for every message: the common case (plain subscribers
        # elsewhere, not retained) takes few steps, and one tuple goes to every peer.
        choices = self._choices.pop(id(message), None) if self._choices else None
        cached = self._match_cache
        self._match_cache = None
        if message.topic.startswith("$SYS/"):
            return  # each node's $SYS tree is its own (the same topics on every node)
        if cached is not None and cached[0] is message:
            plain, groups = cached[1]
        else:
            plain, groups = self.routes.targets(message.topic)
        if groups or message.retain:
            self._forward_widely(message, origin.client_id, plain, groups, choices)
            return
        if not plain:
            return  # the common case of a topic nobody elsewhere wants: nothing to do
        now = time.time()
        timeout = self.config.node_timeout
        beats = self.heartbeats
        forwarded = (message, origin.client_id, NO_GROUPS)
        for node in plain:
            if now - beats.get(node, -math.inf) < timeout:  # running(), inline
                self._enqueue(node, forwarded)

    def _forward_widely(
        self,
        message: Message,
        origin_id: str | None,
        plain: set[str],
        groups: dict[Group, list[str]],
        choices: dict[Group, str] | None,
    ) -> None:
        """cluster_forward of a retained message (every node retains it) or one that
        matches shared groups (one node per group)."""
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
        for node, served in targets.items():
            self._enqueue(node, (message, origin_id, frozenset(served) if served else NO_GROUPS))

    def _enqueue(self, node: str, forwarded: Forwarded) -> None:
        peer = self._peers.get(node) or self._start_peer(node)
        queue = peer.queue
        if len(queue) >= self.config.forward_queue:
            self.dropped += 1
            return
        queue.append(forwarded)
        if len(queue) == 1:  # its forwarder may wait for one
            peer.ready.set()

    def _start_peer(self, node: str) -> Peer:
        assert self._nursery is not None
        self._peers[node] = peer = Peer(node)
        self._nursery.start_soon(self._forward_until_gone, peer)
        return peer

    async def _forward_until_gone(self, peer: Peer) -> None:
        with peer.gone:
            await self._forward(peer)

    def _forget_peer(self, node: str) -> None:
        """``node`` left the cluster: its forwarder stops, what waited for it is dropped
        (counted), and nothing of it is kept."""
        peer = self._peers.pop(node, None)
        if peer is not None:
            peer.gone.cancel()
            self.dropped += len(peer.queue)
            peer.queue.clear()
            self._drop_unacked(peer, "it left the cluster")
        self._sequences.pop(node, None)
        self._acks_due.pop(node, None)

    async def _forward(self, peer: Peer) -> None:
        """The forwarder of one peer node: frames of everything queued within ``linger``,
        each kept until the peer acknowledges it."""
        config = self.config
        queue = peer.queue
        take = queue.popleft
        while True:
            while not queue:
                peer.ready = trio.Event()
                await peer.ready.wait()
            if config.linger:
                await trio.sleep(config.linger)
            # A frame stays well under Redis' pub/sub output limit (32 MB by default: a
            # subscriber past it is dropped by Redis, and with it every frame).
            batch = [take() for _ in range(min(len(queue), config.max_frame_messages))]
            size = sum([len(forwarded[0].payload) for forwarded in batch])
            while size > MAX_FRAME_BYTES and len(batch) > 1:  # the last ones wait for the next frame
                forwarded = batch.pop()
                queue.appendleft(forwarded)
                size -= len(forwarded[0].payload)
            # The frames the peer has not acknowledged are bounded too: while they fill
            # the window, what comes waits in the queue (and beyond it is dropped).
            while peer.waiting >= config.forward_queue and peer.unacked:
                with trio.move_on_after(RESEND_AFTER):
                    await peer.progress.wait()
                if not self.running(peer.node):
                    self._drop_unacked(peer, "it is down")
            peer.sequence += 1
            messages = encode_messages(batch)
            peer.keep(peer.sequence, messages, len(batch))
            async with peer.sending:
                await self._send(peer, peer.sequence, messages, len(batch))

    async def _send(self, peer: Peer, sequence: int, messages: bytes, count: int) -> None:
        """One frame to a peer, with the oldest frame it keeps for the peer as it is now
        (a frame sent again says so too). Redis down: the frame waits and is tried again
        every RETRY_DELAY (what comes meanwhile waits in the peer's bounded queue); a peer
        that is down by then gets nothing, and what it did not acknowledge is counted as
        dropped."""
        assert self.redis is not None
        while True:
            base = peer.unacked[0][0] if peer.unacked else sequence
            frame = frame_bytes(self.node, self.incarnation, sequence, min(base, sequence), messages)
            try:
                # A connection Redis lost may never answer (coredis has no deadline of
                # its own here): after COMMAND_TIMEOUT the frame is tried again.
                with trio.fail_after(COMMAND_TIMEOUT):
                    receivers = await self.redis.publish(inbox_channel(self.config.prefix, peer.node), frame)
                if not receivers:  # the peer is not subscribed (yet: it reconnects)
                    raise ConnectionError(f"{peer.node} does not listen")
            except Exception as exc:  # TooSlowError too
                if not self.running(peer.node):
                    self._drop_unacked(peer, str(exc))
                    return
                await self.reachable()
                await trio.sleep(RETRY_DELAY)
            else:
                self.forwarded += count
                return

    def _drop_unacked(self, peer: Peer, why: str) -> None:
        dropped = peer.forget()
        if dropped:
            self.dropped += dropped
            log.warning("cluster: %d messages for %s dropped: %s", dropped, peer.node, why)

    async def _resend_overdue(self) -> None:
        """Every peer's frames not acknowledged within RESEND_AFTER are sent again, in
        order (a frame Redis took and lost: a restart, a subscriber it dropped)."""
        while True:
            await trio.sleep(RESEND_AFTER / 2)
            now = trio.current_time()
            for peer in list(self._peers.values()):
                if peer.unacked and now - peer.progress_at >= RESEND_AFTER and not peer.resending:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._resend, peer)  # (one peer's wait holds up no other)

    async def _resend(self, peer: Peer) -> None:
        """The peer's unacknowledged frames again, in order; one resend at a time per
        peer, and a frame acknowledged meanwhile is not sent again."""
        if peer.resending:
            return
        peer.resending = True
        peer.progress_at = trio.current_time()
        try:
            async with peer.sending:
                for sequence, messages, count in list(peer.unacked):
                    if not peer.unacked or peer.unacked[0][0] > sequence:
                        continue  # acknowledged (or dropped) meanwhile
                    self.resent += count
                    await self._send(peer, sequence, messages, 0)
        finally:
            peer.resending = False

    def _acknowledged(self, control: Control) -> None:
        """A peer's acknowledgement: its frames up to ``seq`` were delivered (and its
        store committed them); with ``resend``, it found a gap after that."""
        peer = self._peers.get(control.node)
        body = control.body
        if peer is None or body.get("inc") != self.incarnation:
            return  # for frames of this node's previous run
        try:
            sequence = int(body["seq"])
        except (KeyError, TypeError, ValueError, OverflowError):
            log.warning("cluster: an acknowledgement from %s that does not read: %r", control.node, body)
            return
        peer.acknowledge(sequence)
        if body.get("resend") and peer.unacked:
            assert self._nursery is not None
            self._nursery.start_soon(self._resend, peer)

    # -- receiving ----------------------------------------------------------------------

    async def _receive(self, data: bytes) -> None:
        assert self.service is not None
        try:
            frame = decode_frame(data)
        except ValueError as exc:
            log.warning("cluster: a frame that does not read: %s", exc)
            return
        if isinstance(frame, Control):
            try:
                if frame.kind == "ack":
                    self._acknowledged(frame)
                else:
                    await self._control(frame)
            except Exception:  # one bad request must not stop the inbox
                log.exception("cluster: control frame %r from %s failed", frame.kind, frame.node)
            return
        incarnation, last = self._sequences.get(frame.node, ("", 0))
        if incarnation != frame.incarnation or last < frame.base - 1:
            # The first frame of this run of the sender seen here (it started again, or
            # this node did), or the sender gave up the frames before ``base`` (counted
            # there): every frame from ``base`` on is wanted, in order.
            incarnation, last = frame.incarnation, frame.base - 1
            self._sequences[frame.node] = (incarnation, last)
        if frame.sequence <= last:  # sent again, delivered before
            self._acknowledge_soon(frame.node)
            return
        if frame.sequence != last + 1:
            # Held back (messages of one publisher arrive in order), and asked for again
            # from the first one missing.
            self.gaps += 1
            log.warning("cluster: frames from %s lost (%d after %d)", frame.node, frame.sequence, last)
            self._acknowledge_soon(frame.node, resend=True)
            # What else was lost may be route notices too: everything is read again.
            self._resync = True
            self._routes_changed.set()
            return
        messages = frame.messages
        self.received += len(messages)
        try:
            await self.service.route_forwarded_all(messages)  # (logs a message it cannot deliver)
        except Exception:  # whatever it is, the inbox goes on
            log.exception("cluster: messages from %s could not be delivered", frame.node)
        # Delivered only now, whole: an acknowledgement made meanwhile does not cover it.
        self._sequences[frame.node] = (incarnation, frame.sequence)
        self._acknowledge_soon(frame.node)

    def _acknowledge_soon(self, node: str, *, resend: bool = False) -> None:
        self._acks_due[node] = self._acks_due.get(node, False) or resend
        self._acks_wakeup.set()

    async def _acknowledge(self) -> None:
        """Acknowledge what was delivered, every ACK_DELAY at most: once the store
        committed it (a message for a persistent session here is then kept)."""
        assert self.service is not None and self.redis is not None
        while True:
            await self._acks_wakeup.wait()
            await trio.sleep(ACK_DELAY)
            self._acks_wakeup = trio.Event()
            due, self._acks_due = self._acks_due, {}
            # What is delivered now is what the commit below covers (frames delivered
            # while it runs wait for the next acknowledgement).
            delivered = {node: self._sequences.get(node, ("", 0)) for node in due}
            if not await self.service.commit_store():
                continue  # not kept: the senders send it again
            for node, resend in due.items():
                incarnation, last = delivered[node]
                ack = encode_control("ack", self.node, inc=incarnation, seq=last, resend=resend)
                try:
                    with trio.fail_after(COMMAND_TIMEOUT):
                        await self.redis.publish(inbox_channel(self.config.prefix, node), ack)
                except Exception as exc:  # Redis down: the sender sends again, acknowledged then
                    log.debug("cluster: acknowledgement to %s not sent: %s", node, exc)


class Peer:
    """What this node sends one other node: the queue its forwarder reads (bounded by
    ``forward_queue``; ``ready`` is set when a message comes to an empty one), and the
    frames sent and not yet acknowledged (sent again until they are)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.queue: deque[Forwarded] = deque()
        self.ready = trio.Event()
        self.sequence = 0
        self.unacked: deque[tuple[int, bytes, int]] = deque()  # (sequence, packed messages, count)
        self.waiting = 0  # messages in unacked frames
        self.sending = trio.Lock()  # frames go out in order, resent ones too
        self.resending = False  # a resend runs
        self.gone = trio.CancelScope()  # cancelled when the node leaves the cluster
        self.progress = trio.Event()
        self.progress_at = trio.current_time()

    def keep(self, sequence: int, messages: bytes, count: int) -> None:
        if not self.unacked:
            self.progress_at = trio.current_time()
        self.unacked.append((sequence, messages, count))
        self.waiting += count

    def acknowledge(self, sequence: int) -> None:
        unacked = self.unacked
        if not unacked or unacked[0][0] > sequence:
            return
        while unacked and unacked[0][0] <= sequence:
            self.waiting -= unacked.popleft()[2]
        self.progress_at = trio.current_time()
        self.progress.set()
        self.progress = trio.Event()

    def forget(self) -> int:
        """Drop every unacknowledged frame (the peer is down); their message count."""
        dropped, self.waiting = self.waiting, 0
        self.unacked.clear()
        return dropped
