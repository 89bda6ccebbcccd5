"""EMQ 2's /api/v2 on a real hypercorn port, driven with httpx as its documentation
shows (a dashboard user's Basic auth, the ``code``/``result`` envelope, ``curr_page``
and ``page_size``), against a broker with real MQTT clients."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from ternmq.kernel import CommandError, Text
from ternmq.kernel.broker import Broker
from ternmq.kernel.testing import MQTTTestClient, open_broker, serving, test_config

from helpers import PERSISTENT, StoreThatCannotCommit, connected, eventually, wait_offline

API = "api"
SEED_CLIENT_FIELDS = {
    "client_id",
    "username",
    "ipaddress",
    "port",
    "clean_sess",
    "proto_ver",
    "keepalive",
    "connected_at",
}
TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def base_url(broker: Broker) -> str:
    return f"http://127.0.0.1:{broker.plugins.loaded[API].plugin.port}"


@asynccontextmanager
async def v2_broker(tmp_path: Path) -> AsyncIterator[tuple[Broker, httpx.AsyncClient]]:
    """A broker with the API, the user admin:public, and an HTTP client logged in as it."""
    table = {"port": 0, "keys_file": str(tmp_path / "api_keys.json"), "apps_file": str(tmp_path / "apps.json")}
    async with open_broker(test_config(plugins={"retainer": {}, API: table})) as broker:
        await broker.service.run_command(["admins", "add", "username=admin", "password=public"])
        async with httpx.AsyncClient(
            base_url=base_url(broker) + "/api/v2", auth=("admin", "public"), timeout=10
        ) as http:
            yield broker, http


def ok(reply: httpx.Response) -> Any:
    """The ``result`` of a successful answer."""
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json", reply.text
    body = reply.json()
    assert body["code"] == 0 and set(body) == {"code", "result"}, body
    return body["result"]


def code(reply: httpx.Response) -> int:
    """The code of an error answer (HTTP 200 with a message, as EMQ 2)."""
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"code", "message"} and body["message"], body
    return int(body["code"])


# -- nodes and monitoring -----------------------------------------------------------------------


async def test_management_and_monitoring_nodes_as_the_seed_shows(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http), connected(broker, "c1", 4):
        node = broker.node_name
        [listed] = ok(await http.get("/management/nodes"))
        assert set(listed) == {"name", "version", "sysdescr", "uptime", "datetime", "otp_release", "node_status"}
        assert listed["name"] == node and listed["node_status"] == "Running" and TIME.fullmatch(listed["datetime"])
        assert re.fullmatch(r"(\d+ \w+, )*\d+ seconds", listed["uptime"])
        one = ok(await http.get(f"/management/nodes/{node}"))
        assert set(one) == set(listed) - {"name"} and one["version"] == listed["version"]
        [monitored] = ok(await http.get("/monitoring/nodes"))
        assert monitored["name"] == node and monitored["clients"] == 1 and monitored["node_status"] == "Running"
        assert re.fullmatch(r"\d+\.\d\d[KMG]", monitored["memory_used"]) and monitored["process_used"] > 1
        assert {"load1", "load5", "load15", "max_fds", "memory_total", "process_available"} <= set(monitored)
        assert ok(await http.get(f"/monitoring/nodes/{node}/"))["clients"] == 1
        for path in ("management/nodes", "monitoring/nodes", "monitoring/listeners", "monitoring/metrics"):
            assert code(await http.get(f"/{path}/other@host")) == 101  # EMQ 2's badrpc: no such node


async def test_listeners_metrics_and_stats_of_all_nodes_and_of_one(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http), connected(broker, "c1", 4) as client:
        await client.subscribe("t", qos=1)
        await client.publish("t", b"hello", qos=1)
        await client.receive()
        node = broker.node_name
        [listener] = ok(await http.get("/monitoring/listeners"))[node]
        assert listener["protocol"] == "mqtt:tcp" and listener["listen"] == f"127.0.0.1:{broker.port()}"
        assert listener["current_clients"] == 1 and listener["shutdown_count"] == []
        assert ok(await http.get(f"/monitoring/listeners/{node}")) == [listener]
        metrics = ok(await http.get("/monitoring/metrics/"))[node]
        assert metrics["packets/connect"] == 1 and metrics["packets/connack"] == 1
        assert metrics["packets/publish/received"] == 1 and metrics["packets/publish/sent"] == 1
        assert metrics["packets/subscribe"] == 1 and metrics["packets/suback"] == 1
        assert metrics["messages/received"] == 1 and metrics["messages/sent"] == 1 and metrics["bytes/received"] > 0
        assert metrics["packets/received"] >= 4 and metrics["messages/qos1/sent"] == 0  # not counted
        assert set(ok(await http.get(f"/monitoring/metrics/{node}"))) == set(metrics)
        stats = ok(await http.get("/monitoring/stats"))[node]
        assert (stats["clients/count"], stats["subscriptions/count"], stats["routes/count"]) == (1, 1, 1)
        assert len(stats) == 14 and all(name.endswith(("/count", "/max")) for name in stats)
        assert ok(await http.get(f"/monitoring/stats/{node}"))["sessions/count"] == 1
        assert code(await http.get("/monitoring/stats/other@host")) == 101


# -- clients, sessions, subscriptions, routes -----------------------------------------------------------


async def test_clients_of_a_node_page_by_page(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http):
        node = broker.node_name
        async with (
            connected(broker, "c1", 4, username="alice"),
            connected(broker, "c2", 5),
            connected(broker, "c3", 4, keep_alive=30),
        ):
            first = ok(await http.get(f"/nodes/{node}/clients", params={"curr_page": 1, "page_size": 2}))
            assert {k: first[k] for k in ("current_page", "page_size", "total_num", "total_page")} == {
                "current_page": 1,
                "page_size": 2,
                "total_num": 3,
                "total_page": 2,
            }
            assert [row["client_id"] for row in first["objects"]] == ["c1", "c2"]
            row = first["objects"][0]
            assert set(row) == SEED_CLIENT_FIELDS
            assert (row["username"], row["ipaddress"], row["clean_sess"], row["proto_ver"]) == (
                "alice",
                "127.0.0.1",
                True,
                4,
            )
            assert row["connected_at"] == datetime.fromtimestamp(
                broker.service.session_info("c1").connected_at
            ).strftime("%Y-%m-%d %H:%M:%S")
            assert first["objects"][1]["username"] == "undefined"  # EMQ 2's word for none
            second = ok(await http.get(f"/nodes/{node}/clients?curr_page=2&page_size=2"))
            assert [row["client_id"] for row in second["objects"]] == ["c3"] and second["objects"][0]["keepalive"] == 30
            past = ok(await http.get(f"/nodes/{node}/clients?curr_page=5&page_size=2"))
            assert past["objects"] == [] and past["total_num"] == 3 and past["current_page"] == 5
            default = ok(await http.get(f"/nodes/{node}/clients"))
            assert (default["page_size"], default["total_page"], len(default["objects"])) == (20, 1, 3)


@pytest.mark.parametrize("query", ["page_size=0", "page_size=-1", "curr_page=0", "curr_page=x", "page_size=1.5"])
async def test_bad_paging_is_a_type_error_on_every_list(tmp_path: Path, query: str) -> None:
    async with v2_broker(tmp_path) as (broker, http):
        node = broker.node_name
        for path in (f"nodes/{node}/clients", f"nodes/{node}/sessions", f"nodes/{node}/subscriptions", "routes"):
            assert code(await http.get(f"/{path}?{query}")) == 108, path


async def test_a_client_looked_up_and_kicked(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http), connected(broker, "c/1", 5) as client:
        node = broker.node_name
        [row] = ok(await http.get("/clients/c/1"))["objects"]
        assert row["client_id"] == "c/1" and row["proto_ver"] == 5
        assert ok(await http.get(f"/nodes/{node}/clients/c/1/")) == {"objects": [row]}
        assert ok(await http.get("/clients/nobody")) == {"objects": []}
        assert code(await http.get("/nodes/other@host/clients/c/1")) == 101
        assert ok(await http.delete("/clients/c/1")) == []
        assert (await client.closed()).reason_code == 0x98  # administrative action
        await eventually(lambda: broker.service.session_info("c/1") is None)
        assert code(await http.delete("/clients/c/1")) == 112  # not online
        assert code(await http.delete("/clients/nobody")) == 112


async def test_kicking_a_persistent_client_keeps_its_session_and_clean_acl_cache(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http):
        async with connected(broker, "keeper", 5, clean_start=False) as client:
            assert ok(await http.put("/clients/keeper/clean_acl_cache", json={"topic": "a/b"})) == []
            assert code(await http.put("/clients/keeper/clean_acl_cache", json={})) == 107
            assert ok(await http.delete("/clients/keeper")) == []
            await client.closed()
        await wait_offline(broker, "keeper", session_kept=True)
        assert code(await http.put("/clients/keeper/clean_acl_cache", json={"topic": "a/b"})) == 112
        assert ok(await http.get("/clients/keeper")) == {"objects": []}  # a client is a connection
        [session] = ok(await http.get("/sessions/keeper"))["objects"]
        assert session["clean_sess"] is False


async def test_sessions_online_and_offline(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http):
        node = broker.node_name
        async with MQTTTestClient.open(broker.port()) as gone:
            await gone.connect("sleeper", clean_start=False, properties=PERSISTENT)
            await gone.subscribe("s/#", qos=1)
            await gone.disconnect()
        await wait_offline(broker, "sleeper", session_kept=True)
        async with connected(broker, "awake", 4) as awake:
            await awake.subscribe("x", qos=0)
            listed = ok(await http.get(f"/nodes/{node}/sessions"))
            assert listed["total_num"] == 2 and [s["client_id"] for s in listed["objects"]] == ["sleeper", "awake"]
            sleeper = listed["objects"][0]
            assert set(sleeper) == {
                "client_id",
                "clean_sess",
                "subscriptions",
                "max_inflight",
                "inflight_len",
                "mqueue_len",
                "mqueue_dropped",
                "awaiting_rel_len",
                "deliver_msg",
                "enqueue_msg",
                "created_at",
            }
            assert (sleeper["clean_sess"], sleeper["subscriptions"]) == (False, 1) and TIME.fullmatch(
                sleeper["created_at"]
            )
            await broker.service.publish("s/1", b"queued", qos=1)
            [queued] = ok(await http.get(f"/nodes/{node}/sessions/sleeper"))["objects"]
            assert queued["mqueue_len"] == 1
            assert ok(await http.get("/sessions/awake"))["objects"][0]["clean_sess"] is True
            assert ok(await http.get(f"/nodes/{node}/clients"))["total_num"] == 1  # only the connected one
            assert ok(await http.get("/sessions/nobody")) == {"objects": []}


async def test_subscriptions_and_routes(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http), connected(broker, "c1", 5) as client:
        node = broker.node_name
        await client.subscribe("a/+", qos=1)
        await client.subscribe("$share/g/b/#", qos=2)
        async with connected(broker, "c2", 4) as other:
            await other.subscribe("a/+", qos=0)
            listed = ok(await http.get(f"/nodes/{node}/subscriptions?page_size=2"))
            assert (listed["total_num"], listed["total_page"], len(listed["objects"])) == (3, 2, 2)
            assert listed["objects"][0] == {"client_id": "c1", "topic": "a/+", "qos": 1}
            mine = ok(await http.get("/subscriptions/c1"))["objects"]
            assert mine == [
                {"client_id": "c1", "topic": "a/+", "qos": 1},
                {"client_id": "c1", "topic": "$share/g/b/#", "qos": 2},
            ]
            assert ok(await http.get(f"/nodes/{node}/subscriptions/c2")) == {
                "objects": [{"client_id": "c2", "topic": "a/+", "qos": 0}]
            }
            routes = ok(await http.get("/routes"))
            assert routes["total_num"] == 2 and routes["objects"] == [
                {"topic": "a/+", "node": node},
                {"topic": "b/#", "node": node},
            ]
            assert ok(await http.get("/routes/b/%23")) == {"objects": [{"topic": "b/#", "node": node}]}
            assert ok(await http.get("/routes/a/+")) == {"objects": [{"topic": "a/+", "node": node}]}
            assert ok(await http.get("/routes/nothing")) == {"objects": []}
            assert ok(await http.get("/subscriptions/nobody")) == {"objects": []}


# -- MQTT over HTTP ----------------------------------------------------------------------------------------


async def test_publish_as_the_seed_shows_reaches_a_subscriber(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http), connected(broker, "sub", 4) as subscriber:
        await subscriber.subscribe("test", qos=1)
        seed = {"topic": "test", "payload": "hello", "qos": 1, "retain": False, "client_id": "C_1492145414740"}
        assert ok(await http.post("/mqtt/publish", json=seed)) == []
        message = await subscriber.receive()
        assert (message.topic, message.payload, message.qos, message.retain) == ("test", b"hello", 1, False)
        assert ok(await http.post("/mqtt/publish", json={"topic": "kept", "payload": "é", "retain": True})) == []
        [kept] = await broker.service.retained("kept")
        assert (kept.payload, kept.qos) == ("é".encode(), 0)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"payload": "x"}, 107),
        ({"topic": "t"}, 107),
        ({"topic": None, "payload": "x"}, 107),
        ({"topic": 5, "payload": "x"}, 108),
        ({"topic": "t", "payload": "x", "qos": "1"}, 108),
        ({"topic": "t", "payload": "x", "qos": 3}, 108),
        ({"topic": "t", "payload": "x", "qos": True}, 108),
        ({"topic": "t", "payload": "x", "retain": "yes"}, 108),
        ({"topic": "t", "payload": "x", "client_id": 7}, 108),
        ({"topic": "a/#", "payload": "x"}, 102),
        ({"topic": "", "payload": "x"}, 102),
        (b'{"topic": "\\ud800", "payload": "x"}', 108),
        (b"topic=t&payload=x", 109),
        (b'["t", "x"]', 109),
        (b"\xff\xfe", 109),
        (b"[" * 100_000, 109),
        (b"", 107),
    ],
)
async def test_bad_publish_requests_get_emq2_codes(tmp_path: Path, body: Any, expected: int) -> None:
    async with v2_broker(tmp_path) as (broker, http), connected(broker, "sub", 4) as subscriber:
        await subscriber.subscribe("#", qos=0)
        if isinstance(body, bytes):
            reply = await http.post("/mqtt/publish", content=body, headers={"content-type": "application/json"})
        else:
            reply = await http.post("/mqtt/publish", json=body)
        assert code(reply) == expected
        assert await subscriber.nothing_received(0.05)


async def test_subscribe_and_unsubscribe_on_a_connected_clients_behalf(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http), connected(broker, "C_1492145414740", 5) as client:
        seed = {"topic": "test", "qos": 1, "client_id": "C_1492145414740"}
        assert ok(await http.post("/mqtt/subscribe", json=seed)) == []
        assert ok(await http.get("/subscriptions/C_1492145414740"))["objects"] == [
            {"client_id": "C_1492145414740", "topic": "test", "qos": 1}
        ]
        assert ok(await http.post("/mqtt/publish", json={"topic": "test", "payload": "one", "qos": 1})) == []
        message = await client.receive()
        assert (message.topic, message.payload, message.qos) == ("test", b"one", 1)
        unsubscribe = {"topic": "test", "client_id": "C_1492145414740"}
        assert ok(await http.post("/mqtt/unsubscribe", json=unsubscribe)) == []
        assert ok(await http.get("/subscriptions/C_1492145414740"))["objects"] == []
        await broker.service.publish("test", b"two", qos=1)
        assert await client.nothing_received(0.1)
        assert code(await http.post("/mqtt/subscribe", json={**seed, "client_id": "nobody"})) == 102
        assert code(await http.post("/mqtt/unsubscribe", json={**unsubscribe, "client_id": "nobody"})) == 102
        assert code(await http.post("/mqtt/subscribe", json={**seed, "topic": "a/#/b"})) == 102
        assert code(await http.post("/mqtt/subscribe", json={**seed, "qos": 5})) == 108
        assert code(await http.post("/mqtt/subscribe", json={"topic": "t"})) == 107
        assert code(await http.post("/mqtt/unsubscribe", json={"topic": ["t"], "client_id": "x"})) == 108


# -- plugins -----------------------------------------------------------------------------------------------


async def test_plugins_unloaded_and_loaded_while_a_client_keeps_receiving(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http), connected(broker, "sub", 5) as subscriber:
        await subscriber.subscribe("t", qos=1)
        node = broker.node_name
        plugins = {p["name"]: p for p in ok(await http.get(f"/nodes/{node}/plugins/"))}
        assert set(plugins["retainer"]) == {"name", "version", "description", "active"}
        assert plugins["retainer"]["active"] is True and plugins[API]["active"] is True
        assert ok(await http.put(f"/nodes/{node}/plugins/retainer", json={"active": False})) == []
        assert "retainer" not in broker.plugins.loaded
        await broker.service.publish("t", b"during", qos=1)
        assert (await subscriber.receive()).payload == b"during"
        listed = {p["name"]: p["active"] for p in ok(await http.get(f"/nodes/{node}/plugins"))}
        assert listed["retainer"] is False
        assert code(await http.put(f"/nodes/{node}/plugins/retainer", json={"active": False})) == 111
        assert ok(await http.put(f"/nodes/{node}/plugins/retainer", json={"active": True})) == []
        assert "retainer" in broker.plugins.loaded
        assert code(await http.put(f"/nodes/{node}/plugins/retainer", json={"active": True})) == 110
        assert code(await http.put(f"/nodes/{node}/plugins/retainer", json={})) == 107
        assert code(await http.put(f"/nodes/{node}/plugins/retainer", json={"active": "false"})) == 108
        assert code(await http.put(f"/nodes/{node}/plugins/no_such_plugin", json={"active": True})) == 102
        assert code(await http.put(f"/nodes/{node}/plugins/no_such_plugin", json={"active": False})) == 111
        assert code(await http.put("/nodes/other@host/plugins/retainer", json={"active": False})) == 101
        assert code(await http.get("/nodes/other@host/plugins")) == 101
        await broker.service.publish("t", b"after", qos=1)
        assert (await subscriber.receive()).payload == b"after"


async def test_unloading_the_api_through_v2_answers_first_while_mqtt_goes_on(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http), connected(broker, "sub", 5) as subscriber:
        await subscriber.subscribe("t", qos=1)
        assert ok(await http.put(f"/nodes/{broker.node_name}/plugins/{API}", json={"active": False})) == []
        await eventually(lambda: API not in broker.plugins.loaded)
        with pytest.raises(httpx.ConnectError):
            await http.get("/management/nodes")
        await broker.service.publish("t", b"still here", qos=1)
        assert (await subscriber.receive()).payload == b"still here"


async def test_odd_requests_on_every_path_get_an_answer_never_a_500(tmp_path: Path) -> None:
    odd_bodies: list[Any] = [b"{", b"null", b"[]", b'"x"', b"1e999", {"topic": {"a": 1}}, {"active": None}]
    odd_bodies += [{"username": 1, "password": []}, {"client_id": "\u0000", "topic": "\u0000", "qos": -1}]
    async with v2_broker(tmp_path) as (broker, http), connected(broker, "c1", 4):
        node = broker.node_name
        paths = [
            "management/nodes/%ff",
            f"nodes/{node}/clients/%00",
            f"nodes/{node}/sessions?curr_page=99999999999999999999&page_size=1",
            f"nodes/{node}/subscriptions?page_size=" + "9" * 5000,
            "clients/%ff%fe",
            "clients/c1/clean_acl_cache",
            "routes/%ff",
            "mqtt/publish",
            "mqtt/subscribe",
            "mqtt/unsubscribe",
            f"nodes/{node}/plugins/%ff",
            "users",
            "users/%ff",
            "auth",
            "change_pwd/admin",
        ]
        for path in paths:
            for method in ("GET", "POST", "PUT", "DELETE"):
                for body in odd_bodies if method in ("POST", "PUT") else [None]:
                    content = body if isinstance(body, bytes) or body is None else None
                    reply = await http.request(method, f"/{path}", content=content, json=None if content else body)
                    assert reply.status_code < 500 and reply.headers["content-type"] == "application/json", (
                        method,
                        path,
                        body,
                        reply.text,
                    )
        assert [user["username"] for user in ok(await http.get("/users"))] == ["admin"]


# -- users and credentials -----------------------------------------------------------------------------------


async def test_admin_users_as_the_seed_shows(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http):
        assert ok(await http.get("/users")) == [{"username": "admin", "tags": "administrator"}]
        seed = {"username": "test_user", "password": "password", "tags": "user"}
        assert ok(await http.post("/users", json=seed)) == []
        assert code(await http.post("/users", json=seed)) == 113
        assert ok(await http.get("/users/test_user")) == {"username": "test_user", "tags": "user"}
        assert ok(await http.get("/users/nobody")) == []
        assert ok(await http.post("/auth", json={"username": "test_user", "password": "password"}, auth=None)) == []
        assert code(await http.post("/auth", json={"username": "test_user", "password": "wrong"})) == 103
        assert code(await http.post("/auth", json={"username": "nobody", "password": "x"})) == 103
        assert code(await http.post("/auth", json={"username": "", "password": "x"})) == 104
        assert code(await http.post("/auth", json={"username": "test_user"})) == 107
        assert code(await http.post("/users", json={"username": "x", "password": ""})) == 104
        assert code(await http.post("/users", json={"username": "bad name", "password": "p"})) == 108
        # a user of tags "user" may do what EMQ 2's users did: everything
        as_user = await http.get("/users", auth=("test_user", "password"))
        assert {u["username"] for u in ok(as_user)} == {"admin", "test_user"}
        assert ok(await http.put("/users/test_user", json={"tags": "admin"})) == []
        assert ok(await http.get("/users/test_user"))["tags"] == "admin"
        assert code(await http.put("/users/nobody", json={"tags": "x"})) == 105
        assert code(await http.put("/users/test_user", json={})) == 107
        change = {"old_pwd": "wrong", "new_pwd": "newpassword"}
        assert code(await http.put("/change_pwd/test_user", json=change)) == 114
        assert code(await http.put("/change_pwd/nobody", json={**change, "old_pwd": "x"})) == 105
        assert code(await http.put("/change_pwd/test_user", json={"old_pwd": "password", "new_pwd": ""})) == 104
        assert ok(await http.put("/change_pwd/test_user", json={**change, "old_pwd": "password"})) == []
        assert code(await http.post("/auth", json={"username": "test_user", "password": "password"})) == 103
        assert ok(await http.post("/auth", json={"username": "test_user", "password": "newpassword"})) == []
        # the documentation's names of change_pwd's fields work too
        documented = {"oldpassword": "newpassword", "password": "third"}
        assert ok(await http.put("/change_pwd/test_user", json=documented)) == []
        assert code(await http.delete("/users/admin")) == 106
        assert ok(await http.delete("/users/test_user")) == []
        assert code(await http.delete("/users/test_user")) == 105
        assert ok(await http.get("/users")) == [{"username": "admin", "tags": "administrator"}]


async def test_the_last_administrator_cannot_be_deleted(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http):
        assert ok(await http.post("/users", json={"username": "root", "password": "pw"})) == []
        assert ok(await http.post("/users", json={"username": "watcher", "password": "pw", "tags": "viewer"})) == []
        await broker.service.run_command(["admins", "del", "username=admin"])
        root = ("root", "pw")
        assert code(await http.delete("/users/root", auth=root)) == 106
        assert ok(await http.delete("/users/watcher", auth=root)) == []
        assert ok(await http.get("/users", auth=root)) == [{"username": "root", "tags": "administrator"}]


async def test_logins_keys_and_roles(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http):
        for auth in (None, ("admin", ""), ("admin", "wrong"), ("nobody", "public")):
            reply = await http.get("/management/nodes", auth=auth)
            assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Basic")
            assert reply.json()["code"] == (103 if auth and auth[1] else 104)
        garbled = await http.get("/management/nodes", auth=None, headers={"authorization": "Basic !!!"})
        assert garbled.status_code == 401 and garbled.json()["code"] == 104

        async def key(role: str) -> tuple[str, str]:
            made = await broker.service.run_command(["api-key", "create", "--emqx", f"name={role}", f"role={role}"])
            assert isinstance(made, Text)
            fields = dict(line.split(": ") for line in made.text.splitlines())
            return fields["api_key"], fields["api_secret"]

        publish = {"topic": "t", "payload": "x"}
        administrator, viewer, publisher = await key("administrator"), await key("viewer"), await key("publisher")
        # a key may not make users: a user may log in on /api/v5 and manage keys there
        by_key = await http.post("/users", json={"username": "u", "password": "p"}, auth=administrator)
        assert by_key.status_code == 403 and "administrator user" in by_key.json()["message"]
        assert ok(await http.post("/users", json={"username": "u", "password": "p"})) == []
        assert ok(await http.get("/routes", auth=viewer))["objects"] == []
        refused = await http.post("/mqtt/publish", json=publish, auth=viewer)
        assert refused.status_code == 403 and refused.json()["code"] == 102 and "viewer" in refused.json()["message"]
        assert ok(await http.post("/mqtt/publish", json=publish, auth=publisher)) == []
        assert (await http.get("/routes", auth=publisher)).status_code == 403
        assert ok(await http.put("/users/u", json={"tags": "viewer"})) == []  # a role's name sets the role
        assert (await http.delete("/users/u", auth=("u", "p"))).status_code == 403
        assert ok(await http.get("/users/u", auth=("u", "p"))) == {"username": "u", "tags": "viewer"}
        last = await http.put("/users/admin", json={"tags": "viewer"})  # nobody could write then
        assert last.json()["code"] == 106


def unavailable(reply: httpx.Response, told: str) -> None:
    """A 503 with EMQ 2's error body, code 102, saying ``told``."""
    assert reply.status_code == 503 and reply.json()["code"] == 102, reply.text
    assert told in reply.json()["message"], reply.text


async def test_a_user_change_the_store_fails_to_commit_is_a_503_and_stays_in_force(tmp_path: Path) -> None:
    config = test_config(plugins={API: {"port": 0}})
    broker = Broker(attrs.evolve(config, broker=attrs.evolve(config.broker, data_dir=str(tmp_path / "data"))))
    await broker.plugins.register("store", StoreThatCannotCommit())  # before the api plugin loads
    async with serving(broker):
        with contextlib.suppress(CommandError):  # (in force, not saved: tested on /api/v5)
            await broker.service.run_command(["admins", "add", "username=admin", "password=public"])
        async with httpx.AsyncClient(base_url=base_url(broker) + "/api/v2", auth=("admin", "public")) as http:
            not_saved = "the change is in force, but the store has not saved it yet"
            unavailable(await http.post("/users", json={"username": "u", "password": "p", "tags": "viewer"}), not_saved)
            assert ok(await http.get("/users/u")) == {"username": "u", "tags": "viewer"}  # in force
            unavailable(await http.put("/users/u", json={"tags": "administrator"}), not_saved)
            assert ok(await http.get("/users/u"))["tags"] == "administrator"
            unavailable(await http.put("/change_pwd/u", json={"old_pwd": "p", "new_pwd": "q"}), not_saved)
            assert ok(await http.post("/auth", json={"username": "u", "password": "q"})) == []
            unavailable(await http.delete("/users/u"), not_saved)
            assert ok(await http.get("/users/u")) == []


async def test_changing_users_with_the_store_unloaded_is_a_clear_503(tmp_path: Path) -> None:
    config = test_config(plugins={"sqlite_store": {"file": str(tmp_path / "t.db")}, API: {"port": 0}})
    async with open_broker(attrs.evolve(config, broker=attrs.evolve(config.broker, data_dir=str(tmp_path)))) as broker:
        run = broker.service.run_command
        await run(["admins", "add", "username=admin", "password=public"])
        await run(["admins", "add", "username=other", "password=pw"])
        await broker.service.unload_plugin("sqlite_store")
        async with httpx.AsyncClient(base_url=base_url(broker) + "/api/v2", auth=("admin", "public")) as http:
            gone = "the users cannot be saved: no store plugin keeps the records of api_apps now"
            unavailable(await http.post("/users", json={"username": "u", "password": "p"}), gone)
            unavailable(await http.put("/users/other", json={"tags": "viewer"}), gone)
            unavailable(await http.put("/change_pwd/other", json={"old_pwd": "pw", "new_pwd": "q"}), gone)
            unavailable(await http.delete("/users/other"), gone)
            # nothing changed
            assert ok(await http.get("/users")) == [
                {"username": "admin", "tags": "administrator"},
                {"username": "other", "tags": "administrator"},
            ]
            assert ok(await http.post("/auth", json={"username": "other", "password": "pw"})) == []


async def test_unknown_paths_and_methods_are_json(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http):
        missing = await http.get("/no/such/thing")
        assert missing.status_code == 404 and missing.json()["code"] == 102
        wrong = await http.post("/management/nodes")
        assert wrong.status_code == 405 and "POST" in wrong.json()["message"]
        assert (await http.patch("/users/admin")).status_code in (404, 405)
        assert (await http.head("/management/nodes")).status_code == 200


async def test_vernemqs_api_v2_client_still_answers(tmp_path: Path) -> None:
    async with v2_broker(tmp_path) as (broker, http), connected(broker, "c1", 5) as client:
        await client.subscribe("a/+", qos=1)
        key = await broker.service.run_command(["api-key", "create", "scope=api2"])
        assert isinstance(key, Text)
        async with httpx.AsyncClient(base_url=base_url(broker), timeout=10) as plain:
            headers = {"x-api-key": key.text}
            online = await plain.get("/api/v2/client?client_id=c1&topics", headers=headers)
            assert online.json() == {"status": "online", "topics": {"a/+": 1}}
            assert (await plain.get("/api/v2/client?client_id=c1", auth=("admin", "public"))).status_code == 401
            assert (await plain.get("/api/v2/disconnect?client_id=c1", headers=headers)).json() == "ok"
        assert (await client.closed()).reason_code == 0x98
        await wait_offline(broker, "c1")
