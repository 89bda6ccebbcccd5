"""The store part of the service face: what plugins keep in the store, and the sessions
a cluster node takes from a store the nodes share.

A store plugin (the built-in ``sqlite_store``, ``redis_store``) implements the
``record_*``, ``store_commit`` and ``session_store_*`` provider hooks; plugins reach them
through these methods of :class:`~ternmq.kernel.service.Service` (docs/plugins.md, "The
service face").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .values.stored import StoreError

if TYPE_CHECKING:
    from .protocol.ports import BrokerCore
    from .values.types import SessionSnapshot

# The store's records of which namespaces a plugin imported a file into (import_pending).
IMPORTS_NAMESPACE = "$imports"

# What the dispatcher answers for a store hook that failed (so it differs from "none").
_STORE_FAILED = object()


class RecordsFace:
    """Service's records methods (a base class of Service, which sets ``_broker``)."""

    __slots__ = ()
    _broker: BrokerCore

    @property
    def records_available(self) -> bool:
        """True while a store keeps plugin records (a plugin implements ``record_save``).
        Without one a plugin keeps its data its own way (a file, or memory)."""
        return self._broker.dispatcher.has("record_save")

    async def load_records(self, namespace: str) -> dict[str, bytes]:
        """Every record of ``namespace`` (key -> value); empty without a store.
        ``StoreError`` when the store failed to read them (an empty namespace and a
        failed read must not look alike: a plugin would start without its data)."""
        records = await self._broker.dispatcher.provide(
            "record_load", default={}, failed=_STORE_FAILED, namespace=namespace
        )
        if records is _STORE_FAILED:
            raise StoreError(f"the store failed to read the records of {namespace!r} (see the log)")
        return dict(records)

    async def import_pending(self, namespace: str) -> bool:
        """True when a store is loaded, holds no record of ``namespace`` and was never
        told (``note_import``) of a file imported into it: a file is imported once, even
        if it stays (a failed commit, a refused rename) or the namespace empties later."""
        if not self.records_available or await self.load_records(namespace):
            return False
        return namespace not in await self.load_records(IMPORTS_NAMESPACE)

    def note_import(self, namespace: str, source: str) -> None:
        """Remember that ``source`` (a file) was imported into ``namespace``."""
        self.save_record(IMPORTS_NAMESPACE, namespace, source.encode())

    def save_record(self, namespace: str, key: str, value: bytes) -> None:
        """Keep one record (replacing the key's value); written by the store's writer
        soon after, durable once :meth:`commit_store` returns. Nothing without a store."""
        self._broker.dispatcher.provide_now("record_save", namespace=namespace, key=key, value=value)

    def delete_record(self, namespace: str, key: str) -> None:
        """Forget one record (as :meth:`save_record`)."""
        self._broker.dispatcher.provide_now("record_delete", namespace=namespace, key=key)

    async def commit_store(self) -> bool:
        """Return once every record and message handed to the store is durable: True, or
        False when the store failed to commit (it logged why; a store may retry later).
        True without a store: nothing waits."""
        return await self._broker.router.journal.commit()

    async def take_stored_session(self, client_id: str, *, clean_start: bool = False) -> SessionSnapshot | None:
        """For a cluster plugin: the session that a node which is down kept for
        ``client_id`` in a store the nodes share (``session_store_take``), this node's
        from now on; None when there is none (or no such store). With ``clean_start`` the
        store forgets it and None is returned: the client starts anew, and the node that
        kept it must not restore it at its next start."""
        snapshot: SessionSnapshot | None = await self._broker.dispatcher.provide(
            "session_store_take", client_id=client_id, forget=clean_start
        )
        return None if clean_start else snapshot

    async def store_lost(self) -> None:
        """For a store plugin that lost what it kept (a Redis that restarted empty): every
        persistent session of this node is given to it again, with its messages, as to a
        store loaded now."""
        await self._broker.lifecycle.store_changed()
