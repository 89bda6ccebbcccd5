"""The sqlite_store plugin end to end: a real broker on 127.0.0.1:0, real clients, a real
SQLite file under tmp_path, brokers stopped and started again on the same file, and the
file read back with the sqlite3 module (what a later start, or an operator, finds)."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import pytest
import trio

from ternmq.kernel import ConfigError
from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Connack, Puback, Pubcomp, Publish, Pubrec, Pubrel
from ternmq.kernel.testing import MQTTTestClient, open_broker, test_config
from ternmq.kernel.values.config import Config

from helpers import LEVELS, eventually, wait_offline

KEPT = {"session_expiry_interval": 300}
NO_ERROR_BUT_NO_MATCH = 0x10


def store_config(tmp_path: Path, **table: Any) -> Config:
    return test_config(plugins={"sqlite_store": {"file": str(tmp_path / "t.db"), **table}, "retainer": {}})


def query(file: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` read with a connection of its own (not the broker's)."""
    with closing(sqlite3.connect(file)) as db:
        return db.execute(sql, params).fetchall()


def message_rows(file: Path, client_id: str) -> list[tuple[str, int | None, str | None, bytes | None]]:
    """(state, packet id, topic, payload) of the client's message rows, in entry order."""
    rows = []
    for (body,) in query(file, "SELECT body FROM messages WHERE client_id = ? ORDER BY entry_id", client_id):
        data = json.loads(body)
        message = data["message"]
        rows.append(
            (
                data["state"],
                data["packet_id"],
                message["topic"] if message else None,
                base64.b64decode(message["payload"]) if message else None,
            )
        )
    return rows


def session_ids(file: Path) -> list[str]:
    return [client_id for (client_id,) in query(file, "SELECT client_id FROM sessions ORDER BY client_id")]


def kept_properties(level: int) -> dict[str, Any]:
    return KEPT if level == 5 else {}


async def come_back(client: MQTTTestClient, client_id: str) -> Connack:
    """Connect to a persistent session that must still be there."""
    connack = await client.connect(client_id, clean_start=False, properties=kept_properties(client.protocol_level))
    assert (connack.reason_code, connack.session_present) == (0, True), connack
    return connack


async def left_subscribed(broker: Broker, client_id: str, topic_filter: str, level: int = 5, qos: int = 2) -> None:
    """A persistent session subscribed to ``topic_filter``, its client gone (so stored)."""
    async with MQTTTestClient.open(broker.port(), level) as client:
        connack = await client.connect(client_id, clean_start=False, properties=kept_properties(level))
        assert connack.reason_code == 0
        await client.subscribe(topic_filter, qos=qos)
        await client.disconnect()
    await wait_offline(broker, client_id, session_kept=True)


@asynccontextmanager
async def publisher(broker: Broker, client_id: str = "pub") -> AsyncIterator[MQTTTestClient]:
    async with MQTTTestClient.open(broker.port()) as client:
        assert (await client.connect(client_id)).reason_code == 0
        yield client


async def start_fails(config: Config) -> pytest.ExceptionInfo[ExceptionGroup[Any]]:
    with pytest.raises(ExceptionGroup) as caught:
        async with open_broker(config):
            pass
    return caught


def metric(broker: Broker, name: str) -> float:
    return float(broker.service.metrics()[name])


# -- messages across restarts -------------------------------------------------------------------


@pytest.mark.usefixtures("no_tracebacks")
@pytest.mark.parametrize("level", LEVELS)
async def test_messages_queued_for_an_offline_session_come_after_a_restart_in_order_once(
    tmp_path: Path, level: int
) -> None:
    config = store_config(tmp_path)
    sent = [(f"q/{i}", f"message {i}".encode(), 1 + i % 2) for i in range(10)]  # QoS 1 and 2, alternating
    async with open_broker(config) as broker:
        await left_subscribed(broker, "reader", "q/#", level)
        async with publisher(broker) as pub:
            for topic, payload, qos in sent:
                answer = await pub.publish(topic, payload, qos=qos)
                assert answer.reason_code == 0, answer  # a subscriber: it is queued
    async with open_broker(config) as broker, MQTTTestClient.open(broker.port(), level) as reader:
        await come_back(reader, "reader")  # no SUBSCRIBE: the subscription came back too
        received = [await reader.receive() for _ in sent]
        assert [(p.topic, p.payload, p.qos, p.dup) for p in received] == [(*m, False) for m in sent]
        assert len({p.packet_id for p in received}) == len(sent)
        assert await reader.nothing_received(0.3)
        await broker.service.publish("q/after", b"new", qos=1)
        assert (await reader.receive()).payload == b"new"
        await reader.disconnect()
    async with open_broker(config) as broker, MQTTTestClient.open(broker.port(), level) as reader:
        await come_back(reader, "reader")
        assert await reader.nothing_received(0.3)  # every one was acknowledged: none again
    assert message_rows(tmp_path / "t.db", "reader") == []


@pytest.mark.usefixtures("no_tracebacks")
async def test_messages_in_flight_come_back_under_their_packet_ids_and_a_released_one_as_pubrel(
    tmp_path: Path,
) -> None:
    config = store_config(tmp_path)
    async with open_broker(config) as broker:
        async with MQTTTestClient.open(broker.port(), auto_ack=False) as reader:
            await reader.connect("reader", clean_start=False, properties=KEPT)
            await reader.subscribe("f/#", qos=2)
            await broker.service.publish("f/1", b"qos 1, no PUBACK", qos=1)
            await broker.service.publish("f/2", b"qos 2, no PUBREC", qos=2)
            await broker.service.publish("f/3", b"qos 2, no PUBCOMP", qos=2)
            first, second, third = [await reader.expect(Publish) for _ in range(3)]
            assert [p.payload for p in (first, second, third)] == [
                b"qos 1, no PUBACK",
                b"qos 2, no PUBREC",
                b"qos 2, no PUBCOMP",
            ]
            await reader.send(Pubrec(third.packet_id))
            assert (await reader.expect(Pubrel)).packet_id == third.packet_id
            await eventually(
                lambda: (
                    [r[0] for r in message_rows(tmp_path / "t.db", "reader")] == ["inflight", "inflight", "released"]
                )
            )
        # The broker stops with the client still connected: nothing more was said.
    ids = (first.packet_id, second.packet_id, third.packet_id)
    async with open_broker(config) as broker:
        async with MQTTTestClient.open(broker.port(), auto_ack=False) as reader:
            await come_back(reader, "reader")
            again = [await reader.next_packet() for _ in range(3)]
            assert [type(p) for p in again] == [Publish, Publish, Pubrel]
            assert [(p.payload, p.qos, p.dup, p.packet_id) for p in again[:2]] == [
                (b"qos 1, no PUBACK", 1, True, ids[0]),
                (b"qos 2, no PUBREC", 2, True, ids[1]),
            ]
            assert again[2].packet_id == ids[2]
            assert await reader.nothing_received(0.3)
            await reader.send(Puback(ids[0]))
            await reader.send(Pubrec(ids[1]))
            assert (await reader.expect(Pubrel)).packet_id == ids[1]
            await reader.send(Pubcomp(ids[1]))
            await reader.send(Pubcomp(ids[2]))
            await reader.disconnect()
        await wait_offline(broker, "reader", session_kept=True)
    assert message_rows(tmp_path / "t.db", "reader") == []
    async with open_broker(config) as broker, MQTTTestClient.open(broker.port(), auto_ack=False) as reader:
        await come_back(reader, "reader")
        assert await reader.nothing_received(0.3)


@pytest.mark.usefixtures("no_tracebacks")
async def test_a_qos2_publish_awaiting_its_pubrel_is_known_after_a_restart_and_not_routed_twice(
    tmp_path: Path,
) -> None:
    config = store_config(tmp_path)
    async with open_broker(config) as broker:
        await left_subscribed(broker, "reader", "x/#")
        async with MQTTTestClient.open(broker.port()) as sender:
            await sender.connect("sender", clean_start=False, properties=KEPT)
            await sender.subscribe("unrelated", qos=1)  # a stored session from here on
            await sender.send(Publish("x/1", b"exactly once", 2, False, False, 41, {}))
            pubrec = await sender.expect(Pubrec)
            assert (pubrec.packet_id, pubrec.reason_code) == (41, 0)
            assert ("received", 41, None, None) in message_rows(tmp_path / "t.db", "sender")
            # The broker stops before the PUBREL.
    async with open_broker(config) as broker:
        async with MQTTTestClient.open(broker.port()) as sender:
            await come_back(sender, "sender")
            await sender.send(Publish("x/1", b"exactly once", 2, False, True, 41, {}))  # DUP
            pubrec = await sender.expect(Pubrec)
            assert (pubrec.packet_id, pubrec.reason_code) == (41, 0)
            await sender.send(Pubrel(41))
            pubcomp = await sender.expect(Pubcomp)
            assert (pubcomp.packet_id, pubcomp.reason_code) == (41, 0)
            await eventually(lambda: message_rows(tmp_path / "t.db", "sender") == [])
        async with MQTTTestClient.open(broker.port()) as reader:
            await come_back(reader, "reader")
            got = await reader.receive()
            assert (got.topic, got.payload, got.qos) == ("x/1", b"exactly once", 2)
            assert await reader.nothing_received(0.3)  # once


# -- sessions ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_tracebacks")
async def test_session_expiry_counts_the_time_the_broker_was_down(tmp_path: Path) -> None:
    config = store_config(tmp_path)
    file = tmp_path / "t.db"
    async with open_broker(config) as broker:
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("brief", clean_start=False, properties={"session_expiry_interval": 3})
            await client.subscribe("b/#", qos=1)
            before = time.time()
            await client.disconnect()
        await wait_offline(broker, "brief", session_kept=True)
        after = time.time()
        await broker.service.publish("b/1", b"queued", qos=1)
    [(body,)] = query(file, "SELECT body FROM sessions WHERE client_id = 'brief'")
    assert before <= json.loads(body)["disconnected_at"] <= after
    await trio.sleep(max(0.0, before + 1.5 - time.time()))  # down for half of the 3 s
    async with open_broker(config) as broker:
        assert "brief" in broker.sessions  # not expired yet: 3 s after the disconnect
        assert message_rows(file, "brief") == [("queued", None, "b/1", b"queued")]
        await eventually(lambda: "brief" not in broker.sessions, timeout=4)
        # 3 s after the disconnect, not 3 s after this start (4.5 s or more after it).
        assert time.time() - before < 4.0
        await eventually(lambda: "brief" not in session_ids(file) and message_rows(file, "brief") == [])
        async with MQTTTestClient.open(broker.port()) as client:
            connack = await client.connect("brief", clean_start=False, properties=KEPT)
            assert connack.session_present is False


@pytest.mark.usefixtures("no_tracebacks")
async def test_a_clean_start_deletes_the_session_and_its_messages_and_only_those(tmp_path: Path) -> None:
    config = store_config(tmp_path)
    file = tmp_path / "t.db"
    async with open_broker(config) as broker:
        await left_subscribed(broker, "cleaned", "c/#")
        await left_subscribed(broker, "bystander", "c/#")
        await broker.service.publish("c/1", b"never read", qos=1)
    assert session_ids(file) == ["bystander", "cleaned"]
    assert message_rows(file, "cleaned") == [("queued", None, "c/1", b"never read")]
    async with open_broker(config) as broker:
        async with MQTTTestClient.open(broker.port()) as client:
            connack = await client.connect("cleaned", clean_start=True)
            assert connack.session_present is False
            await client.disconnect()
        await eventually(lambda: session_ids(file) == ["bystander"])
        assert message_rows(file, "cleaned") == []
        assert message_rows(file, "bystander") == [("queued", None, "c/1", b"never read")]
    assert session_ids(file) == ["bystander"] and message_rows(file, "cleaned") == []


# -- the file ------------------------------------------------------------------------------------


def make_db(file: Path, script: str) -> bytes:
    with closing(sqlite3.connect(file)) as db:
        db.executescript(script)
    return file.read_bytes()


CURRENT_SCHEMA = """
CREATE TABLE sessions (client_id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE messages (client_id TEXT, entry_id INTEGER, body TEXT, PRIMARY KEY (client_id, entry_id));
"""
REFUSED_FILES = [
    pytest.param(
        CURRENT_SCHEMA + "CREATE TABLE records (namespace, key, value); PRAGMA user_version = 2;",
        r"written by a newer ternmq \(store schema 2",
        id="newer",
    ),
    pytest.param(
        "CREATE TABLE notes (t TEXT); INSERT INTO notes VALUES ('mine');",
        r"not a ternmq store \(tables notes, no schema version\)",
        id="foreign",
    ),
    pytest.param(CURRENT_SCHEMA + "PRAGMA user_version = 1;", r"damaged: table records missing", id="damaged"),
    pytest.param(None, r"not a ternmq store, or damaged", id="garbage"),
]


@pytest.mark.usefixtures("no_tracebacks")
@pytest.mark.parametrize(("script", "message"), REFUSED_FILES)
async def test_a_file_it_cannot_use_stops_the_start_naming_it_and_is_left_as_it_was(
    tmp_path: Path, script: str | None, message: str
) -> None:
    file = tmp_path / "t.db"
    if script is None:
        file.write_bytes(b"this is not an SQLite file, and it is mine\n" * 200)
        content = file.read_bytes()
    else:
        content = make_db(file, script)
    caught = await start_fails(store_config(tmp_path))
    assert caught.group_contains(
        ConfigError, match=rf"\[plugins\.sqlite_store\].*{re.escape(str(file))}: {message}", depth=2
    ), caught.value
    assert file.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["t.db"]


@pytest.mark.usefixtures("no_tracebacks")
async def test_a_new_file_is_owner_only_and_versioned(tmp_path: Path) -> None:
    file = tmp_path / "sub" / "t.db"
    config = test_config(plugins={"sqlite_store": {"file": str(file)}})
    async with open_broker(config):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        wal = file.with_name("t.db-wal")
        assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
    assert query(file, "PRAGMA user_version") == [(1,)]
    assert query(file, "PRAGMA journal_mode") == [("wal",)]
    async with open_broker(config):  # and it opens again
        pass


@pytest.mark.usefixtures("no_tracebacks")
async def test_a_bad_synchronous_value_names_the_key(tmp_path: Path) -> None:
    caught = await start_fails(store_config(tmp_path, synchronous="off"))
    assert caught.group_contains(ConfigError, match=r"\[plugins\.sqlite_store\] synchronous", depth=2), caught.value
    assert not (tmp_path / "t.db").exists()


# -- writing: group commit, and acknowledged means written ------------------------------------


@pytest.mark.usefixtures("no_tracebacks")
async def test_concurrent_publishes_share_commits_and_every_row_is_written(tmp_path: Path) -> None:
    file = tmp_path / "t.db"
    publishers, each = 4, 25
    async with open_broker(store_config(tmp_path)) as broker:
        await left_subscribed(broker, "reader", "g/#", qos=1)
        writes, commits = metric(broker, "counter.store_writes"), metric(broker, "counter.store_commits")

        async def burst(number: int) -> None:
            async with publisher(broker, f"pub{number}") as pub:
                for i in range(each):
                    await pub.send(Publish(f"g/{number}", f"{number}:{i}".encode(), 1, False, False, i + 1, {}))
                acks = [await pub.expect(Puback) for _ in range(each)]
                assert sorted(a.packet_id for a in acks) == list(range(1, each + 1))
                assert {a.reason_code for a in acks} == {0}

        async with trio.open_nursery() as nursery:
            for number in range(publishers):
                nursery.start_soon(burst, number)
        written = metric(broker, "counter.store_writes") - writes
        committed = metric(broker, "counter.store_commits") - commits
        assert written >= publishers * each
        assert 0 < committed < written, (committed, written)
        await eventually(lambda: metric(broker, "gauge.store_pending") == 0)
        assert metric(broker, "counter.store_failures") == 0
        rows = message_rows(file, "reader")
        assert {state for state, *_ in rows} == {"queued"}
        assert sorted(payload or b"" for *_, payload in rows) == sorted(
            f"{n}:{i}".encode() for n in range(publishers) for i in range(each)
        )
        for n in range(publishers):  # each publisher's messages in the order it sent them
            assert [p for _, _, topic, p in rows if topic == f"g/{n}"] == [f"{n}:{i}".encode() for i in range(each)]


@pytest.mark.usefixtures("no_tracebacks")
async def test_a_puback_or_pubrec_comes_once_the_message_is_in_the_file(tmp_path: Path) -> None:
    file = tmp_path / "t.db"
    async with open_broker(store_config(tmp_path)) as broker:
        await left_subscribed(broker, "reader", "w/#")
        async with publisher(broker) as pub:
            await pub.send(Publish("w/1", b"one", 1, False, False, 1, {}))
            assert (await pub.expect(Puback)).reason_code == 0
            assert message_rows(file, "reader") == [("queued", None, "w/1", b"one")]  # no wait in between
            await pub.send(Publish("w/2", b"two", 2, False, False, 2, {}))
            assert (await pub.expect(Pubrec)).reason_code == 0
            assert message_rows(file, "reader")[1:] == [("queued", None, "w/2", b"two")]
            await pub.send(Pubrel(2))
            await pub.expect(Pubcomp)
            # A retained one nobody subscribes to: its record is written before the PUBACK.
            await pub.send(Publish("kept/1", b"retained", 1, True, False, 3, {}))
            assert (await pub.expect(Puback)).reason_code == NO_ERROR_BUT_NO_MATCH
            [(value,)] = query(file, "SELECT value FROM records WHERE namespace = 'retainer' AND key = 'kept/1'")
            assert base64.b64decode(json.loads(value)["payload"]) == b"retained"


# -- rows that do not read -----------------------------------------------------------------------

BAD_BODIES = [
    pytest.param("{not json", "{not json", id="not-json"),
    pytest.param(
        "[]",
        '{"state": "queued", "qos": 1, "retain": false, "sub_ids": [], "packet_id": null, "message": []}',
        id="json-not-an-object",
    ),
    pytest.param("[" * 100_000, "[" * 100_000, id="too-deep"),
]


@pytest.mark.parametrize(("session_body", "message_body"), BAD_BODIES)
async def test_a_row_that_does_not_read_is_logged_skipped_and_left_in_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, session_body: str, message_body: str
) -> None:
    config = store_config(tmp_path)
    file = tmp_path / "t.db"
    async with open_broker(config) as broker:
        await left_subscribed(broker, "reader", "r/#")
        await left_subscribed(broker, "broken", "r/#")
        await broker.service.publish("r/1", b"first", qos=1)
        await broker.service.publish("r/2", b"second", qos=1)
    [(bad_entry,), _] = query(file, "SELECT entry_id FROM messages WHERE client_id = 'reader' ORDER BY entry_id")
    with closing(sqlite3.connect(file)) as db, db:
        db.execute(
            "UPDATE messages SET body = ? WHERE client_id = 'reader' AND entry_id = ?", (message_body, bad_entry)
        )
        db.execute("UPDATE sessions SET body = ? WHERE client_id = 'broken'", (session_body,))
    caplog.clear()
    caplog.set_level(logging.INFO, logger="ternmq")
    async with open_broker(config) as broker:
        assert "broken" not in broker.sessions and "reader" in broker.sessions
        errors = [r for r in caplog.records if r.name.startswith("ternmq") and r.levelno >= logging.ERROR]
        assert not [r for r in errors if r.exc_info], "a traceback instead of a skipped row"
        text = "\n".join(r.getMessage() for r in errors)
        assert f"message {bad_entry} of session 'reader' does not read" in text
        assert "session 'broken' does not read" in text
        async with MQTTTestClient.open(broker.port()) as reader:
            await come_back(reader, "reader")
            assert (await reader.receive()).payload == b"second"
            assert await reader.nothing_received(0.3)
    assert query(file, "SELECT body FROM sessions WHERE client_id = 'broken'") == [(session_body,)]
    assert query(file, "SELECT body FROM messages WHERE entry_id = ?", bad_entry) == [(message_body,)]
