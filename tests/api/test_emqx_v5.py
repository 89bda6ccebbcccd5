"""EMQX 5's /api/v5 of the api plugin on a real hypercorn port, driven with httpx and
real MQTT clients: clients, subscriptions, topics, retained messages, publish, plugins,
keys and roles, the node's figures; the OpenAPI document and Swagger UI; schemathesis
against that document."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import httpx
import paho.mqtt.client as paho
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from ternmq.kernel import CommandError, ConfigError, NodeInfo, Table, hookimpl
from ternmq.kernel.broker import Broker
from ternmq.kernel.testing import MQTTTestClient, open_broker, registered, serving, test_config

from helpers import StoreThatCannotCommit, connected, eventually, paho_subscriber

V5 = "/api/v5"


def emqx_config(tmp_path: Path, **table: Any) -> Any:
    settings = {"port": 0, "keys_file": str(tmp_path / "keys.json"), "apps_file": str(tmp_path / "apps.json"), **table}
    return test_config(plugins={"retainer": {}, "banned": {"file": str(tmp_path / "banned.json")}, "api": settings})


def base_url(broker: Broker) -> str:
    return f"http://127.0.0.1:{broker.plugins.loaded['api'].plugin.port}"


async def make_key(broker: Broker, name: str, *extra: str) -> tuple[str, str]:
    text = (await broker.service.run_command(["api-key", "create", "--emqx", f"name={name}", *extra])).text
    key, secret = (line.split(": ", 1)[1] for line in text.splitlines())
    return key, secret


@asynccontextmanager
async def emqx_broker(tmp_path: Path, **table: Any) -> AsyncIterator[tuple[Broker, httpx.AsyncClient]]:
    """A broker with the API and an httpx client holding an administrator's key."""
    async with open_broker(emqx_config(tmp_path, **table)) as broker:
        key, secret = await make_key(broker, "ops")
        async with httpx.AsyncClient(base_url=base_url(broker) + V5, auth=(key, secret), timeout=10) as http:
            yield broker, http


def is_rfc3339(text: str) -> bool:
    return datetime.fromisoformat(text).tzinfo is not None


# -- clients --------------------------------------------------------------------------------


async def test_clients_list_in_emqx_shape(tmp_path: Path) -> None:
    async with (
        emqx_broker(tmp_path) as (broker, http),
        connected(broker, "c1", 5, username="alice", keep_alive=30) as _,
        connected(broker, "c2", 4, username="bob") as _,
    ):
        reply = await http.get("/clients")
        assert reply.status_code == 200
        body = reply.json()
        assert body["meta"] == {"page": 1, "limit": 100, "count": 2, "hasnext": False}
        c1 = next(c for c in body["data"] if c["clientid"] == "c1")
        assert (c1["username"], c1["proto_ver"], c1["proto_name"], c1["keepalive"]) == ("alice", 5, "MQTT", 30)
        assert c1["connected"] is True and c1["ip_address"] == "127.0.0.1" and c1["node"] == broker.node_name
        assert is_rfc3339(c1["connected_at"]) and is_rfc3339(c1["created_at"]) and c1["disconnected_at"] is None
        one = await http.get("/clients/c2")
        assert one.json()["clientid"] == "c2" and one.json()["proto_ver"] == 4
        missing = await http.get("/clients/nobody")
        assert missing.status_code == 404
        assert missing.json() == {
            "code": "CLIENTID_NOT_FOUND",
            "message": "no client 'nobody'",
            "reason": "no client 'nobody'",
        }


async def test_clients_filters_fields_and_paging(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http):
        async with connected(broker, "sensor-1", 5, username="u1"), connected(broker, "sensor-2", 5, username="u2"):
            async with connected(broker, "other", 4, username="u1"):

                async def ids(query: str) -> list[str]:
                    reply = await http.get("/clients?" + query)
                    assert reply.status_code == 200, reply.text
                    return sorted(c["clientid"] for c in reply.json()["data"])

                assert await ids("clientid=sensor-1&clientid=other") == ["other", "sensor-1"]
                assert await ids("username=u1") == ["other", "sensor-1"]
                assert await ids("proto_ver=4") == ["other"]
                assert await ids("like_clientid=sensor") == ["sensor-1", "sensor-2"]
                assert await ids("conn_state=disconnected") == []
                assert await ids(
                    f"gte_connected_at={int(time.time()) - 60}&lte_connected_at={int(time.time()) + 5}"
                ) == [
                    "other",
                    "sensor-1",
                    "sensor-2",
                ]
                fuzzy = (await http.get("/clients?like_username=u")).json()
                assert "count" not in fuzzy["meta"]  # EMQX leaves it out where counting is a full scan
                fields = (await http.get("/clients?fields=clientid,username&clientid=other")).json()["data"]
                assert fields == [{"clientid": "other", "username": "u1"}]
                first = (await http.get("/clients?limit=2&page=1")).json()
                second = (await http.get("/clients?limit=2&page=2")).json()
                assert first["meta"]["hasnext"] is True and second["meta"]["hasnext"] is False
                assert len(first["data"]) == 2 and len(second["data"]) == 1
                past = (await http.get("/clients?page=9")).json()
                assert past == {"data": [], "meta": {"page": 9, "limit": 100, "count": 3, "hasnext": False}}
                for bad in ("limit=0", "limit=10001", "page=0", "limit=ten", "proto_ver=6", "fields=colour"):
                    refused = await http.get("/clients?" + bad)
                    assert refused.status_code == 400, bad
                    assert refused.json()["code"] in ("BAD_REQUEST", "INVALID_PARAMETER"), bad
                assert (await http.get("/clients?limit=10000")).status_code == 200


async def test_kick_a_client_and_several(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http):
        async with connected(broker, "k1", 5, clean_start=False) as k1, connected(broker, "k2", 5) as k2:
            kicked = await http.delete("/clients/k1")
            assert kicked.status_code == 204 and kicked.content == b""
            assert (await k1.closed()).reason_code == 0x98
            await eventually(lambda: "k1" not in broker.sessions)  # kicked out: its session ends too
            assert (await http.post("/clients/kickout/bulk", json=["k2", "ghost"])).status_code == 204
            assert (await k2.closed()).reason_code == 0x98
        assert (await http.delete("/clients/k1")).status_code == 404
        assert (await http.post("/clients/kickout/bulk", json="k2")).json()["code"] == "BAD_REQUEST"


# -- subscriptions and topics ------------------------------------------------------------------


async def test_subscribe_and_unsubscribe_a_connected_client(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http), connected(broker, "sub", 5) as client:
        added = await http.post("/clients/sub/subscribe", json={"topic": "t/#", "qos": 1, "nl": 1})
        assert added.json() == {
            "topic": "t/#",
            "qos": 1,
            "nl": 1,
            "rap": 0,
            "rh": 0,
            "clientid": "sub",
            "node": broker.node_name,
        }
        await broker.service.publish("t/1", b"hello", qos=1)
        assert (await client.receive()).payload == b"hello"
        bulk = await http.post("/clients/sub/subscribe/bulk", json=[{"topic": "a"}, {"topic": "$share/g/b", "qos": 2}])
        assert [s["topic"] for s in bulk.json()] == ["a", "$share/g/b"]
        listed = (await http.get("/clients/sub/subscriptions")).json()
        assert sorted(s["topic"] for s in listed) == ["$share/g/b", "a", "t/#"]
        everything = (await http.get("/subscriptions")).json()
        assert everything["meta"]["count"] == 3
        assert [s["topic"] for s in (await http.get("/subscriptions?share_group=g")).json()["data"]] == ["$share/g/b"]
        assert [s["topic"] for s in (await http.get("/subscriptions?match_topic=t/x/y")).json()["data"]] == ["t/#"]
        assert [s["topic"] for s in (await http.get("/subscriptions?qos=2")).json()["data"]] == ["$share/g/b"]
        topics = (await http.get("/topics")).json()
        assert [t["topic"] for t in topics["data"]] == ["a", "b", "t/#"]  # a shared one routes by its filter
        assert (await http.get("/topics/t/%23")).json() == [{"topic": "t/#", "node": broker.node_name}]
        assert (await http.get("/topics/none")).json()["code"] == "TOPIC_NOT_FOUND"
        assert (await http.post("/clients/sub/unsubscribe", json={"topic": "t/#"})).status_code == 204
        assert (await http.post("/clients/sub/unsubscribe/bulk", json=[{"topic": "a"}])).status_code == 204
        await broker.service.publish("t/1", b"gone", qos=1)
        assert await client.nothing_received()
        bad = await http.post("/clients/sub/subscribe", json={"topic": "a/#/b"})
        assert bad.status_code == 400 and bad.json()["code"] == "INVALID_PARAMETER"
        assert (await http.post("/clients/ghost/subscribe", json={"topic": "a"})).status_code == 404
        assert (await http.post("/clients/sub/subscribe", json={"topic": "a", "qos": 3})).status_code == 400


# -- publish and retained messages --------------------------------------------------------------


async def test_publish_reaches_a_paho_v5_subscriber_with_properties(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http):
        async with paho_subscriber(broker.port(), "news", paho.MQTTv5) as received:
            reply = await http.post(
                "/publish",
                json={
                    "topic": "news",
                    "payload": base64.b64encode(b"\x00\x01").decode(),
                    "payload_encoding": "base64",
                    "qos": 1,
                    "properties": {
                        "user_properties": {"who": "api"},
                        "content_type": "bin",
                        "message_expiry_interval": 60,
                    },
                },
            )
            assert reply.status_code == 200 and set(reply.json()) == {"id"}
        [message] = received
        assert message.payload == b"\x00\x01" and message.qos == 1
        assert message.properties.UserProperty == [("who", "api")] and message.properties.ContentType == "bin"


async def test_publish_answers_and_refusals(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http):
        nobody = await http.post("/publish", json={"topic": "empty", "payload": "x"})
        assert nobody.status_code == 202 and nobody.json()["reason_code"] == 16
        assert nobody.json()["message"] == "no_matching_subscribers"
        bad_topic = await http.post("/publish", json={"topic": "a/+", "payload": "x"})
        assert bad_topic.status_code == 400 and bad_topic.json()["code"] == "BAD_TOPIC"
        not_base64 = await http.post("/publish", json={"topic": "a", "payload": "é", "payload_encoding": "base64"})
        assert not_base64.status_code == 400 and "base64" in not_base64.json()["message"]
        for body in ({"payload": "x"}, {"topic": "a", "payload": "x", "qos": 3}, [1], {"topic": "a", "payload": 5}):
            refused = await http.post("/publish", json=body)
            assert refused.status_code == 400 and refused.json()["code"] == "BAD_REQUEST", body
        not_json = await http.post("/publish", content=b"{", headers={"content-type": "application/json"})
        assert not_json.json() == {
            "code": "BAD_REQUEST",
            "message": "the body is not JSON",
            "reason": "the body is not JSON",
        }
        surrogate = await http.post("/publish", content=b'{"topic": "a", "payload": "\\ud800"}')
        assert surrogate.status_code == 400 and "surrogate" in surrogate.json()["message"]
        async with connected(broker, "s", 5) as client:
            await client.subscribe("b", qos=0)
            bulk = await http.post(
                "/publish/bulk", json=[{"topic": "b", "payload": "1"}, {"topic": "b", "payload": "2"}]
            )
            assert bulk.status_code == 200 and len(bulk.json()) == 2
            assert [(await client.receive()).payload for _ in range(2)] == [b"1", b"2"]
            mixed = await http.post(
                "/publish/bulk", json=[{"topic": "b", "payload": "3"}, {"topic": "#", "payload": "4"}]
            )
            assert mixed.status_code == 400 and mixed.json()[1]["code"] == "BAD_TOPIC"


async def test_retained_messages(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http):
        for topic in ("r/1", "r/2", "s/1"):
            assert (
                await http.post("/publish", json={"topic": topic, "payload": topic, "retain": True})
            ).status_code == 202
        listed = (await http.get("/mqtt/retainer/messages")).json()
        assert [m["topic"] for m in listed["data"]] == ["r/1", "r/2", "s/1"] and listed["meta"]["count"] == 3
        assert all(is_rfc3339(m["publish_at"]) and "payload" not in m for m in listed["data"])
        assert [m["topic"] for m in (await http.get("/mqtt/retainer/messages?topic=r/%23")).json()["data"]] == [
            "r/1",
            "r/2",
        ]
        one = (await http.get("/mqtt/retainer/message/r/1")).json()
        assert base64.b64decode(one["payload"]) == b"r/1" and one["qos"] == 0
        assert (await http.delete("/mqtt/retainer/message/r/1")).status_code == 204
        assert (await http.get("/mqtt/retainer/message/r/1")).json()["code"] == "NOT_FOUND"
        assert (await http.delete("/mqtt/retainer/message/r/1")).status_code == 404
        assert (await http.get("/mqtt/retainer/messages?topic=a/%23/b")).status_code == 400
        newline = await http.get("/mqtt/retainer/message/a%0Ab")  # a topic may hold one
        assert (
            newline.status_code == 404
            and newline.json()["message"] == f"no retained message on {'a' + chr(10) + 'b'!r}"
        )
        elsewhere = await http.get("/no/such/path")
        assert elsewhere.status_code == 404 and elsewhere.json()["code"] == "NOT_FOUND"  # EMQX's shape here too
        assert (await http.patch("/clients")).json()["code"] == "METHOD_NOT_ALLOWED"
        assert (await http.delete("/mqtt/retainer/messages")).status_code == 204
        assert await broker.service.retained("#") == ()


# -- keys, roles and users --------------------------------------------------------------------


async def test_roles_and_bad_credentials(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http):
        url = base_url(broker) + V5
        viewer = await make_key(broker, "watcher", "role=viewer")
        publisher = await make_key(broker, "pusher", "role=publisher")
        async with httpx.AsyncClient(base_url=url, auth=viewer) as as_viewer:
            assert (await as_viewer.get("/clients")).status_code == 200
            refused = await as_viewer.post("/publish", json={"topic": "a", "payload": "x"})
            assert refused.status_code == 403 and refused.json()["code"] == "API_KEY_NOT_ALLOW"
        async with httpx.AsyncClient(base_url=url, auth=publisher) as as_publisher:
            assert (await as_publisher.post("/publish", json={"topic": "a", "payload": "x"})).status_code == 202
            assert (await as_publisher.get("/clients")).status_code == 403
        async with httpx.AsyncClient(base_url=url) as anonymous:
            for auth in ((viewer[0], "wrong"), ("nobody", "secret"), None):
                reply = await anonymous.get("/clients", auth=auth) if auth else await anonymous.get("/clients")
                assert reply.status_code == 401 and reply.json()["code"] == "BAD_API_KEY_OR_SECRET", auth
                assert reply.headers["www-authenticate"].startswith("Basic")
            assert (await anonymous.get("/status")).status_code == 200  # no key needed


async def test_keys_are_managed_by_a_logged_in_user(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http):
        url = base_url(broker) + V5
        assert (await http.get("/api_key")).json()["code"] == "API_KEY_NOT_ALLOW"  # a key cannot manage keys
        await broker.service.run_command(["admins", "add", "username=admin", "password=public"])
        async with httpx.AsyncClient(base_url=url, timeout=10) as anonymous:
            wrong = await anonymous.post("/login", json={"username": "admin", "password": "nope"})
            assert wrong.status_code == 401 and wrong.json()["code"] == "BAD_USERNAME_OR_PWD"
            token = (await anonymous.post("/login", json={"username": "admin", "password": "public"})).json()["token"]
        user = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url, headers=user, timeout=10) as admin:
            made = (await admin.post("/api_key", json={"name": "ci", "role": "viewer", "desc": "for CI"})).json()
            assert (made["name"], made["role"], made["enable"], made["expired_at"]) == (
                "ci",
                "viewer",
                True,
                "infinity",
            )
            secret = made["api_secret"]
            assert "api_secret" not in (await admin.get("/api_key/ci")).json()  # shown once
            assert [k["name"] for k in (await admin.get("/api_key")).json()] == ["ops", "ci"]
            duplicate = await admin.post("/api_key", json={"name": "ci"})
            assert duplicate.status_code == 400 and duplicate.json()["code"] == "ALREADY_EXISTS"
            async with httpx.AsyncClient(base_url=url, auth=(made["api_key"], secret)) as ci:
                assert (await ci.get("/nodes")).status_code == 200
                disabled = await admin.put("/api_key/ci", json={"enable": False})
                assert disabled.json()["enable"] is False
                assert (await ci.get("/nodes")).status_code == 401
                await admin.put("/api_key/ci", json={"enable": True, "expired_at": "2001-01-01T00:00:00Z"})
                assert (await ci.get("/nodes")).status_code == 401  # expired
                assert (await admin.put("/api_key/ci", json={"expired_at": "soon"})).status_code == 400
            assert (await admin.delete("/api_key/ci")).status_code == 204
            assert (await admin.get("/api_key/ci")).status_code == 404
        async with httpx.AsyncClient(base_url=url, headers={"authorization": "Bearer forged"}) as forger:
            assert (await forger.get("/nodes")).status_code == 401


async def test_bootstrap_file_keys_and_a_bad_one(tmp_path: Path) -> None:
    bootstrap = tmp_path / "bootstrap.txt"
    bootstrap.write_text("# EMQX's api_key.bootstrap_file\nboot-admin:s3cret\nboot-view:s3cret:viewer\n")
    async with open_broker(emqx_config(tmp_path, bootstrap_file=str(bootstrap))) as broker:
        async with httpx.AsyncClient(base_url=base_url(broker) + V5, auth=("boot-view", "s3cret")) as http:
            assert (await http.get("/nodes")).status_code == 200
            assert (await http.delete("/clients/x")).status_code == 403
    bootstrap.write_text("good:secret\nbad line without a secret\n")
    with pytest.raises(ExceptionGroup) as caught:
        async with open_broker(emqx_config(tmp_path / "other", bootstrap_file=str(bootstrap))):
            pass
    assert caught.group_contains(ConfigError, match=r"bootstrap\.txt, line 2: needs key:secret", depth=2)


def store_config(tmp_path: Path, **table: Any) -> Any:
    """The SQLite store (first: plugins load in configuration order) and the API without
    keys_file or apps_file, in a data directory of the test's own (``tmp_path / "data"``)."""
    store = {"file": str(tmp_path / "t.db")}
    config = test_config(plugins={"sqlite_store": store, "api": {"port": 0, **table}})
    return attrs.evolve(config, broker=attrs.evolve(config.broker, data_dir=str(tmp_path / "data")))


def stored_apps(db: Path) -> dict[str, dict[str, Any]]:
    """The ``api_apps`` records in the store file, read by a connection of our own."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT key, value FROM records WHERE namespace = 'api_apps'")
        return {key: json.loads(value) for key, value in rows}


async def login(url: str, username: str, password: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=10) as anonymous:
        return await anonymous.post("/login", json={"username": username, "password": password})


async def test_keys_and_users_kept_by_the_store_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    bootstrap = tmp_path / "bootstrap.txt"
    bootstrap.write_text("boot-view:s3cret:viewer\n")
    async with open_broker(store_config(tmp_path, bootstrap_file=str(bootstrap))) as broker:
        url = base_url(broker) + V5
        assert set(stored_apps(db)) == {"boot-view"}  # the bootstrap file's key, as a record
        ops = await make_key(broker, "ops")
        assert stored_apps(db)["ops"]["key"] == ops[0]  # durable when the command answers
        assert await broker.service.run_command(["admins", "add", "username=admin", "password=public"])
        token = (await login(url, "admin", "public")).json()["token"]
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"}) as admin:
            made = (await admin.post("/api_key", json={"name": "ci", "role": "viewer"})).json()
            assert stored_apps(db)["ci"]["role"] == "viewer"  # durable when the request answers
            assert (await admin.post("/api_key", json={"name": "gone"})).status_code == 200
            assert (await admin.put("/api_key/ci", json={"desc": "for CI"})).status_code == 200
            assert stored_apps(db)["ci"]["desc"] == "for CI"
            assert (await admin.delete("/api_key/gone")).status_code == 204
        apps = stored_apps(db)
        assert set(apps) == {"boot-view", "ops", "admin", "ci"}
        for secret in (ops[1], made["api_secret"], "public"):  # secrets are kept as hashes only
            assert all(secret not in json.dumps(app) for app in apps.values())
    async with open_broker(store_config(tmp_path, bootstrap_file=str(bootstrap))) as broker:
        url = base_url(broker) + V5
        for auth in (ops, (made["api_key"], made["api_secret"]), ("boot-view", "s3cret")):
            async with httpx.AsyncClient(base_url=url, auth=auth, timeout=10) as http:
                assert (await http.get("/nodes")).status_code == 200, auth
        token = (await login(url, "admin", "public")).json()["token"]
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"}) as admin:
            keys = {k["name"]: k for k in (await admin.get("/api_key")).json()}
            assert set(keys) == {"boot-view", "ops", "ci"} and keys["ci"]["desc"] == "for CI"
    assert os.stat(db).st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "data").rglob("*")] == []


async def test_an_apps_file_is_imported_into_the_store_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ternmq")
    data = tmp_path / "data"
    no_store = test_config(plugins={"api": {"port": 0}})
    async with open_broker(attrs.evolve(no_store, broker=attrs.evolve(no_store.broker, data_dir=str(data)))) as broker:
        ops = await make_key(broker, "ops")  # kept in data/api_apps.json, as before
    assert [app["name"] for app in json.loads((data / "api_apps.json").read_text())] == ["ops"]
    async with open_broker(store_config(tmp_path)) as broker:
        async with httpx.AsyncClient(base_url=base_url(broker) + V5, auth=ops, timeout=10) as http:
            assert (await http.get("/nodes")).status_code == 200
        await make_key(broker, "later")
    assert not (data / "api_apps.json").exists() and (data / "api_apps.json.imported").exists()
    assert "1 API keys and users imported from" in caplog.text
    assert set(stored_apps(tmp_path / "t.db")) == {"ops", "later"}
    with contextlib.closing(sqlite3.connect(tmp_path / "t.db")) as connection, connection:
        connection.execute("INSERT INTO records VALUES ('api_apps', 'broken', ?)", (b'{"name": "broken"}',))
    caplog.clear()
    async with open_broker(store_config(tmp_path)) as broker:  # from the records now
        async with httpx.AsyncClient(base_url=base_url(broker) + V5, auth=ops, timeout=10) as http:
            assert (await http.get("/nodes")).status_code == 200
    assert any(
        "'broken'" in r.getMessage() and "api_apps" in r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR
    )


class AppsStore(StoreThatCannotCommit):
    def names(self) -> set[str]:
        """The names of the EMQX keys and users it holds."""
        return {key for space, key in self.records if space == "api_apps"}


@asynccontextmanager
async def broker_with(store: AppsStore, data: Path) -> AsyncIterator[Broker]:
    """A broker with the API, ``store`` registered before it loads, ``data`` its data directory."""
    config = test_config(plugins={"api": {"port": 0}})
    broker = Broker(attrs.evolve(config, broker=attrs.evolve(config.broker, data_dir=str(data))))
    await broker.plugins.register("store", store)
    async with serving(broker):
        yield broker


NOT_SAVED = "the change is in force, but the store has not saved it yet"


async def test_a_key_change_the_store_fails_to_commit_is_a_503_and_stays_in_force(tmp_path: Path) -> None:
    store = AppsStore()
    async with broker_with(store, tmp_path / "data") as broker:
        run = broker.service.run_command
        with pytest.raises(CommandError, match=NOT_SAVED):  # not "ok"
            await run(["admins", "add", "username=admin", "password=public"])
        with pytest.raises(CommandError, match="'ops' was made .*" + NOT_SAVED):
            await run(["api-key", "create", "--emqx", "name=ops"])
        url = base_url(broker) + V5
        token = (await login(url, "admin", "public")).json()["token"]  # the user is in force
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"}) as admin:
            made = await admin.post("/api_key", json={"name": "ci", "role": "viewer"})
            assert made.status_code == 503 and made.json()["code"] == "SERVICE_UNAVAILABLE", made.text
            assert NOT_SAVED in made.json()["message"] and "'ci' was made" in made.json()["message"]
            assert (await admin.get("/api_key/ci")).json()["role"] == "viewer"  # in force
            changed = await admin.put("/api_key/ci", json={"desc": "for CI"})
            assert changed.status_code == 503 and NOT_SAVED in changed.json()["message"]
            assert (await admin.get("/api_key/ci")).json()["desc"] == "for CI"
            deleted = await admin.delete("/api_key/ops")
            assert deleted.status_code == 503 and NOT_SAVED in deleted.json()["message"]
            assert (await admin.get("/api_key/ops")).status_code == 404
        with pytest.raises(CommandError, match=NOT_SAVED):
            await run(["admins", "passwd", "username=admin", "password=changed"])
        assert (await login(url, "admin", "changed")).status_code == 200
        with pytest.raises(CommandError, match=NOT_SAVED):
            await run(["api-key", "delete", "--emqx", "name=ci"])
        shown = await run(["api-key", "show", "--emqx"])
        assert isinstance(shown, Table) and shown.rows == ()
    assert store.names() == {"admin"}  # every change was handed to the store, which retries


async def test_an_apps_file_that_stays_is_not_imported_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    no_store = test_config(plugins={"api": {"port": 0}})
    async with open_broker(attrs.evolve(no_store, broker=attrs.evolve(no_store.broker, data_dir=str(data)))) as broker:
        old = await make_key(broker, "old")  # kept in data/api_apps.json
    store = AppsStore()
    async with broker_with(store, data) as broker:  # imported; the commit fails: the file stays
        async with httpx.AsyncClient(base_url=base_url(broker) + V5, auth=old, timeout=10) as http:
            assert (await http.get("/nodes")).status_code == 200
        with contextlib.suppress(CommandError):  # (not saved yet: the commit failed)
            await broker.service.run_command(["api-key", "delete", "--emqx", "name=old"])
    assert (data / "api_apps.json").exists() and "the file stays" in caplog.text
    assert store.names() == set()
    store.failing = False  # the store's retry succeeded: no record of api_apps, the file still there
    async with broker_with(store, data) as broker:
        async with httpx.AsyncClient(base_url=base_url(broker) + V5, auth=old, timeout=10) as http:
            assert (await http.get("/nodes")).status_code == 401  # the deleted key stays deleted
        shown = await broker.service.run_command(["api-key", "show", "--emqx"])
        assert isinstance(shown, Table) and shown.rows == ()
    assert store.names() == set()


async def test_a_record_of_badly_typed_fields_is_skipped_and_listings_work(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "t.db"
    async with open_broker(store_config(tmp_path)) as broker:
        ops = await make_key(broker, "ops")
        await broker.service.run_command(["admins", "add", "username=admin", "password=public"])
    secret_hash = "scrypt$" + "ab" * 16 + "$" + "cd" * 32
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        for name, odd in (
            ("yesterday", {"created_at": "yesterday"}),
            ("soon", {"expires_at": "soon"}),
            ("maybe", {"enable": "yes"}),
            ("numbered", {"desc": 7}),
        ):
            entry = {"name": name, "key": name, "secret_hash": secret_hash, **odd}
            connection.execute("INSERT INTO records VALUES ('api_apps', ?, ?)", (name, json.dumps(entry).encode()))
    async with open_broker(store_config(tmp_path)) as broker:
        url = base_url(broker) + V5
        token = (await login(url, "admin", "public")).json()["token"]
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"}) as admin:
            listed = await admin.get("/api_key")
            assert listed.status_code == 200 and [key["name"] for key in listed.json()] == ["ops"], listed.text
        shown = await broker.service.run_command(["api-key", "show", "--emqx"])
        assert isinstance(shown, Table) and [row["name"] for row in shown.rows] == ["ops"]
        async with httpx.AsyncClient(base_url=url, auth=ops, timeout=10) as http:
            assert (await http.get("/nodes")).status_code == 200
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    for name, field in (("yesterday", "created_at"), ("soon", "expires_at"), ("maybe", "enable"), ("numbered", "desc")):
        assert any(f"'{name}'" in m and "api_apps" in m and field in m for m in errors), (name, errors)
    assert secret_hash not in caplog.text


async def test_changing_keys_and_users_with_the_store_unloaded_is_a_clear_error(tmp_path: Path) -> None:
    async with open_broker(store_config(tmp_path)) as broker:
        run = broker.service.run_command
        ops = await make_key(broker, "ops")
        await run(["admins", "add", "username=admin", "password=public"])
        url = base_url(broker) + V5
        token = (await login(url, "admin", "public")).json()["token"]
        await broker.service.unload_plugin("sqlite_store")
        gone = "cannot be saved: no store plugin keeps the records of api_apps now"
        for command in (
            ["admins", "passwd", "username=admin", "password=changed"],
            ["admins", "del", "username=admin"],
            ["api-key", "delete", "--emqx", "name=ops"],
            ["admins", "add", "username=other", "password=pw"],
        ):
            with pytest.raises(CommandError, match=gone):
                await run(command)
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"}) as admin:
            for reply in (
                await admin.post("/api_key", json={"name": "ci"}),
                await admin.put("/api_key/ops", json={"desc": "x"}),
                await admin.delete("/api_key/ops"),
            ):
                assert reply.status_code == 503 and reply.json()["code"] == "SERVICE_UNAVAILABLE", reply.text
                assert gone in reply.json()["message"]
            assert [key["name"] for key in (await admin.get("/api_key")).json()] == ["ops"]  # nothing changed
        async with httpx.AsyncClient(base_url=url, auth=ops, timeout=10) as http:
            assert (await http.get("/nodes")).status_code == 200


# -- the banned list ---------------------------------------------------------------------------


async def test_banned_list_kicks_and_refuses_then_lifts(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http), connected(broker, "troll", 5) as client:
        ban = {"as": "clientid", "who": "troll", "by": "moderator", "reason": "spam", "until": "2999-01-01T00:00:00Z"}
        added = await http.post("/banned", json=ban)
        assert added.status_code == 200
        body = added.json()
        assert (body["as"], body["who"], body["by"], body["reason"]) == ("clientid", "troll", "moderator", "spam")
        assert body["until"].startswith("2999-01-01") and is_rfc3339(body["at"].replace("Z", "+00:00"))
        assert (await client.closed()).reason_code == 0x98  # kicked at once
        async with MQTTTestClient.open(broker.port()) as again:
            assert (await again.connect("troll")).reason_code == 0x8A
        await http.post("/banned", json={"as": "peerhost_net", "who": "10.0.0.0/8"})
        listed = (await http.get("/banned")).json()
        assert [b["who"] for b in listed["data"]] == ["troll", "10.0.0.0/8"] and listed["meta"]["count"] == 2
        assert [b["who"] for b in (await http.get("/banned?like_clientid=rol")).json()["data"]] == ["troll"]
        duplicate = await http.post("/banned", json=ban)
        assert duplicate.status_code == 400 and duplicate.json()["code"] == "ALREADY_EXISTS"
        bad = await http.post("/banned", json={"as": "peerhost", "who": "not-an-ip"})
        assert bad.status_code == 400 and bad.json()["code"] == "BAD_REQUEST"
        assert (await http.post("/banned", json={"as": "face", "who": "x"})).status_code == 400
        assert (await http.delete("/banned/clientid/troll")).status_code == 204
        assert (await http.delete("/banned/clientid/troll")).json()["code"] == "NOT_FOUND"
        async with MQTTTestClient.open(broker.port()) as welcome:
            assert (await welcome.connect("troll")).reason_code == 0
        assert (await http.delete("/banned")).status_code == 204
        assert (await http.get("/banned")).json()["data"] == []


async def test_banned_without_its_plugin_is_a_clear_503(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http):
        await broker.service.unload_plugin("banned")
        reply = await http.get("/banned")
        assert reply.status_code == 503 and reply.json()["message"] == "the banned plugin is not loaded"


# -- plugins and the node ---------------------------------------------------------------------


async def test_stop_and_start_a_plugin_while_a_client_keeps_receiving(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http), connected(broker, "stays", 5) as client:
        await client.subscribe("live", qos=1)
        listed = {p["name"]: p for p in (await http.get("/plugins")).json()}
        assert listed["retainer"]["running_status"] == [{"node": broker.node_name, "status": "running"}]
        assert (await http.put("/plugins/retainer/stop")).status_code == 204
        assert "retainer" not in broker.plugins.loaded
        stopped = {p["name"]: p for p in (await http.get("/plugins")).json()}["retainer"]
        assert stopped["running_status"][0]["status"] == "stopped"
        await broker.service.publish("live", b"still", qos=1)
        assert (await client.receive()).payload == b"still"
        assert (await http.put("/plugins/retainer/config", json={"max_messages": 7})).status_code == 204
        assert (await http.put("/plugins/retainer/start")).status_code == 204
        assert broker.plugins.loaded["retainer"].plugin.config.max_messages == 7
        assert (await http.get("/plugins/retainer/config")).json() == {"max_messages": 7}
        bad = await http.put("/plugins/retainer/config", json={"max_messages": -1})
        assert bad.status_code == 400 and bad.json()["code"] == "BAD_CONFIG"
        assert broker.plugins.loaded["retainer"].plugin.config.max_messages == 7  # the old table stays
        assert (await http.put("/plugins/retainer-0.1.0/stop")).status_code == 204  # EMQX's name-version
        assert (await http.put("/plugins/nothing/start")).json()["code"] == "NOT_FOUND"
        assert (await http.put("/plugins/retainer/pause")).status_code == 400
        await broker.service.publish("live", b"after", qos=1)
        assert (await client.receive()).payload == b"after"


async def test_stopping_the_api_itself_answers_first(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http):
        reply = await http.put("/plugins/api/stop")
        assert reply.status_code == 204
        await eventually(lambda: "api" not in broker.plugins.loaded)


async def test_stats_metrics_nodes_listeners_prometheus_status(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http), connected(broker, "m", 5) as client:
        await client.subscribe("x", qos=0)
        stats = (await http.get("/stats")).json()
        assert (stats["connections.count"], stats["live_connections.count"], stats["subscriptions.count"]) == (1, 1, 1)
        per_node = (await http.get("/stats?aggregate=false")).json()
        assert per_node[0]["node"] == broker.node_name
        metrics = (await http.get("/metrics")).json()
        assert metrics["client.connected"] == 1 and metrics["packets.received"] >= 2
        [node] = (await http.get("/nodes")).json()
        assert (node["node"], node["node_status"]) == (broker.node_name, "running")
        assert (await http.get(f"/nodes/{broker.node_name}")).json()["node"] == broker.node_name
        assert (await http.get("/nodes/other@host")).status_code == 404
        [listener] = (await http.get("/listeners")).json()
        assert listener["id"] == "tcp:test" and listener["running"] and listener["current_connections"] == 1
        text = (await http.get("/prometheus/stats")).text
        assert "ternmq_clients_online" in {f.name for f in text_string_to_metric_families(text)}
        async with httpx.AsyncClient(base_url=base_url(broker) + V5) as anonymous:
            status = await anonymous.get("/status")
            assert status.text == f"Node {broker.node_name} is started\nternmq is running"
            assert (await anonymous.get("/status?format=json")).json()["app_status"] == "running"


# -- the OpenAPI document, Swagger UI, schemathesis ------------------------------------------------


async def test_openapi_document_and_swagger_ui_served_without_a_cdn(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http), httpx.AsyncClient(base_url=base_url(broker)) as site:
        document = (await site.get("/api-docs/swagger.json")).json()
        assert document["openapi"].startswith("3.0") and document["servers"] == [{"url": "/api/v5"}]
        clients = document["paths"]["/clients"]["get"]
        assert {p["name"] for p in clients["parameters"]} >= {"page", "limit", "clientid", "like_clientid", "fields"}
        limit = next(p for p in clients["parameters"] if p["name"] == "limit")
        assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 10000)  # the schema that checks requests
        assert set(document["paths"]["/clients/{clientid}"]) == {"get", "delete"}
        assert "404" in document["paths"]["/clients/{clientid}"]["get"]["responses"]
        page = await site.get("/api-docs/index.html")
        assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text and "https://" not in page.text
        script = (await site.get("/api-docs/swagger-initializer.js")).text
        assert "/api-docs/swagger.json" in script and "petstore" not in script
        bundle = await site.get("/api-docs/swagger-ui-bundle.js")
        assert bundle.status_code == 200 and len(bundle.content) > 100_000
        assert (
            (await site.get("/api-docs", follow_redirects=False)).headers["location"].endswith("/api-docs/index.html")
        )


async def test_schemathesis_finds_no_server_error_and_no_answer_off_its_schema(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http):
        key, secret = await make_key(broker, "fuzzer")
        async with connected(broker, "present", 5) as client:
            await client.subscribe("t/#", qos=1)
            await http.post("/publish", json={"topic": "t/r", "payload": "x", "retain": True})
            result = await trio.run_process(
                [
                    sys.executable,  # the tests' own interpreter: its schemathesis (a test dependency)
                    "-m",
                    "schemathesis.cli",
                    "run",
                    base_url(broker) + "/api-docs/swagger.json",
                    "--auth",
                    f"{key}:{secret}",
                    "--checks",
                    "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
                    "--max-examples",
                    "15",
                    "--workers",
                    "1",
                    "--phases",
                    "examples,coverage,fuzzing",
                    # Starting and stopping plugins (the API itself among them) has its own
                    # tests; fuzzing it would unload the API under the run.
                    "--exclude-path-regex",
                    "^/plugins/",
                    "--seed",
                    "1",
                    # A topic in the path: most generated strings are not URL-safe as one.
                    "--suppress-health-check",
                    "filter_too_much",
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=tmp_path,
            )
    assert result.returncode == 0, result.stdout.decode()[-4000:]


# -- refusals a review asked for ---------------------------------------------------------------


@attrs.frozen
class TagConfig:
    tag: str = "first"


class Tagged:
    """A plugin loaded by path (``test_emqx_v5:Tagged``), not by a name."""

    Config = TagConfig

    def __init__(self, config: TagConfig) -> None:
        self.config = config

    @hookimpl
    def on_register(self, client: Any) -> None:
        pass


async def test_reconfiguring_a_plugin_loaded_by_path_keeps_it(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http):
        await broker.service.load_plugin("tagged", {"tag": "first"}, path="test_emqx_v5:Tagged")
        assert (await http.put("/plugins/tagged/config", json={"tag": "second"})).status_code == 204
        assert broker.plugins.loaded["tagged"].plugin.config.tag == "second"
        refused = await http.put("/plugins/tagged/config", json={"colour": "red"})
        assert refused.status_code == 400 and refused.json()["code"] == "BAD_CONFIG"
        assert broker.plugins.loaded["tagged"].plugin.config.tag == "second"  # the running one stays
        assert (await http.put("/plugins/tagged/stop")).status_code == 204
        assert (await http.put("/plugins/tagged/start")).status_code == 204  # from its path, as it was
        assert broker.plugins.loaded["tagged"].plugin.config.tag == "second"


async def test_values_an_mqtt_packet_cannot_carry_are_refused(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http), connected(broker, "s", 5) as client:
        await client.subscribe("f", qos=2)
        for body in (
            {"topic": "f", "payload": "x", "qos": 1.0},  # a float is no QoS for an encoder
            {"topic": "f", "payload": "x", "properties": {"content_type": "c" * 65536}},
            {"topic": "f", "payload": "x", "properties": {"user_properties": {"k": "a\x00b"}}},
            {"topic": "f", "payload": "x", "properties": {"response_topic": "a/#"}},
        ):
            refused = await http.post("/publish", json=body)
            assert refused.status_code == 400, body
        subscribe = await http.post("/clients/s/subscribe", json={"topic": "g", "qos": 1.0})
        assert subscribe.status_code == 400 and broker.service.subscriptions("s")[0].topic_filter == "f"
        assert (await http.get("/clients?page=" + "9" * 5000)).status_code == 400
        nested = await http.post("/publish", content=b"[" * 100_000 + b"]" * 100_000)
        assert nested.status_code == 400 and nested.json()["code"] == "BAD_REQUEST"
        await broker.service.publish("f", b"still", qos=2)
        assert (await client.receive()).payload == b"still"  # routing unharmed


async def test_tokens_end_with_the_password_and_secrets_stay_with_administrators(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http):
        url = base_url(broker) + V5
        run = broker.service.run_command
        await run(["admins", "add", "username=admin", "password=public"])
        async with httpx.AsyncClient(base_url=url) as anonymous:

            async def login(password: str) -> dict[str, str]:
                reply = await anonymous.post("/login", json={"username": "admin", "password": password})
                return {"authorization": f"Bearer {reply.json()['token']}"}

            token = await login("public")
            assert (await anonymous.get("/api_key", headers=token)).status_code == 200
            await run(["admins", "passwd", "username=admin", "password=changed"])
            assert (await anonymous.get("/api_key", headers=token)).status_code == 401
            token = await login("changed")
            await run(["admins", "del", "username=admin"])
            await run(["admins", "add", "username=admin", "password=changed"])
            assert (await anonymous.get("/api_key", headers=token)).status_code == 401  # not the same user
            far = await anonymous.post(
                "/api_key",
                headers=await login("changed"),
                json={"name": "far", "expired_at": "9999-12-31T23:59:59-14:00"},
            )
            assert far.status_code == 400
        with pytest.raises(CommandError, match="cannot be empty"):
            await run(["admins", "add", "username=blank", "password="])
        viewer = await make_key(broker, "look", "role=viewer")
        async with httpx.AsyncClient(base_url=url, auth=viewer) as as_viewer:
            assert (await as_viewer.get("/plugins/api/config")).status_code == 403  # tables hold passwords
        document = (await http.get(base_url(broker) + "/api-docs/swagger.json")).json()
        assert document["paths"]["/api_key"]["get"]["security"] == [{"bearerAuth": []}]


class TwoOtherNodes:
    @hookimpl
    def cluster_nodes(self) -> list[NodeInfo]:
        return [NodeInfo("b@x", True), NodeInfo("c@x", False)]


async def test_nodes_lists_every_node_of_the_cluster(tmp_path: Path) -> None:
    async with emqx_broker(tmp_path) as (broker, http), registered(broker, TwoOtherNodes()):
        listed = (await http.get("/nodes")).json()
        assert [(n["node"], n["node_status"]) for n in listed] == [
            (broker.node_name, "running"),
            ("b@x", "running"),
            ("c@x", "stopped"),
        ]
        assert listed[0]["version"]  # this node in full, the others as the cluster knows them
        assert (await http.get("/nodes/c@x")).json() == {"node": "c@x", "node_status": "stopped"}
        assert (await http.get("/nodes/d@x")).status_code == 404
