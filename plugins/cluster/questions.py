"""Questions to other nodes and their answers: control frames through each node's inbox.

A question (``_ask``) is a control frame with a request id to the node's inbox; the node
answers with an ``answer`` frame under that id. A takeover (registry.py), ``session
show`` (``cluster_sessions``), ``session disconnect`` (``cluster_disconnect``), ``plugin
show`` (``cluster_plugins``) and ``metrics show`` (``cluster_metrics``) ask; a listing
asks every running node at once and leaves out, with a warning, one that does not answer
in time.

A node that joins asks one running node for its retained messages (``retained``), page
by page (RETAINED_PAGE_BYTES of payload at most, or one message), and keeps those it has
none of (``Service.store_retained``): once a retainer is loaded, and again whenever a
plugin that retains is loaded (``on_plugin_loaded``).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import time
from typing import Any

import attrs
import trio

from ternmq.kernel import (
    MetricReading,
    NodeMetrics,
    NodePlugins,
    PluginInfo,
    SessionInfo,
    hookimpl,
    message_from_json,
    message_to_json,
    session_to_json,
)

from .frames import Control, encode_control, inbox_channel
from .registry import clients_key
from .state import ASK_TIMEOUT, COMMAND_TIMEOUT, NodeState

log = logging.getLogger("ternmq.plugins.cluster")

# Retained messages a node sends a node that joins, per answer: payload bytes (about: the
# frame's JSON is a third more), and messages. A single larger message goes alone.
RETAINED_PAGE_BYTES = 1024 * 1024
RETAINED_PAGE_MESSAGES = 1000
# The filters the retained messages are copied under: outside mountpoints, and in them
# ($SYS is each node's own).
RETAINED_FILTERS = ("#", "$mount/#")
# Seconds a node keeps the list another node pages through.
RETAINED_SNAPSHOT_TTL = 30.0


class Questions(NodeState):
    """The cluster plugin's questions and answers (module docstring)."""

    async def _ask(self, node: str, kind: str, **body: Any) -> dict[str, Any] | None:
        """Ask ``node`` a question (a control frame); its answer's body, or None when it
        does not answer within the node timeout."""
        assert self.redis is not None
        self._next_request += 1
        request = f"{self.node}/{self._next_request}"
        answered = trio.Event()
        answers: list[dict[str, Any]] = []
        self._questions[request] = (answered, answers)
        try:
            question = encode_control(kind, self.node, id=request, **body)
            with trio.move_on_after(self._ask_timeout):
                await self.redis.publish(inbox_channel(self.config.prefix, node), question)
                await answered.wait()
        finally:
            self._questions.pop(request, None)
        return answers[0] if answers else None

    @property
    def _ask_timeout(self) -> float:
        # Well inside the hook timeout of what asks (a CONNECT, session show): a node that
        # died a moment ago, not yet counted down, costs this much and no more.
        return min(self.config.node_timeout, ASK_TIMEOUT)

    async def _answer(self, control: Control, **body: Any) -> None:
        assert self.redis is not None
        frame = encode_control("answer", self.node, id=control.body["id"], **body)
        # Within the asker's wait: an answer later than that is wanted by nobody, and a
        # Redis that does not answer must not hold up this node's inbox.
        with trio.move_on_after(ASK_TIMEOUT):
            await self.redis.publish(inbox_channel(self.config.prefix, control.node), frame)

    async def _ask_every(self, kind: str, what: str, **body: Any) -> list[tuple[str, dict[str, Any]]]:
        """Ask every other running node at once; (node, answer) of those that answered
        in time, by node. One that did not is left out with a warning (about ``what``)."""
        found: list[tuple[str, dict[str, Any]]] = []

        async def ask(node: str) -> None:
            try:
                answer = await self._ask(node, kind, **body)
            except Exception as exc:  # one node's failure leaves it out, not the listing
                log.warning("cluster: %s not asked for its %s: %s", node, what, exc)
                return
            if answer is None:
                log.warning("cluster: %s did not list its %s in time", node, what)
                return
            found.append((node, answer))

        now = time.time()
        async with trio.open_nursery() as nursery:
            for node in sorted(self.heartbeats):
                if node != self.node and self.running(node, now):
                    nursery.start_soon(ask, node)
        return sorted(found, key=lambda pair: pair[0])

    @hookimpl
    async def cluster_sessions(self) -> list[SessionInfo]:
        answers = await self._ask_every("sessions", "sessions")
        found = [SessionInfo(**fields) for _, answer in answers for fields in answer["sessions"]]
        return sorted(found, key=lambda info: (info.node, info.client_id))

    @hookimpl
    async def cluster_plugins(self, internal: bool) -> list[NodePlugins]:
        answers = await self._ask_every("plugins", "plugins", internal=internal)
        return [
            NodePlugins(node, tuple(_plugin_of(fields) for fields in answer["plugins"])) for node, answer in answers
        ]

    @hookimpl
    async def cluster_metrics(self) -> list[NodeMetrics]:
        answers = await self._ask_every("metrics", "metrics")
        return [
            NodeMetrics(node, tuple(_reading_of(fields) for fields in answer["metrics"])) for node, answer in answers
        ]

    @hookimpl
    async def cluster_disconnect(self, client_id: str, cleanup: bool) -> bool:
        assert self.redis is not None
        with trio.fail_after(COMMAND_TIMEOUT):
            holder = await self.redis.hget(clients_key(self.config.prefix), client_id)
        node = holder.decode() if isinstance(holder, bytes) else None
        if node == self.node:
            return False
        if node is not None and self.running(node):
            answer = await self._ask(node, "disconnect", client_id=client_id, cleanup=cleanup)
            return bool(answer and answer.get("done"))
        # Claimed by nobody yet (a clean start's claim may be on its way) or by a node
        # that is down: every running node is asked.
        answers = await self._ask_every("disconnect", "sessions", client_id=client_id, cleanup=cleanup)
        return any(answer.get("done") for _, answer in answers)

    async def _control(self, control: Control) -> None:
        assert self.redis is not None and self.service is not None
        body = control.body
        if control.kind == "answer":
            waiting = self._questions.get(str(body["id"]))
            if waiting is not None:
                waiting[1].append(body)
                waiting[0].set()
        elif control.kind == "sessions":
            await self._answer(control, sessions=[attrs.asdict(info) for info in self.service.sessions()])
        elif control.kind == "plugins":
            plugins = self.service.plugins(internal=bool(body.get("internal")))
            await self._answer(control, plugins=[_plugin_fields(info) for info in plugins])
        elif control.kind == "metrics":
            await self._answer(control, metrics=[_reading_fields(r) for r in self.service.metric_readings()])
        elif control.kind == "retained":
            assert self._nursery is not None
            self._nursery.start_soon(self._retained_page, control)  # reads every retained message
        elif control.kind == "disconnect":
            done = self.service.disconnect(str(body["client_id"]), cleanup=bool(body["cleanup"]))
            await self._answer(control, done=done)
        elif control.kind == "takeover":
            assert self._nursery is not None
            self._nursery.start_soon(self._hand_over, control)  # the inbox goes on meanwhile

    async def _hand_over(self, control: Control) -> None:
        assert self.redis is not None and self.service is not None
        body = control.body
        # The asking node waits ASK_TIMEOUT for the answer: a session handed over later
        # would be answered to nobody and lost, so it stays here then.
        deadline = trio.current_time() + ASK_TIMEOUT * 0.75
        try:
            snapshot = await self.service.hand_over(
                str(body["client_id"]), clean_start=bool(body.get("clean_start")), deadline=deadline
            )
            session = None if snapshot is None else session_to_json(snapshot, with_messages=True)
            # What this node's store still writes of the session lands before the other
            # node keeps it there (a late write is refused then, but need not come).
            await self.service.commit_store()
            await self._answer(control, client_id=body["client_id"], session=session)
        except Exception:
            log.exception("cluster: hand-over of %r to %s failed", body.get("client_id"), control.node)

    # -- retained messages for a node that joins ------------------------------------------

    _retained_copied = False  # asked once a retainer was loaded here

    @hookimpl
    async def on_plugin_loaded(self, name: str) -> None:
        """This plugin (joined), or a retainer: the other nodes' retained messages are
        copied, in the background, once a retainer keeps them here."""
        service = self.service
        if not self.alive or service is None or self._nursery is None or not service.retain_available:
            return
        retains = any(info.name == name and "retain_store" in info.hooks for info in service.plugins())
        if retains or not self._retained_copied:
            self._retained_copied = True
            self._nursery.start_soon(self._copy_retained)

    async def _copy_retained(self) -> None:
        """Ask one running node after another until one answers every page."""
        now = time.time()
        for node in sorted(self.heartbeats):
            if node == self.node or not self.running(node, now):
                continue
            try:
                kept = await self._copy_retained_of(node)
            except Exception as exc:  # Redis lost, this node stopping...: the next node
                log.warning("cluster: retained messages of %s not copied: %r", node, exc)
                continue
            if kept is not None:
                log.info("cluster: %d retained messages copied from %s", kept, node)
                return

    async def _copy_retained_of(self, node: str) -> int | None:
        """The retained messages of ``node`` this node has none of, kept here; how many,
        or None when ``node`` stopped answering."""
        assert self.service is not None
        kept = 0
        for topic_filter in RETAINED_FILTERS:
            after = ""
            while True:
                answer = await self._ask(node, "retained", filter=topic_filter, after=after)
                if answer is None:
                    log.warning("cluster: %s did not send its retained messages in time", node)
                    return None
                messages = [message_from_json(fields) for fields in answer["messages"]]
                for message in messages:
                    if not await self._retained_here(message.topic) and await self.service.store_retained(message):
                        kept += 1
                if not answer.get("more") or not messages:
                    break
                after = messages[-1].topic
        return kept

    async def _retained_here(self, topic: str) -> bool:
        assert self.service is not None
        return any(message.topic == topic for message in await self.service.retained(topic))

    async def _retained_page(self, control: Control) -> None:
        """Answer a ``retained`` question: the retained messages matching its filter whose
        topics sort after its ``after``, one page (``more``: there are others)."""
        assert self.service is not None
        body = control.body
        try:
            after, topic_filter = str(body.get("after", "")), str(body["filter"])
            # The first page reads the retained messages once; the next ones page through
            # that list (a fresh read per page would cost the square of their number).
            key, now = (control.node, topic_filter), time.monotonic()
            snapshot = self._retained_snapshots.get(key)
            if not after or snapshot is None or now - snapshot[0] > RETAINED_SNAPSHOT_TTL:
                messages = list(await self.service.retained(topic_filter))
                snapshot = (now, messages, [message.topic for message in messages])
                self._retained_snapshots[key] = snapshot
            _, messages, topics = snapshot
            start = bisect.bisect_right(topics, after)
            page: list[dict[str, Any]] = []
            size = 0
            for message in itertools.islice(messages, start, None):
                size += len(message.payload)
                if page and (size > RETAINED_PAGE_BYTES or len(page) >= RETAINED_PAGE_MESSAGES):
                    break
                page.append(message_to_json(message))
            more = start + len(page) < len(messages)
            if not more:
                self._retained_snapshots.pop(key, None)
            await self._answer(control, messages=page, more=more)
        except Exception as exc:
            log.warning("cluster: retained messages not sent to %s: %r", control.node, exc)


def _plugin_fields(info: PluginInfo) -> dict[str, Any]:
    # Not the table it was loaded with: it may hold secrets, and values JSON has not.
    return {**attrs.asdict(info, recurse=False), "table": None}


def _plugin_of(fields: dict[str, Any]) -> PluginInfo:
    fields = {**fields, "hooks": tuple(fields["hooks"]), "implementations": tuple(fields["implementations"])}
    return PluginInfo(**fields)


def _reading_fields(reading: MetricReading) -> dict[str, Any]:
    samples = None if reading.samples is None else [[list(k), v] for k, v in reading.samples.items()]
    return {
        "kind": reading.kind,
        "name": reading.name,
        "help": reading.help,
        "labels": list(reading.labels),
        "samples": samples,
    }


def _reading_of(fields: dict[str, Any]) -> MetricReading:
    samples = fields["samples"]
    return MetricReading(
        str(fields["kind"]),
        str(fields["name"]),
        str(fields["help"]),
        tuple(str(label) for label in fields["labels"]),
        None if samples is None else {tuple(str(v) for v in values): value for values, value in samples},
    )
