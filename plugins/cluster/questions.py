"""Questions to other nodes and their answers: control frames through each node's inbox.

A question (``_ask``) is a control frame with a request id to the node's inbox; the node
answers with an ``answer`` frame under that id. A takeover (registry.py), ``session
show`` (``cluster_sessions``) and ``session disconnect`` (``cluster_disconnect``) ask.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import attrs
import trio

from ternmq.kernel import SessionInfo, hookimpl, session_to_json

from .frames import Control, encode_control, inbox_channel
from .registry import clients_key
from .state import ASK_TIMEOUT, NodeState

log = logging.getLogger("ternmq.plugins.cluster")


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
            await self.redis.publish(inbox_channel(self.config.prefix, node), question)
            with trio.move_on_after(self._ask_timeout):
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
        await self.redis.publish(inbox_channel(self.config.prefix, control.node), frame)

    @hookimpl
    async def cluster_sessions(self) -> list[SessionInfo]:
        found: list[SessionInfo] = []

        async def ask(node: str) -> None:
            answer = await self._ask(node, "sessions")
            if answer is None:
                log.warning("cluster: %s did not list its sessions in time", node)
                return
            found.extend(SessionInfo(**fields) for fields in answer["sessions"])

        now = time.time()
        async with trio.open_nursery() as nursery:
            for node in sorted(self.heartbeats):
                if node != self.node and self.running(node, now):
                    nursery.start_soon(ask, node)
        return sorted(found, key=lambda info: (info.node, info.client_id))

    @hookimpl
    async def cluster_disconnect(self, client_id: str, cleanup: bool) -> bool:
        assert self.redis is not None
        holder = await self.redis.hget(clients_key(self.config.prefix), client_id)
        node = holder.decode() if isinstance(holder, bytes) else None
        if node is None or node == self.node or not self.running(node):
            return False
        answer = await self._ask(node, "disconnect", client_id=client_id, cleanup=cleanup)
        return bool(answer and answer.get("done"))

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
        elif control.kind == "disconnect":
            done = self.service.disconnect(str(body["client_id"]), cleanup=bool(body["cleanup"]))
            await self._answer(control, done=done)
        elif control.kind == "takeover":
            assert self._nursery is not None
            self._nursery.start_soon(self._hand_over, control)  # the inbox goes on meanwhile

    async def _hand_over(self, control: Control) -> None:
        assert self.redis is not None and self.service is not None
        body = control.body
        try:
            snapshot = await self.service.hand_over(str(body["client_id"]), clean_start=bool(body.get("clean_start")))
            session = None if snapshot is None else session_to_json(snapshot, with_messages=True)
            await self._answer(control, client_id=body["client_id"], session=session)
        except Exception:
            log.exception("cluster: hand-over of %r to %s failed", body.get("client_id"), control.node)
