"""EMQX 3's /api/v3 of the api plugin on a real hypercorn port, driven with httpx and real
MQTT clients (ternmq's test client and paho): the endpoint list, apps and roles, brokers
and nodes, connections, sessions, subscriptions and routes with EMQX 3's paging,
publish/subscribe/unsubscribe on a client's behalf, plugins loaded and unloaded while
clients carry on, listeners, metrics, stats, the banned list, and EMQX 3's error codes."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest

from ternmq.kernel import Text
from ternmq.kernel.broker import Broker
from ternmq.kernel.testing import MQTTTestClient, open_broker, test_config

from helpers import connected, eventually, paho_subscriber

V3 = "/api/v3"
LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def v3_config(tmp_path: Path, **plugins: Any) -> Any:
    api = {"port": 0, "keys_file": str(tmp_path / "keys.json"), "apps_file": str(tmp_path / "apps.json")}
    return test_config(plugins={"retainer": {}, "api": api, **plugins})


def api_port(broker: Broker) -> int:
    port: int = broker.plugins.loaded["api"].plugin.port
    return port


async def make_app(broker: Broker, *keys: str) -> tuple[str, str]:
    """``ternmq-admin app create``: it prints ``app_id: X`` and ``secret: Y``."""
    printed = await broker.service.run_command(["app", "create", *keys])
    assert isinstance(printed, Text)
    app_id, secret = (line.split(": ", 1)[1] for line in printed.text.splitlines())
    return app_id, secret


@asynccontextmanager
async def v3_broker(tmp_path: Path, **plugins: Any) -> AsyncIterator[tuple[Broker, httpx.AsyncClient]]:
    """A broker with the API and an httpx client holding an app's id and secret."""
    async with open_broker(v3_config(tmp_path, **plugins)) as broker:
        app_id, secret = await make_app(broker, "name=ops")
        url = f"http://127.0.0.1:{api_port(broker)}{V3}"
        async with httpx.AsyncClient(base_url=url, auth=(app_id, secret), timeout=10) as http:
            yield broker, http


async def ok(http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    """The answer of a request that must succeed: HTTP 200, code 0."""
    reply = await http.request(method, path, **kwargs)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json", reply.text
    body = reply.json()
    assert body["code"] == 0, body
    return body


async def refused(http: httpx.AsyncClient, method: str, path: str, code: int, status: int = 200, **kw: Any) -> str:
    """A refusal as EMQX 3 answers it: ``{"code", "message"}``, HTTP 200 unless said."""
    reply = await http.request(method, path, **kw)
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body
    message: str = body["message"]
    assert message
    return message


def recent(text: str) -> bool:
    """A local ``YYYY-MM-DD HH:MM:SS`` of the last minute."""
    assert LOCAL_TIME.fullmatch(text), text
    return abs(time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S")) - time.time()) < 60


# -- the endpoint list, credentials, roles ---------------------------------------------------------


async def test_the_endpoint_list_is_emqx_3s(tmp_path: Path) -> None:
    async with v3_broker(tmp_path, banned={"file": str(tmp_path / "banned.json")}) as (broker, http):
        listed = (await ok(http, "GET", "/"))["data"]
        assert all(set(entry) == {"name", "method", "path", "descr"} for entry in listed)
        by_name = {entry["name"]: entry for entry in listed}
        assert by_name["list_brokers"] == {
            "name": "list_brokers",
            "method": "GET",
            "path": "/brokers/",
            "descr": "A list of brokers in the cluster",
        }
        assert by_name["load_node_plugin"]["path"] == "/nodes/:node/plugins/:plugin/load"
        assert by_name["delete_banned"]["method"] == "DELETE" and by_name["mqtt_publish"]["method"] == "POST"
        wanted = {"list_connections", "kickout_connection", "list_sessions", "lookup_routes", "lookup_node_stats"}
        assert wanted <= set(by_name)
        # every listed GET is served: code 0 (a crash would answer 102)
        node = broker.node_name
        for entry in listed:
            if entry["method"] == "GET":
                path = entry["path"].replace(":node", node).replace(":clientid", "c").replace(":topic", "t")
                reply = await http.get("/" + path.replace(":username", "u").lstrip("/"))
                assert reply.status_code == 200 and reply.json()["code"] == 0, (path, reply.text)
        bare = await ok(http, "GET", f"http://127.0.0.1:{api_port(broker)}{V3}")  # no slash at the end
        assert bare["data"] == listed


async def test_credentials_are_an_apps_id_and_secret(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http):
        app_id, secret = await make_app(broker, "name=mine", "app_id=my-app", "secret=s3cret-words")
        assert (app_id, secret) == ("my-app", "s3cret-words")
        mine = httpx.AsyncClient(base_url=str(http.base_url), auth=("my-app", "s3cret-words"), timeout=10)
        async with mine:
            assert (await ok(mine, "GET", "/brokers"))["data"][0]["node"] == broker.node_name
        for auth, code in ((None, 104), (("my-app", "wrong"), 103), (("nobody", "s3cret-words"), 103)):
            reply = await http.get("/brokers", auth=auth)
            assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Basic")
            assert reply.json()["code"] == code and reply.json()["message"]
        garbled = await http.get("/brokers", auth=None, headers={"authorization": "Basic !!notbase64"})
        assert garbled.status_code == 401 and garbled.json()["code"] == 104
        # an API key of /api/v5 is the same kind of credential; a dashboard user is not
        await broker.service.run_command(["admins", "add", "username=admin", "password=admin-pass1"])
        user = await http.get("/brokers", auth=("admin", "admin-pass1"))
        assert user.status_code == 401 and user.json()["code"] == 103


async def test_roles_limit_an_app(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http), connected(broker, "sub", 4) as subscriber:
        await subscriber.subscribe("news", qos=0)
        apps = broker.plugins.loaded["api"].plugin.apps
        _, viewer_secret = apps.create("viewer", role="viewer", key="viewer-id")
        _, publisher_secret = apps.create("publisher", role="publisher", key="publisher-id")
        base = str(http.base_url)
        async with (
            httpx.AsyncClient(base_url=base, auth=("viewer-id", viewer_secret), timeout=10) as viewer,
            httpx.AsyncClient(base_url=base, auth=("publisher-id", publisher_secret), timeout=10) as publisher,
        ):
            await ok(viewer, "GET", "/connections")
            unload = f"/nodes/{broker.node_name}/plugins/retainer/unload"
            assert "viewer" in await refused(viewer, "PUT", unload, 102, status=403)
            await refused(viewer, "POST", "/mqtt/publish", 102, status=403, json={"topic": "news", "payload": "x"})
            await ok(publisher, "POST", "/mqtt/publish", json={"topic": "news", "payload": "from publisher"})
            assert (await subscriber.receive()).payload == b"from publisher"
            await refused(publisher, "GET", "/connections", 102, status=403)
            subscribe = {"topic": "x", "client_id": "sub"}
            await refused(publisher, "POST", "/mqtt/subscribe", 102, status=403, json=subscribe)
        assert "retainer" in broker.plugins.loaded


async def test_unknown_paths_and_nodes_are_404s_with_a_code(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http):
        assert "/api/v3/nothing/here" in await refused(http, "GET", "/nothing/here", 102, status=404)
        await refused(http, "PATCH", "/brokers", 102, status=404)
        await refused(http, "POST", "/brokers", 102, status=404)
        for path in ("/brokers/nobody@nowhere", "/nodes/nobody@nowhere", "/nodes/nobody@nowhere/connections"):
            assert "nobody@nowhere" in await refused(http, "GET", path, 101, status=404)
        load = "/nodes/nobody@nowhere/plugins/sys/load"
        await refused(http, "PUT", load, 101, status=404)
        assert "sys" not in broker.plugins.loaded
        unauthenticated = await http.get("/nothing/here", auth=None)  # credentials come first, as minirest
        assert unauthenticated.status_code == 401


# -- brokers and nodes -------------------------------------------------------------------------------


async def test_brokers_and_nodes_in_emqx_3s_shape(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http), connected(broker, "c1", 4):
        node = broker.node_name
        [listed] = (await ok(http, "GET", "/brokers/"))["data"]
        assert set(listed) == {"datetime", "node", "node_status", "otp_release", "sysdescr", "uptime", "version"}
        assert listed["node"] == node and listed["node_status"] == "Running" and recent(listed["datetime"])
        assert re.fullmatch(r"\d+ seconds|\d+ minutes, \d+ seconds", listed["uptime"])
        one = (await ok(http, "GET", f"/brokers/{node}"))["data"]
        assert set(one) == set(listed) - {"node"} and one["version"] == listed["version"]
        [summary] = (await ok(http, "GET", "/nodes"))["data"]
        assert (summary["node"], summary["name"], summary["connections"], summary["node_status"]) == (
            node,
            node,
            1,
            "Running",
        )
        assert re.fullmatch(r"\d+\.\d\d[KMG]", summary["memory_used"]) and float(summary["load1"]) >= 0
        detail = (await ok(http, "GET", f"/nodes/{node}/"))["data"]
        assert isinstance(detail["memory_total"], int) and detail["memory_used"] > 1 << 20
        assert detail["max_fds"] > 0 and "node" not in detail and detail["name"] == node


# -- connections, sessions, subscriptions, routes --------------------------------------------------------


async def test_connections_as_emqx_3_lists_them(tmp_path: Path) -> None:
    async with (
        v3_broker(tmp_path) as (broker, http),
        connected(broker, "c1", 4, username="alice", keep_alive=30),
        connected(broker, "c2", 5),
    ):
        body = await ok(http, "GET", "/connections/", params={"_page": 1, "_limit": 10000})
        assert body["meta"] == {"page": 1, "limit": 10000, "count": 2}
        c1, c2 = sorted(body["data"], key=lambda row: row["client_id"])
        assert (c1["username"], c1["proto_ver"], c1["proto_name"], c1["keepalive"]) == ("alice", 4, "MQTT", 30)
        assert c1["ipaddress"] == "127.0.0.1" and isinstance(c1["port"], int) and c1["clean_start"] is True
        assert c1["node"] == broker.node_name and recent(c1["connected_at"]) and c1["is_bridge"] is False
        assert c2["username"] == "undefined" and c2["proto_ver"] == 5  # as Erlang prints a missing one
        node = broker.node_name
        assert (await ok(http, "GET", "/connections/c1"))["data"] == [c1]
        assert (await ok(http, "GET", f"/nodes/{node}/connections/c1"))["data"] == [c1]
        assert (await ok(http, "GET", f"/nodes/{node}/connections/"))["meta"]["count"] == 2
        assert (await ok(http, "GET", "/connection/username/alice"))["data"] == [c1]
        assert (await ok(http, "GET", f"/nodes/{node}/connection/username/nobody"))["data"] == []
        assert (await ok(http, "GET", "/connections/nobody"))["data"] == []


async def test_paging_edges(tmp_path: Path) -> None:
    async with (
        v3_broker(tmp_path) as (broker, http),
        connected(broker, "c1", 4),
        connected(broker, "c2", 4),
        connected(broker, "c3", 4),
    ):
        first = await ok(http, "GET", "/connections", params={"_page": 1, "_limit": 2})
        second = await ok(http, "GET", "/connections", params={"_page": 2, "_limit": 2})
        assert first["meta"] == {"page": 1, "limit": 2, "count": 3} and len(first["data"]) == 2
        assert second["meta"] == {"page": 2, "limit": 2, "count": 3}
        ids = [row["client_id"] for row in first["data"] + second["data"]]
        assert sorted(ids) == ["c1", "c2", "c3"]
        past = await ok(http, "GET", "/sessions", params={"_page": 9, "_limit": 2})
        assert past["data"] == [] and past["meta"] == {"page": 9, "limit": 2, "count": 3}
        assert (await ok(http, "GET", "/sessions"))["meta"] == {"page": 1, "limit": 10000, "count": 3}
        for params in ({"_limit": 0}, {"_limit": 10001}, {"_page": 0}, {"_page": "two"}, {"_limit": "-1"}):
            assert "_" in await refused(http, "GET", "/connections", 108, params=params)
        await refused(http, "GET", "/routes", 108, params={"_limit": "1.5"})
        await refused(http, "GET", "/subscriptions", 108, params={"_page": ""})


async def test_kick_out_a_connection(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http):
        async with connected(broker, "keeper", 5, clean_start=False, expiry=300):
            pass  # its session stays, offline
        async with connected(broker, "dev/1", 5) as client:
            assert await ok(http, "DELETE", "/connections/dev%2F1") == {"code": 0}
            assert (await client.closed()).reason_code == 0x98  # administrative action
        await eventually(lambda: "dev/1" not in broker.sessions)
        assert "dev/1" in await refused(http, "DELETE", "/connections/dev%2F1", 112)
        await refused(http, "DELETE", "/connections/keeper", 112)  # a session, but no connection
        assert "keeper" in broker.sessions


async def test_sessions_online_and_offline(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http):
        async with connected(broker, "keeper", 5, clean_start=False, expiry=300, username="k") as gone:
            await gone.subscribe("kept/#", qos=1)
        async with connected(broker, "live", 4) as live:
            await live.subscribe("a", qos=0)
            body = await ok(http, "GET", "/sessions/")
            assert body["meta"]["count"] == 2
            keeper = next(row for row in body["data"] if row["client_id"] == "keeper")
            assert (keeper["clean_start"], keeper["expiry_interval"], keeper["subscriptions_count"]) == (False, 300, 1)
            assert keeper["username"] == "k" and recent(keeper["created_at"]) and keeper["node"] == broker.node_name
            assert {"max_inflight", "mqueue_len", "max_mqueue", "inflight_len", "binding"} <= set(keeper)
            assert (await ok(http, "GET", "/sessions/keeper"))["data"] == [keeper]
            node = broker.node_name
            assert (await ok(http, "GET", f"/nodes/{node}/sessions/keeper"))["data"] == [keeper]
            assert (await ok(http, "GET", f"/nodes/{node}/sessions"))["meta"]["count"] == 2
            assert (await ok(http, "GET", "/sessions/nobody"))["data"] == []
            connections = await ok(http, "GET", "/connections")
            assert [row["client_id"] for row in connections["data"]] == ["live"]  # only who is connected


async def test_subscriptions_and_routes(tmp_path: Path) -> None:
    async with (
        v3_broker(tmp_path) as (broker, http),
        connected(broker, "c1", 4) as c1,
        connected(broker, "c2", 5) as c2,
    ):
        await c1.subscribe("a/+", qos=1)
        await c1.subscribe("b", qos=0)
        await c2.subscribe("b", qos=2)
        node = broker.node_name
        body = await ok(http, "GET", "/subscriptions/", params={"_page": 1, "_limit": 10000})
        assert body["meta"] == {"page": 1, "limit": 10000, "count": 3}
        assert {(r["client_id"], r["topic"], r["qos"], r["node"]) for r in body["data"]} == {
            ("c1", "a/+", 1, node),
            ("c1", "b", 0, node),
            ("c2", "b", 2, node),
        }
        mine = (await ok(http, "GET", "/subscriptions/c1"))["data"]
        assert sorted(r["topic"] for r in mine) == ["a/+", "b"] and set(mine[0]) == {
            "node",
            "topic",
            "client_id",
            "qos",
        }
        assert (await ok(http, "GET", f"/nodes/{node}/subscriptions/c2"))["data"] == [
            {"node": node, "topic": "b", "client_id": "c2", "qos": 2}
        ]
        assert (await ok(http, "GET", f"/nodes/{node}/subscriptions", params={"_limit": 1}))["meta"]["count"] == 3
        assert (await ok(http, "GET", "/subscriptions/nobody"))["data"] == []
        routes = await ok(http, "GET", "/routes/")
        assert routes["meta"] == {"page": 1, "limit": 10000, "count": 2}
        assert sorted(routes["data"], key=lambda r: r["topic"]) == [
            {"topic": "a/+", "node": node},
            {"topic": "b", "node": node},
        ]
        assert (await ok(http, "GET", "/routes/a%2F%2B"))["data"] == [{"topic": "a/+", "node": node}]
        assert (await ok(http, "GET", "/routes/a%2Fb"))["data"] == []
        assert (await ok(http, "GET", "/routes", params={"_page": 2, "_limit": 1}))["data"] == [
            {"topic": "b", "node": node}
        ]


# -- publish, subscribe, unsubscribe -----------------------------------------------------------------------


async def test_publish_reaches_a_paho_subscriber(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http):
        async with paho_subscriber(broker.port(), "test_topic", paho.MQTTv311) as received:
            # the seed's example request
            example = {"topic": "test_topic", "payload": "hello", "qos": 1, "retain": False, "client_id": "mqttjs_ab"}
            assert await ok(http, "POST", "/mqtt/publish", json=example) == {"code": 0}
        [message] = received
        assert (message.topic, message.payload, message.qos, message.retain) == ("test_topic", b"hello", 1, False)


async def test_publish_to_several_topics_and_retained(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http), connected(broker, "sub", 4) as sub:
        await sub.subscribe("t/#", qos=1)
        await ok(http, "POST", "/mqtt/publish", json={"topics": "t/1,t/2", "payload": "both", "qos": 1})
        got = {(await sub.receive()).topic for _ in range(2)}
        assert got == {"t/1", "t/2"}
        await ok(http, "POST", "/mqtt/publish", json={"topic": "t/kept", "payload": "stays", "retain": True})
        assert (await sub.receive()).payload == b"stays"
        async with connected(broker, "late", 4) as late:
            await late.subscribe("t/kept", qos=0)
            message = await late.receive()
            assert (message.payload, message.retain) == (b"stays", True)
        # parameters from the query count too (EMQX 3 reads both, the query first)
        await ok(http, "POST", "/mqtt/publish", params={"topic": "t/q"}, json={"topic": "t/body", "payload": "q"})
        assert (await sub.receive()).topic == "t/q"
        # query text is read as the type asked for: ?qos=1&retain=false
        await ok(
            http, "POST", "/mqtt/publish", params={"qos": "1", "retain": "false"}, json={"topic": "t/n", "payload": "n"}
        )
        assert ((received := await sub.receive()).topic, received.qos) == ("t/n", 1)


async def test_publish_refusals(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http), connected(broker, "sub", 4) as sub:
        await sub.subscribe("#", qos=0)
        cases: list[tuple[Any, int]] = [
            ({"payload": "no topic"}, 107),
            ({"topic": "a/#", "payload": "x"}, 115),
            ({"topic": "", "payload": "x"}, 115),
            ({"topics": "ok,bad/+", "payload": "x"}, 115),
            ({"topic": "a", "payload": "x", "qos": 3}, 108),
            ({"topic": "a", "payload": "x", "qos": "1"}, 108),
            ({"topic": "a", "payload": "x", "retain": "yes"}, 108),
            ({"topic": "a", "payload": {"not": "text"}}, 108),
            ({"topic": ["a"], "payload": "x"}, 108),
            ({"topic": "a", "payload": "x", "client_id": 7}, 108),
        ]
        for body, code in cases:
            await refused(http, "POST", "/mqtt/publish", code, json=body)
        assert "JSON" in await refused(http, "POST", "/mqtt/publish", 109, content=b"topic=a&payload=x")
        await refused(http, "POST", "/mqtt/publish", 109, json=[{"topic": "a", "payload": "x"}])
        await refused(http, "POST", "/mqtt/publish", 109, content=b"\xff\xfe")
        assert await sub.nothing_received()  # nothing went out, not even the good topic of "ok,bad/+"


async def test_subscribe_and_unsubscribe_on_behalf_of_a_client(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http), connected(broker, "mqttjs_ab9069449e", 5) as client:
        example = {"topic": "test_topic", "qos": 1, "client_id": "mqttjs_ab9069449e"}
        assert await ok(http, "POST", "/mqtt/subscribe", json=example) == {"code": 0}
        await ok(http, "POST", "/mqtt/publish", json={"topic": "test_topic", "payload": "hello", "qos": 1})
        message = await client.receive()
        assert (message.topic, message.payload, message.qos) == ("test_topic", b"hello", 1)
        await ok(http, "POST", "/mqtt/subscribe", json={"topics": "x/+,y", "client_id": "mqttjs_ab9069449e"})
        mine = (await ok(http, "GET", "/subscriptions/mqttjs_ab9069449e"))["data"]
        assert {(r["topic"], r["qos"]) for r in mine} == {("test_topic", 1), ("x/+", 0), ("y", 0)}
        unsub = {"topic": "test_topic", "client_id": "mqttjs_ab9069449e"}
        assert await ok(http, "POST", "/mqtt/unsubscribe", json=unsub) == {"code": 0}
        await ok(http, "POST", "/mqtt/publish", json={"topic": "test_topic", "payload": "gone"})
        await ok(http, "POST", "/mqtt/publish", json={"topic": "y", "payload": "still"})
        assert (await client.receive()).payload == b"still"  # and nothing on test_topic before it
        assert {r["topic"] for r in (await ok(http, "GET", "/subscriptions/mqttjs_ab9069449e"))["data"]} == {"x/+", "y"}


async def test_subscribe_and_unsubscribe_refusals(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http), connected(broker, "c1", 4):
        await refused(http, "POST", "/mqtt/subscribe", 107, json={"topic": "a"})
        await refused(http, "POST", "/mqtt/subscribe", 107, json={"client_id": "c1"})
        assert "nobody" in await refused(
            http, "POST", "/mqtt/subscribe", 112, json={"topic": "a", "client_id": "nobody"}
        )
        await refused(http, "POST", "/mqtt/subscribe", 115, json={"topic": "a/#/b", "client_id": "c1"})
        await refused(http, "POST", "/mqtt/subscribe", 108, json={"topic": "a", "client_id": "c1", "qos": 5})
        await refused(http, "POST", "/mqtt/subscribe", 108, json={"topic": "a", "client_id": 1})
        await refused(http, "POST", "/mqtt/subscribe", 109, content=b"{not json")
        await refused(http, "POST", "/mqtt/unsubscribe", 107, json={"client_id": "c1"})
        await refused(http, "POST", "/mqtt/unsubscribe", 115, json={"topic": "a/#/b", "client_id": "c1"})
        await refused(http, "POST", "/mqtt/unsubscribe", 112, json={"topic": "a", "client_id": "nobody"})
        assert broker.service.subscriptions("c1") == ()


# -- plugins ----------------------------------------------------------------------------------------------


async def test_plugins_listed_as_emqx_3_lists_them(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http):
        [entry] = (await ok(http, "GET", "/plugins/"))["data"]
        assert entry["node"] == broker.node_name
        plugins = {p["name"]: p for p in entry["plugins"]}
        assert plugins["retainer"]["active"] is True and plugins["api"]["active"] is True
        assert plugins["sys"]["active"] is False  # a built-in one, not loaded: EMQX 3 lists it too
        assert set(plugins["retainer"]) == {"name", "version", "description", "active", "type"}
        node_list = (await ok(http, "GET", f"/nodes/{broker.node_name}/plugins"))["data"]
        assert {p["name"]: p["active"] for p in node_list} == {n: p["active"] for n, p in plugins.items()}


async def test_unload_and_load_a_plugin_while_a_client_keeps_receiving(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http), connected(broker, "sub", 4) as sub:
        await sub.subscribe("live", qos=1)
        node = broker.node_name
        base = f"/nodes/{node}/plugins/retainer"

        async def still_receiving(payload: bytes) -> None:
            await ok(http, "POST", "/mqtt/publish", json={"topic": "live", "payload": payload.decode(), "qos": 1})
            assert (await sub.receive()).payload == payload

        assert await ok(http, "PUT", f"{base}/unload") == {"code": 0}
        assert "retainer" not in broker.plugins.loaded
        await still_receiving(b"one")
        listed = {p["name"]: p["active"] for p in (await ok(http, "GET", "/plugins"))["data"][0]["plugins"]}
        assert listed["retainer"] is False
        assert "retainer" in await refused(http, "PUT", f"{base}/unload", 111)
        assert await ok(http, "PUT", f"{base}/load") == {"code": 0}
        assert "retainer" in broker.plugins.loaded
        await still_receiving(b"two")
        await refused(http, "PUT", f"{base}/load", 110)
        assert await ok(http, "PUT", f"{base}/reload") == {"code": 0}
        await ok(http, "PUT", "/plugins/retainer/unload")  # the cluster's path
        await refused(http, "PUT", f"/nodes/{node}/plugins/sys/unload", 111)  # a built-in one never loaded
        await ok(http, "PUT", "/plugins/retainer/reload")  # EMQX 3 loads an inactive plugin on reload
        assert "retainer" in broker.plugins.loaded
        await refused(http, "PUT", f"/nodes/{node}/plugins/no_such_plugin/load", 102)
        await refused(http, "PUT", f"/nodes/{node}/plugins/no_such_plugin/unload", 102)
        await still_receiving(b"three")
        info = broker.service.session_info("sub")
        assert info is not None and info.is_online


async def test_unloading_the_api_itself_answers_first(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http), connected(broker, "sub", 4) as sub:
        await sub.subscribe("t", qos=1)
        reply = await http.put(f"/nodes/{broker.node_name}/plugins/api/unload")
        assert reply.status_code == 200 and reply.json() == {"code": 0}
        await eventually(lambda: "api" not in broker.plugins.loaded)
        with pytest.raises(httpx.ConnectError):
            await http.get("/brokers")
        await broker.service.publish("t", b"still here", qos=1)
        assert (await sub.receive()).payload == b"still here"


# -- listeners, metrics, stats --------------------------------------------------------------------------------


async def test_listeners_metrics_and_stats(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http), connected(broker, "c1", 4) as c1:
        await c1.subscribe("m/#", qos=0)
        await c1.publish("m/1", b"x", qos=1, retain=True)
        await c1.receive()
        node = broker.node_name
        [entry] = (await ok(http, "GET", "/listeners/"))["data"]
        [listener] = entry["listeners"]
        assert entry["node"] == node and listener["protocol"] == "mqtt:tcp"
        assert listener["listen_on"] == f"127.0.0.1:{broker.port()}" and listener["current_conns"] == 1
        assert {"acceptors", "max_conns", "shutdown_count"} <= set(listener)
        assert (await ok(http, "GET", f"/nodes/{node}/listeners"))["data"] == [listener]
        [metrics] = (await ok(http, "GET", "/metrics/"))["data"]
        assert metrics["node"] == node
        figures = metrics["metrics"]
        assert figures["messages.received"] >= 1 and figures["messages.sent"] >= 1 and figures["bytes.received"] > 0
        assert figures["packets.connect.received"] >= 1 and figures["messages.retained"] == 1
        node_metrics = (await ok(http, "GET", f"/nodes/{node}/metrics/"))["data"]
        assert set(node_metrics) == set(figures)
        [stats] = (await ok(http, "GET", "/stats/"))["data"]
        assert stats["node"] == node and stats["connections.count"] == 1 and stats["subscriptions.count"] == 1
        assert stats["retained.count"] == 1 and stats["routes.count"] == 1 and stats["topics.count"] == 1
        node_stats = (await ok(http, "GET", f"/nodes/{node}/stats/"))["data"]
        assert {**node_stats, "node": node} == stats and "sessions.persistent.count" in node_stats


# -- banned --------------------------------------------------------------------------------------------------


async def test_banned_list_create_and_delete(tmp_path: Path) -> None:
    pytest.importorskip("ternmq.plugins.banned")
    banned = {"file": str(tmp_path / "banned.json")}
    async with (
        v3_broker(tmp_path, banned=banned) as (broker, http),
        connected(broker, "mqttjs_ab9069449e", 5) as client,
    ):
        empty = await ok(http, "GET", "/banned/", params={"_page": 1, "_limit": 10000})
        assert empty["data"] == [] and empty["meta"] == {"page": 1, "limit": 10000, "count": 0}
        until = int(time.time()) + 3600
        example = {
            "who": "mqttjs_ab9069449e",
            "as": "client_id",
            "reason": "banned the clientId",
            "desc": "normal banned",
            "until": until,
        }
        assert (await ok(http, "POST", "/banned/", json=example))["data"] == example
        assert (await client.closed()).reason_code == 0x98  # kicked at once
        async with MQTTTestClient.open(broker.port()) as again:
            assert (await again.connect("mqttjs_ab9069449e")).reason_code == 0x8A
        await ok(http, "POST", "/banned", json={"who": "troll", "as": "username", "by": "moderator"})
        listed = await ok(http, "GET", "/banned")
        assert listed["meta"]["count"] == 2
        first, second = listed["data"]
        assert (first["who"], first["as"], first["reason"], first["until"]) == (
            "mqttjs_ab9069449e",
            "client_id",
            "banned the clientId",
            until,
        )
        assert (second["as"], second["by"], second["until"]) == ("username", "moderator", "undefined")
        assert (await ok(http, "GET", "/banned", params={"_page": 2, "_limit": 1}))["data"] == [second]
        await refused(http, "POST", "/banned", 107, json={"who": "x"})
        await refused(http, "POST", "/banned", 107, json={"as": "client_id"})
        assert "client_id" in await refused(http, "POST", "/banned", 108, json={"who": "x", "as": "face"})
        await refused(http, "POST", "/banned", 108, json={"who": "x", "as": "client_id", "until": "tomorrow"})
        await refused(http, "POST", "/banned", 108, json={"who": "x", "as": "client_id", "until": 1})  # past
        await refused(http, "POST", "/banned", 108, json={"who": "not-an-ip", "as": "ip_address"})
        await refused(http, "POST", "/banned", 102, json=example)  # banned already
        await refused(http, "DELETE", "/banned/mqttjs_ab9069449e", 107)
        await refused(http, "DELETE", "/banned/mqttjs_ab9069449e", 108, params={"as": "face"})
        assert await ok(http, "DELETE", "/banned/mqttjs_ab9069449e", params={"as": "client_id"}) == {"code": 0}
        async with MQTTTestClient.open(broker.port()) as welcome:
            assert (await welcome.connect("mqttjs_ab9069449e")).reason_code == 0
        await ok(http, "DELETE", "/banned/mqttjs_ab9069449e", params={"as": "client_id"})  # gone already: alike
        await ok(http, "DELETE", "/banned/troll", json={"as": "username"})  # `as` from the body, too
        # ternmq's spellings of the kinds are taken too; the list shows EMQX 3's
        await ok(http, "POST", "/banned", json={"who": "10.1.2.3", "as": "peerhost"})
        assert [(b["who"], b["as"]) for b in (await ok(http, "GET", "/banned"))["data"]] == [("10.1.2.3", "ip_address")]
        await ok(http, "DELETE", "/banned/10.1.2.3", params={"as": "ip_address"})
        assert (await ok(http, "GET", "/banned"))["data"] == []


async def test_banned_without_its_plugin_says_so(tmp_path: Path) -> None:
    async with v3_broker(tmp_path) as (broker, http):
        assert "banned" not in broker.plugins.loaded
        assert "not loaded" in await refused(http, "GET", "/banned", 102)
        assert "not loaded" in await refused(http, "POST", "/banned", 102, json={"who": "x", "as": "client_id"})
        assert "not loaded" in await refused(http, "DELETE", "/banned/x", 102, params={"as": "client_id"})
