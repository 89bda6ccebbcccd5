"""The registrar: claims of client ids across the cluster, batched (registry.py), and the
sessions a claim takes over from the node that held them."""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from ternmq.kernel import ClientInfo, SessionSnapshot, hookimpl, session_from_json

from .registry import CLAIM, CLAIM_LINGER, CLAIM_OVER, RELEASE, Claim, claimed_at_key, clients_key
from .state import ASK_TIMEOUT, COMMAND_TIMEOUT, NodeState

log = logging.getLogger("ternmq.plugins.cluster")

SESSION_TAKEN_OVER = 0x8E


class Registrar(NodeState):
    """The cluster plugin's client ids (registry.py)."""

    _claim_over_script: Any = None  # (registered with the registrar's own)

    @hookimpl
    def cluster_claim(self, client: ClientInfo) -> None:
        if self.alive:  # (its tasks ended, the plugin failed: as a single node)
            self.batches.claim(client.client_id, True)

    @hookimpl
    async def cluster_register(self, client: ClientInfo, clean_start: bool) -> SessionSnapshot | None:
        if not self.alive:
            return None  # the plugin's tasks ended (it failed): as a single node
        claim = self.batches.claim(client.client_id, clean_start)
        try:
            await claim.done.wait()
        finally:
            # Given up (the hook's deadline, the client gone): a session taken for it
            # meanwhile is kept here, offline, not lost (see _taken).
            claim.abandoned = not claim.done.is_set()
        if claim.session is not None:
            self._routes_changed.set()  # its subscriptions come here with it
        return claim.session

    async def _taken(self, claim: Claim, session: SessionSnapshot, *, in_store: bool) -> None:
        """``session`` was taken for ``claim`` (from the store, or handed over): for its
        CONNECT to resume, or, when the CONNECT gave up waiting, kept here offline until
        its client comes back."""
        assert self.service is not None
        self.takeovers += 1
        if not claim.abandoned:
            claim.session = session
        elif await self.service.restore_session(session, in_store=in_store):
            self._routes_changed.set()
        else:
            log.warning("cluster: the session of %s taken too late for its CONNECT; dropped", claim.client_id)

    async def _sweep_claims(self) -> None:
        """Give back, now and then, the client ids this node claimed and holds no session
        of any more (gone clients): cheaper than a Redis write at every disconnect."""
        assert self.redis is not None and self.service is not None
        key = clients_key(self.config.prefix)
        node = self.node.encode()
        while True:
            await trio.sleep(self.config.claim_sweep_interval)
            try:
                with trio.fail_after(COMMAND_TIMEOUT * 5):
                    mine = [field.decode() async for field, holder in self.redis.hscan_iter(key) if holder == node]
            except Exception as exc:  # TooSlowError too
                log.warning("cluster: client ids not swept: %s", exc)
                continue
            lately = self.batches.claimed_lately(self.config.claim_sweep_interval)
            for client_id in mine:
                if client_id not in lately and self.service.session_info(client_id) is None:
                    self.batches.release(client_id)

    async def _registrar(self) -> None:
        """Claims and releases, batched (registry.py); takeovers of claims another node
        held."""
        assert self.redis is not None and self._nursery is not None
        keys = [clients_key(self.config.prefix), claimed_at_key(self.config.prefix)]
        claim_script = self.redis.register_script(CLAIM)
        self._claim_over_script = self.redis.register_script(CLAIM_OVER)
        release_script = self.redis.register_script(RELEASE)
        while True:
            await self.batches.ready.wait()
            if self.config.linger:
                # Within linger when a CONNECT waits, else within CLAIM_LINGER.
                with trio.move_on_after(max(CLAIM_LINGER, self.config.linger)):
                    await self.batches.awaited.wait()
                    await trio.sleep(self.config.linger)
            claims, releases = self.batches.take()
            previous: list[Any] = []
            try:
                with trio.fail_after(COMMAND_TIMEOUT):
                    if releases:
                        await release_script(keys=keys, args=[self.node, *releases])
                    if claims:
                        times = [value for c in claims for value in (c.client_id, repr(c.at))]
                        previous = await claim_script(keys=keys, args=[self.node, *times])
            except Exception as exc:  # Redis down (TooSlowError too): they connect as on one node
                log.warning("cluster: %d client ids not claimed: %s", len(claims), exc)
                for claim in claims:
                    claim.done.set()
                # Until Redis is back, claims are answered at once (claimed again then).
                meanwhile = trio.CancelScope()  # entered by the task it cancels
                self._nursery.start_soon(self._answer_claims_meanwhile, meanwhile)
                try:
                    await self.reachable()
                finally:
                    meanwhile.cancel()
                self._resync = True
                self._routes_changed.set()
                continue
            for claim, owner in zip(claims, previous or (), strict=False):
                held = owner.decode("utf-8", "replace") if isinstance(owner, bytes) else str(owner or "")
                if (
                    held.startswith("!")
                    and not self.running(held[1:])
                    and await self._claim_over(claim, keys, held[1:])
                ):
                    # A later CONNECT's claim, but by a node that is down now (or with a
                    # clock ahead of this one's): this one is kept after all.
                    held = held[1:]
                if claim.again:
                    if held.startswith("!"):
                        self._nursery.start_soon(self._lost, claim, held[1:])
                    claim.done.set()  # (written again after Redis came back: no takeover)
                elif not held or held == self.node:
                    claim.done.set()
                elif held.startswith("!"):  # a later CONNECT on another node keeps it
                    self._nursery.start_soon(self._lost, claim, held[1:])
                elif self.running(held):
                    self._nursery.start_soon(self._take_over, claim, held)
                    if claim.clean_start:
                        claim.done.set()  # nothing to resume: the old node is told meanwhile
                else:  # its node is down: a store the nodes share may keep its session
                    self._nursery.start_soon(self._take_stored, claim, held)

    @hookimpl
    async def cluster_leave(self, node: str) -> int:
        """``node`` is down and removed (``cluster leave``): the sessions of the clients
        it held are taken from the store and kept here, offline, until their clients come
        back (to any node: they are claimed here); its heartbeat and routes go."""
        assert self.redis is not None and self.service is not None
        prefix = self.config.prefix
        held = node.encode()
        clients = [
            field.decode() async for field, holder in self.redis.hscan_iter(clients_key(prefix)) if holder == held
        ]
        taken = 0
        for client_id in clients:
            if self.service.session_info(client_id) is not None:
                continue
            snapshot = await self.service.take_stored_session(client_id)
            if snapshot is not None and await self.service.restore_session(snapshot):
                taken += 1
            self.batches.claim(client_id, True)
        await self._remove_node(self.redis, node)
        self.heartbeats.pop(node, None)
        self.routes.forget(node)
        self._forget_peer(node)
        self._routes_changed.set()  # the sessions' subscriptions are this node's now
        log.info("cluster: %s removed; %d of its sessions taken over", node, taken)
        return taken

    async def _claim_over(self, claim: Claim, keys: list[str], holder: str) -> bool:
        """Write ``claim`` over that of ``holder`` (a node that is down), unless another
        claim came meanwhile; whether it was written."""
        assert self.redis is not None
        try:
            with trio.fail_after(COMMAND_TIMEOUT):
                written: Any = await self._claim_over_script(
                    keys=keys, args=[claim.client_id, holder, self.node, repr(claim.at)]
                )
        except Exception as exc:
            log.warning("cluster: %s not claimed over a node that is down: %s", claim.client_id, exc)
            return False
        return bool(written)

    async def _answer_claims_meanwhile(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await self.batches.ready.wait()
                for claim in self.batches.take()[0]:
                    claim.done.set()

    async def _lost(self, claim: Claim, node: str) -> None:
        """``claim`` lost to a later CONNECT on ``node``: this node's client goes, as if
        taken over (0x8E)."""
        assert self.service is not None
        claim.done.set()
        log.info("cluster: %s connected later on %s; disconnected here", claim.client_id, node)
        with trio.move_on_after(ASK_TIMEOUT):
            # The client's CONNECT may still be under way (a CONNECT without clean start
            # waits for this very answer): until its session is there (polled: the
            # service face has no event for a session attached, and this is rare).
            while (info := self.service.session_info(claim.client_id)) is None or not info.is_online:  # noqa: ASYNC110
                await trio.sleep(0.01)
            # A session this CONNECT made goes with it (saved, it would take the store's
            # copy from the node that keeps the client now); one it resumed stays, for
            # that node's takeover.
            self.service.disconnect(claim.client_id, SESSION_TAKEN_OVER, cleanup=info.created_at >= claim.at)

    async def _take_stored(self, claim: Claim, node: str) -> None:
        """Take ``claim``'s session from the store, where ``node`` (down) left it; with
        clean start the store forgets it (its node must not restore it later), unless the
        new session here is persistent: its first save replaces it in the store."""
        assert self.service is not None
        try:
            here = self.service.session_info(claim.client_id)
            if here is None or (claim.clean_start and here.expiry_interval == 0):
                session = await self.service.take_stored_session(claim.client_id, clean_start=claim.clean_start)
                if session is not None:
                    log.info("cluster: session of %s taken from the store (%s is down)", claim.client_id, node)
                    await self._taken(claim, session, in_store=True)
        except Exception as exc:
            log.warning("cluster: the stored session of %s not taken: %s", claim.client_id, exc)
        finally:
            claim.done.set()

    async def _take_over(self, claim: Claim, node: str) -> None:
        """Ask ``node`` for ``claim``'s session (a question, as _ask's); no answer in time
        (it died a moment ago, not yet counted down): the session it left in a store the
        nodes share, if any; else the client connects as if new."""
        assert self.service is not None
        try:
            answer = await self._ask(node, "takeover", client_id=claim.client_id, clean_start=claim.clean_start)
            if answer is None:
                beat = self.heartbeats.get(node, 0.0)
                if time.time() - beat < 2 * self.config.heartbeat_interval:
                    # It beats, and is slow to hand over (an old connection that takes
                    # long to close): its session stays its own; the client starts anew.
                    log.warning("cluster: %s did not hand %s over in time", node, claim.client_id)
                    return
                log.warning("cluster: %s did not hand %s over and beats no more", node, claim.client_id)
                await self._take_stored(claim, node)
                return
            if answer["session"] is not None and not claim.clean_start:
                await self._taken(claim, session_from_json(claim.client_id, answer["session"]), in_store=False)
        except Exception as exc:
            log.warning("cluster: %s not taken over from %s: %s", claim.client_id, node, exc)
        finally:
            claim.done.set()
