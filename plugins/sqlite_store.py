"""The broker's embedded store: one SQLite file in the data directory (``sqlite_store``).

Implements the store's provider hooks, so that what the broker acknowledged survives a
restart, a crash and ``kill -9``:

* ``session_store_load_all``, ``session_store_save``, ``session_store_delete``:
  persistent sessions (subscriptions, expiry, mountpoint, the will still owed);
* ``message_store_save``, ``message_store_delete``: each QoS 1/2 message of a stored
  session, queued or in flight either way, written when it is queued or changes state
  and deleted when it is acknowledged or dropped;
* ``record_load``, ``record_save``, ``record_delete``: plugins' records through the
  service face (the retainer's messages, API keys, bans, webhook registrations);
* ``store_commit``: returns once everything handed over so far is on disk. The broker
  awaits it before it acknowledges a QoS 1/2 PUBLISH whose message it saved, so a
  PUBACK or PUBREC means "written".

Writes never block the event loop: the hooks only append to a batch, and one writer
commits each batch in one transaction in a worker thread. Writes that arrive while a
commit runs go together into the next one (a group commit): the cost of a commit is
shared by every message of a burst.

The file keeps its schema version (SQLite's ``user_version``). A file of a newer
ternmq, a file that is not a ternmq store, or a damaged one stops the start with an
error naming the file; it is never replaced or emptied. The file is created readable
by its owner only (it holds API keys).

Config keys (``[plugins.sqlite_store]``):

* ``file`` (default none: ``<data_dir>/ternmq.db``), relative to the configuration
  file's folder.
* ``synchronous`` (default ``"full"``): SQLite's ``synchronous`` in WAL mode. ``"full"``
  survives a power cut; ``"normal"`` survives a crash of the broker and of the process
  but may lose the last commits on a power cut, for fewer disk syncs.

Metrics: ``store_writes`` (rows written or deleted), ``store_commits``,
``store_failures`` (commits that failed and are retried), ``store_pending`` (writes
waiting for the next commit).

Load it before the plugins that keep records (the retainer, ``api``, ``banned``,
``webhooks``): plugins load in configuration order and look for a store when they start.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
from collections.abc import Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

import attrs
import trio

from ternmq.kernel import (
    UNREADABLE,
    GroupCommit,
    SessionSnapshot,
    StoredMessage,
    StoreError,
    entry_from_json,
    entry_to_json,
    hookimpl,
    session_from_json,
    session_to_json,
)

log = logging.getLogger("ternmq.plugins.sqlite_store")

FILE_NAME = "ternmq.db"
SCHEMA_VERSION = 1
TABLES = ("sessions", "messages", "records")
SCHEMA = """
CREATE TABLE sessions (client_id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE messages (
    client_id TEXT NOT NULL, entry_id INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (client_id, entry_id)
) WITHOUT ROWID;
CREATE TABLE records (
    namespace TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
"""
# Seconds the writer waits after a failed commit (disk full, file locked) before it
# tries the same batch again.
RETRY_DELAY = 1.0

SAVE_SESSION = "INSERT OR REPLACE INTO sessions (client_id, body) VALUES (?, ?)"
DELETE_SESSION = "DELETE FROM sessions WHERE client_id = ?"
DELETE_SESSION_MESSAGES = "DELETE FROM messages WHERE client_id = ?"
SAVE_MESSAGE = "INSERT OR REPLACE INTO messages (client_id, entry_id, body) VALUES (?, ?, ?)"
DELETE_MESSAGE = "DELETE FROM messages WHERE client_id = ? AND entry_id = ?"
SAVE_RECORD = "INSERT OR REPLACE INTO records (namespace, key, value) VALUES (?, ?, ?)"
DELETE_RECORD = "DELETE FROM records WHERE namespace = ? AND key = ?"

Write = tuple[str, tuple[Any, ...]]


@attrs.frozen
class Config:
    file: Path | None = None
    synchronous: str = attrs.field(default="full", validator=attrs.validators.in_(("full", "normal")))


def open_store(file: Path, synchronous: str) -> sqlite3.Connection:
    """Open (or create) the store file and check its schema; StoreError says why not."""
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Made owner-only before SQLite opens it (its -wal and -shm files copy the mode).
        os.close(os.open(file, os.O_CREAT | os.O_RDWR, 0o600))
        db = sqlite3.connect(file, check_same_thread=False)
    except OSError as exc:
        raise StoreError(f"{file}: cannot be opened: {exc.strerror or exc}") from None
    try:
        _check_schema(db, file)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise StoreError(f"{file}: not a ternmq store, or damaged ({exc})") from None
    except StoreError:
        db.close()
        raise
    return db


def _check_schema(db: sqlite3.Connection, file: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{file}: written by a newer ternmq (store schema {version}; this one reads up to "
            f"{SCHEMA_VERSION}); not opened, so nothing in it is lost"
        )
    if version == 0:
        if tables:
            raise StoreError(f"{file}: not a ternmq store (tables {', '.join(sorted(tables))}, no schema version)")
        with db:
            db.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        return
    missing = [table for table in TABLES if table not in tables]
    if missing:
        raise StoreError(f"{file}: damaged: table {', '.join(missing)} missing")
    result = db.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise StoreError(f"{file}: damaged: {result}")


# -- rows -------------------------------------------------------------------------------


def session_body(session: SessionSnapshot) -> str:
    """A session as its row keeps it (the messages have their own rows)."""
    return json.dumps(session_to_json(session), separators=(",", ":"))


def message_body(entry: StoredMessage) -> str:
    return json.dumps(entry_to_json(entry), separators=(",", ":"))


def stored_message(entry_id: int, body: str) -> StoredMessage:
    """A message row back; one of UNREADABLE when it is not one."""
    return entry_from_json(entry_id, json.loads(body))


def session_snapshot(client_id: str, body: str, messages: Sequence[StoredMessage]) -> SessionSnapshot:
    """A session row back, with its messages; one of UNREADABLE when it is not one."""
    return session_from_json(client_id, json.loads(body), tuple(messages))


def read_sessions(db: sqlite3.Connection) -> list[SessionSnapshot]:
    """Every session with its messages in entry order; rows that do not read are logged
    and left in the file (never deleted: a later ternmq may read them)."""
    messages: dict[str, list[StoredMessage]] = {}
    for client_id, entry_id, body in db.execute(
        "SELECT client_id, entry_id, body FROM messages ORDER BY client_id, entry_id"
    ):
        try:
            messages.setdefault(client_id, []).append(stored_message(entry_id, body))
        except UNREADABLE as exc:
            log.error("store: message %d of session %r does not read (%r); skipped", entry_id, client_id, exc)
    snapshots = []
    for client_id, body in db.execute("SELECT client_id, body FROM sessions ORDER BY client_id"):
        try:
            snapshots.append(session_snapshot(client_id, body, messages.get(client_id, ())))
        except UNREADABLE as exc:
            log.error("store: session %r does not read (%r); skipped", client_id, exc)
    return snapshots


# -- the plugin ---------------------------------------------------------------------------


class Plugin:
    """The SQLite store (module docstring)."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.file: Path | None = None  # known once served: it may be in the data directory
        self._db: sqlite3.Connection | None = None
        self.writer: GroupCommit[Write] = GroupCommit(self._apply, "the store", retry_delay=RETRY_DELAY)

    @hookimpl
    def register_metrics(self, registry: Any) -> None:
        self.writer.register_metrics(registry)

    async def serve(self, service: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.file = self.config.file or service.data_dir / FILE_NAME
        self.writer.describe = str(self.file)
        self._db = await trio.to_thread.run_sync(open_store, self.file, self.config.synchronous)
        log.info("store: %s", self.file)
        task_status.started()
        try:
            await self.writer.run()
        finally:
            db, self._db = self._db, None
            db.close()

    # -- the writer ---------------------------------------------------------------------

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        self.writer.write((sql, params))

    async def _apply(self, batch: list[Write]) -> None:
        # Shielded: a commit under way finishes (a thread cannot be stopped), and what it
        # wrote is then counted as written.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._apply_in_thread, batch)

    def _apply_in_thread(self, batch: list[Write]) -> None:
        """Run in a worker thread: the batch in one transaction."""
        db = self._db
        temporary = db is None
        if db is None:
            # Unloaded (the broker is stopping): its last saves still get written.
            assert self.file is not None
            db = open_store(self.file, self.config.synchronous)
        try:
            with db:
                for sql, writes in itertools.groupby(batch, key=itemgetter(0)):
                    db.executemany(sql, [params for _, params in writes])
        finally:
            if temporary:
                db.close()

    async def _read(self, reader: Any) -> Any:
        """Run ``reader(db)`` in a worker thread after what is pending is written."""
        await self.writer.flush()
        async with self.writer.lock:
            db = self._db
            if db is None:
                raise StoreError("the store is not open")
            return await trio.to_thread.run_sync(reader, db)

    @hookimpl
    async def store_commit(self) -> None:
        await self.writer.commit()

    # -- sessions and their messages ----------------------------------------------------

    @hookimpl
    async def session_store_load_all(self) -> list[SessionSnapshot]:
        snapshots: list[SessionSnapshot] = await self._read(read_sessions)
        return snapshots

    @hookimpl
    def session_store_save(self, session: SessionSnapshot) -> None:
        self._write(SAVE_SESSION, (session.client_id, session_body(session)))

    @hookimpl
    def session_store_delete(self, client_id: str) -> None:
        self._write(DELETE_SESSION, (client_id,))
        self._write(DELETE_SESSION_MESSAGES, (client_id,))

    @hookimpl
    def message_store_save(self, client_id: str, entry: StoredMessage) -> None:
        self._write(SAVE_MESSAGE, (client_id, entry.entry_id, message_body(entry)))

    @hookimpl
    def message_store_delete(self, client_id: str, entry_id: int) -> None:
        self._write(DELETE_MESSAGE, (client_id, entry_id))

    # -- plugins' records ---------------------------------------------------------------

    @hookimpl
    async def record_load(self, namespace: str) -> Mapping[str, bytes]:
        def read(db: sqlite3.Connection) -> dict[str, bytes]:
            rows = db.execute("SELECT key, value FROM records WHERE namespace = ? ORDER BY key", (namespace,))
            return {key: bytes(value) for key, value in rows}

        records: dict[str, bytes] = await self._read(read)
        return records

    @hookimpl
    def record_save(self, namespace: str, key: str, value: bytes) -> None:
        # Checked here: a value SQLite cannot bind would fail every later commit.
        if not isinstance(namespace, str) or not isinstance(key, str) or not isinstance(value, bytes | bytearray):
            raise TypeError(f"record_save({namespace!r}, {key!r}, ...): namespace and key are str, value bytes")
        self._write(SAVE_RECORD, (namespace, key, bytes(value)))

    @hookimpl
    def record_delete(self, namespace: str, key: str) -> None:
        self._write(DELETE_RECORD, (namespace, key))
