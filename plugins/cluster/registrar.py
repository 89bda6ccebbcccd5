"""The registrar: claims of client ids across the cluster, batched (registry.py), and the
sessions a claim takes over from the node that held them."""

from __future__ import annotations

import logging
from typing import Any

import trio

from ternmq.kernel import ClientInfo, SessionSnapshot, hookimpl, session_from_json

from .registry import CLAIM, RELEASE, Claim, clients_key
from .state import NodeState

log = logging.getLogger("ternmq.plugins.cluster")


class Registrar(NodeState):
    """The cluster plugin's client ids (registry.py)."""

    @hookimpl
    async def cluster_register(self, client: ClientInfo, clean_start: bool) -> SessionSnapshot | None:
        claim = self.batches.claim(client.client_id, clean_start)
        if not self.alive:
            return None  # the plugin's tasks ended (it failed): as a single node
        await claim.done.wait()
        if claim.session is not None:
            self._routes_changed.set()  # its subscriptions come here with it
        return claim.session

    async def _sweep_claims(self) -> None:
        """Give back, now and then, the client ids this node claimed and holds no session
        of any more (gone clients): cheaper than a Redis write at every disconnect."""
        assert self.redis is not None and self.service is not None
        key = clients_key(self.config.prefix)
        node = self.node.encode()
        while True:
            await trio.sleep(self.config.claim_sweep_interval)
            try:
                mine = [field.decode() async for field, holder in self.redis.hscan_iter(key) if holder == node]
            except Exception as exc:
                log.warning("cluster: client ids not swept: %s", exc)
                continue
            for client_id in mine:
                if self.service.session_info(client_id) is None:
                    self.batches.release(client_id)

    async def _registrar(self) -> None:
        """Claims and releases, batched (registry.py); takeovers of claims another node
        held."""
        assert self.redis is not None and self._nursery is not None
        key = clients_key(self.config.prefix)
        claim_script = self.redis.register_script(CLAIM)
        release_script = self.redis.register_script(RELEASE)
        while True:
            await self.batches.ready.wait()
            if self.config.linger:
                await trio.sleep(self.config.linger)
            claims, releases = self.batches.take()
            previous: list[Any] = []
            try:
                if releases:
                    await release_script(keys=[key], args=[self.node, *releases])
                if claims:
                    previous = await claim_script(keys=[key], args=[self.node, *(c.client_id for c in claims)])
            except Exception as exc:  # Redis down: they connect as on one node
                log.warning("cluster: %d client ids not claimed: %s", len(claims), exc)
                for claim in claims:
                    claim.done.set()
                # Until Redis is back, claims are answered at once (claimed again then).
                with trio.CancelScope() as waiting:
                    self._nursery.start_soon(self._answer_claims_meanwhile, waiting)
                    await self.reachable()
                waiting.cancel()
                self._resync = True
                self._routes_changed.set()
                continue
            for claim, owner in zip(claims, previous or (), strict=False):
                held = owner.decode("utf-8", "replace") if isinstance(owner, bytes) else str(owner or "")
                if not held or held == self.node:
                    claim.done.set()
                elif self.running(held):
                    self._nursery.start_soon(self._take_over, claim, held)
                    if claim.clean_start:
                        claim.done.set()  # nothing to resume: the old node is told meanwhile
                else:  # its node is down: a store the nodes share may keep its session
                    self._nursery.start_soon(self._take_stored, claim, held)

    async def _answer_claims_meanwhile(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await self.batches.ready.wait()
                for claim in self.batches.take()[0]:
                    claim.done.set()

    async def _take_stored(self, claim: Claim, node: str) -> None:
        """Take ``claim``'s session from the store, where ``node`` (down) left it; with
        clean start the store forgets it (its node must not restore it later)."""
        assert self.service is not None
        try:
            if self.service.session_info(claim.client_id) is None:
                session = await self.service.take_stored_session(claim.client_id, clean_start=claim.clean_start)
                if session is not None:
                    claim.session = session
                    self.takeovers += 1
                    log.info("cluster: session of %s taken from the store (%s is down)", claim.client_id, node)
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
                log.warning("cluster: %s did not hand %s over in time; taken from the store", node, claim.client_id)
                claim.session = await self.service.take_stored_session(claim.client_id, clean_start=claim.clean_start)
            elif answer["session"] is not None and not claim.clean_start:
                claim.session = session_from_json(claim.client_id, answer["session"])
        except Exception as exc:
            log.warning("cluster: %s not taken over from %s: %s", claim.client_id, node, exc)
        finally:
            claim.done.set()
        self.takeovers += 1
