"""The message journal: each QoS 1/2 message of a stored session, handed to the store.

A session store's snapshots (``session_store_save``) come at subscription changes and
disconnects; a message acknowledged in between would be lost on a crash. So the
session layer reports every change of a stored session's QoS 1/2 messages here as it
happens (queued, in flight, released, acknowledged, dropped, and the client's own QoS 2
PUBLISH awaiting its PUBREL), and the journal passes each to the store's synchronous
``message_store_save``/``message_store_delete`` hooks. The store batches them; the
router awaits :meth:`MessageJournal.commit` before it acknowledges a PUBLISH whose
message was saved.

A session has its journal (``Session.journal``) once a store has been given the session
(``SessionLifecycle.save_session``) and the store implements the message hooks; other
sessions (clean ones, and every session when no store is loaded) pay one ``is None``
test per QoS 1/2 delivery.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

from ..values.types import StoredMessage
from .session import Delivery

if TYPE_CHECKING:
    from ..hooks.dispatch import HookDispatcher
    from .session import Session


class MessageJournal:
    """Per-message writes of stored sessions (module docstring)."""

    def __init__(self, dispatcher: HookDispatcher) -> None:
        self.dispatcher = dispatcher
        # Entry ids grow with time across restarts (nanoseconds at start), so a restored
        # session's entries sort before every new one; ``restore`` moves past the
        # largest id a store gave back, should the clock have gone back.
        self._ids = itertools.count(time.time_ns())

    @property
    def active(self) -> bool:
        """True while a store implements the per-message hooks."""
        return self.dispatcher.has("message_store_save")

    def save(self, client_id: str, delivery: Delivery, state: str, packet_id: int | None = None) -> None:
        """Save ``delivery`` of ``client_id``'s session in ``state`` (giving it an id)."""
        if not delivery.entry_id:
            delivery.entry_id = next(self._ids)
        entry = StoredMessage(
            delivery.entry_id, state, delivery.message, delivery.qos, delivery.retain, delivery.sub_ids, packet_id
        )
        self.dispatcher.provide_now("message_store_save", client_id=client_id, entry=entry)

    def received(self, client_id: str, packet_id: int) -> int:
        """The client's QoS 2 PUBLISH ``packet_id`` awaits its PUBREL; returns the entry id."""
        entry_id = next(self._ids)
        entry = StoredMessage(entry_id, "received", None, 2, False, (), packet_id)
        self.dispatcher.provide_now("message_store_save", client_id=client_id, entry=entry)
        return entry_id

    def delete(self, client_id: str, entry_id: int) -> None:
        """Forget an entry (0: one never saved, nothing to do)."""
        if entry_id:
            self.dispatcher.provide_now("message_store_delete", client_id=client_id, entry_id=entry_id)

    def adopt(self, session: Session) -> None:
        """A store was given ``session``: from now on its messages come here, starting
        with those it holds (in flight, queued, QoS 2 received)."""
        session.journal = self
        client_id = session.client_id
        for packet_id, delivery in session.inflight.items():
            self.save(client_id, delivery, "released" if delivery.released else "inflight", packet_id)
        for delivery in session.queue:
            if delivery.qos:
                self.save(client_id, delivery, "queued")
        for packet_id in session.incoming_qos2:
            session.incoming_qos2[packet_id] = self.received(client_id, packet_id)

    async def commit(self) -> bool:
        """Return once the store has written everything handed to it: True, or False when
        it failed or timed out (it logged why)."""
        failed = object()
        return await self.dispatcher.provide("store_commit", failed=failed) is not failed

    def restore(self, session: Session, entry: StoredMessage) -> None:
        """Put a store's entry back where it was in ``session`` (at start, in entry
        order): in flight under its packet id (a QoS 2 one released or not), queued, or a
        QoS 2 PUBLISH of the client awaiting its PUBREL. Queued ones meet ``on_deliver``
        again when the client is back (the store does not keep whether they had). An
        entry that cannot be placed (no message, or a packet id in use) is queued, or
        deleted when it has no message."""
        if entry.entry_id >= next(self._ids):
            self._ids = itertools.count(entry.entry_id + 1)
        state = entry.state
        packet_id = entry.packet_id
        if state == "received" and packet_id is not None and packet_id not in session.incoming_qos2:
            session.incoming_qos2[packet_id] = entry.entry_id
            return
        if entry.message is None:
            self.delete(session.client_id, entry.entry_id)
            return
        in_flight = state in ("inflight", "released") and packet_id is not None and packet_id not in session.inflight
        delivery = Delivery(
            entry.message, entry.qos, entry.retain, entry.sub_ids, hooked=in_flight, entry_id=entry.entry_id
        )
        if in_flight:
            assert packet_id is not None
            delivery.released = state == "released"
            session.inflight[packet_id] = delivery
        else:
            session.queue.append(delivery)


def session_entries(session: Session) -> tuple[StoredMessage, ...]:
    """Every QoS 1/2 message of ``session`` as entries, where it is (in flight, released,
    queued; the client's QoS 2 PUBLISH awaiting PUBREL): what a session handed to another
    node takes with it. Entry ids number them in order (1, 2, ...) when no store did."""
    entries: list[StoredMessage] = []

    def add(delivery: Delivery, state: str, packet_id: int | None) -> None:
        entry_id = delivery.entry_id or len(entries) + 1
        entries.append(
            StoredMessage(entry_id, state, delivery.message, delivery.qos, delivery.retain, delivery.sub_ids, packet_id)
        )

    for packet_id, delivery in session.inflight.items():
        add(delivery, "released" if delivery.released else "inflight", packet_id)
    for delivery in session.queue:
        add(delivery, "queued", None)
    for packet_id in session.incoming_qos2:
        entries.append(StoredMessage(len(entries) + 1, "received", None, 2, False, (), packet_id))
    return tuple(entries)
