"""The management API plugin on a real hypercorn port, driven with httpx: the /api/v1
mapping of the admin tree, API keys, /metrics parsed back, /health, and loading and
unloading the plugin while MQTT clients carry on."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families

from ternmq.kernel import CommandError, ConfigError, Table, Text, allow, deny, hookimpl
from ternmq.kernel.broker import Broker
from ternmq.kernel.testing import open_broker, registered, serving, test_config

from helpers import StoreThatCannotCommit, connected, eventually

API = "api"


def api_config(tmp_path: Path, **table: Any) -> Any:
    settings = {"port": 0, "keys_file": str(tmp_path / "api_keys.json"), **table}
    return test_config(plugins={"retainer": {}, API: settings})


def plugin_of(broker: Broker) -> Any:
    return broker.plugins.loaded[API].plugin


def base_url(broker: Broker) -> str:
    return f"http://127.0.0.1:{plugin_of(broker).port}"


@asynccontextmanager
async def api_broker(tmp_path: Path, **table: Any) -> AsyncIterator[tuple[Broker, httpx.AsyncClient, str]]:
    """A broker with the API, an HTTP client for it and a key of scope mgmt."""
    async with open_broker(api_config(tmp_path, **table)) as broker:
        key = await broker.service.run_command(["api-key", "create"])
        assert isinstance(key, Text)
        async with httpx.AsyncClient(base_url=base_url(broker), timeout=10) as http:
            yield broker, http, key.text


def with_key(key: str) -> dict[str, str]:
    return {"x-api-key": key}


# -- /api/v1: the admin tree over HTTP ----------------------------------------------------


async def test_session_show_as_vernemq_documents_it(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key), connected(broker, "myclient", 4, username="u"):
        reply = await http.get("/api/v1/session/show", headers=with_key(key))
        assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
        body = reply.json()
        assert body["type"] == "table"
        [row] = body["table"]
        assert set(row) == {"client_id", "is_online", "mountpoint", "peer_host", "peer_port", "user"}
        assert (row["client_id"], row["is_online"], row["user"], row["mountpoint"]) == ("myclient", True, "u", "")
        columns = await http.get("/api/v1/session/show?--client_id&--protocol", headers=with_key(key))
        assert columns.json()["table"] == [{"client_id": "myclient", "protocol": 4}]


async def test_session_disconnect_with_cleanup(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        async with connected(broker, "myclient", 5, clean_start=False) as client:
            reply = await http.get("/api/v1/session/disconnect?client-id=myclient&--cleanup", headers=with_key(key))
            assert reply.json() == {"type": "text", "text": "Done"}
            assert (await client.closed()).reason_code == 0x98  # administrative action
        await eventually(lambda: "myclient" not in broker.sessions)


async def test_listener_and_plugin_show(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        listeners = (await http.get("/api/v1/listener/show", headers=with_key(key))).json()
        assert listeners["table"][0]["name"] == "test" and listeners["table"][0]["status"] == "running"
        plugins = (await http.get("/api/v1/plugin/show", headers=with_key(key))).json()
        assert {row["Plugin"] for row in plugins["table"]} >= {"retainer", "api"}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/v1/no/such/command", "unknown command"),
        ("/api/v1/session/show?--nonsense", "unknown session item"),
        ("/api/v1/plugin/disable", "missing argument name="),
        ("/api/v1/session/disconnect?client-id=nobody", "no session"),
    ],
)
async def test_bad_commands_are_400_with_a_json_body(tmp_path: Path, path: str, message: str) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        reply = await http.get(path, headers=with_key(key))
    assert reply.status_code == 400
    body = reply.json()
    assert body["type"] == "error" and message in body["error"]


async def test_other_paths_and_methods_are_json_errors(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        missing = await http.get("/nothing/here", headers=with_key(key))
        assert missing.status_code == 404 and missing.json()["type"] == "error"
        posted = await http.post("/api/v1/session/show", headers=with_key(key))
        assert posted.status_code == 405 and posted.json()["type"] == "error"


# -- API keys ---------------------------------------------------------------------------------


async def test_a_key_is_needed_and_checked(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        for headers in ({}, with_key("wrong"), {"authorization": "Bearer " + key}):
            reply = await http.get("/api/v1/session/show", headers=headers)
            assert reply.status_code == 401, headers
            assert reply.headers["www-authenticate"].startswith("Basic")
            assert reply.json()["type"] == "error"
        basic = await http.get("/api/v1/session/show", auth=(key, ""))
        assert basic.status_code == 200
        metrics_key = await broker.service.run_command(["api-key", "create", "scope=metrics"])
        assert isinstance(metrics_key, Text)
        wrong_scope = await http.get("/api/v1/session/show", headers=with_key(metrics_key.text))
        assert wrong_scope.status_code == 401


async def test_an_expired_key_is_refused(tmp_path: Path) -> None:
    keys_file = tmp_path / "api_keys.json"
    keys_file.write_text(json.dumps([{"key": "old-key", "scope": "mgmt", "expires_at": time.time() - 1}]))
    async with api_broker(tmp_path) as (broker, http, _):
        assert (await http.get("/api/v1/session/show", headers=with_key("old-key"))).status_code == 401
        shown = await broker.service.run_command(["api-key", "show"])
        assert isinstance(shown, Table)
        assert [row["Scope"] for row in shown.rows if row["Key"] == "old-key"] == ["mgmt"]


async def test_api_key_commands_and_the_keys_file(tmp_path: Path) -> None:
    run = None
    async with api_broker(tmp_path, min_apikey_length=8) as (broker, http, created):
        run = broker.service.run_command
        assert await run(["api-key", "add", "key=chosen-key", "scope=status", "expires=2999-01-01T00:00:00"]) == Text(
            "Done"
        )
        with pytest.raises(CommandError, match="shorter than min_apikey_length"):
            await run(["api-key", "add", "key=short"])
        with pytest.raises(CommandError, match="already in scope status"):
            await run(["api-key", "add", "key=chosen-key", "scope=status"])
        with pytest.raises(CommandError, match="unknown scope"):
            await run(["api-key", "create", "scope=everything"])
        with pytest.raises(CommandError, match="in the past"):
            await run(["api-key", "create", "expires=2001-01-01T00:00:00"])
        shown = await run(["api-key", "show"])
        assert isinstance(shown, Table)
        assert {tuple(row.values()) for row in shown.rows} == {
            (created, "mgmt", "never", False),
            ("chosen-key", "status", "2999-01-01 00:00:00", False),
        }
        assert shown.columns == ("Key", "Scope", "Expires (UTC)", "has expired")
        only_status = await run(["api-key", "show", "scope=status"])
        assert isinstance(only_status, Table) and [row["Key"] for row in only_status.rows] == ["chosen-key"]
        with pytest.raises(CommandError, match="no such key"):  # VerneMQ's default scope: mgmt
            await run(["api-key", "delete", "key=chosen-key"])
        assert await run(["api-key", "delete", "key=chosen-key", "scope=status"]) == Text("Done")
    keys_file = tmp_path / "api_keys.json"
    assert os.stat(keys_file).st_mode & 0o777 == 0o600
    assert [entry["key"] for entry in json.loads(keys_file.read_text())] == [created]
    async with api_broker(tmp_path) as (broker, http, _):  # the key survives the restart
        assert (await http.get("/api/v1/session/show", headers=with_key(created))).status_code == 200


async def test_max_apikey_expiry_days_bounds_new_keys(tmp_path: Path) -> None:
    async with open_broker(api_config(tmp_path, max_apikey_expiry_days=30)) as broker:
        with pytest.raises(CommandError, match="expires is needed"):
            await broker.service.run_command(["api-key", "create"])
        with pytest.raises(CommandError, match="more than max_apikey_expiry_days"):
            await broker.service.run_command(["api-key", "create", "expires=2999-01-01T00:00:00"])


async def test_noauth_mode_opens_a_module(tmp_path: Path) -> None:
    async with api_broker(tmp_path, auth={"mgmt": "noauth", "metrics": "apikey"}) as (broker, http, key):
        assert (await http.get("/api/v1/listener/show")).status_code == 200
        assert (await http.get("/metrics")).status_code == 401


# -- /metrics and /health ---------------------------------------------------------------------------


async def test_metrics_in_prometheus_text_format(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        async with connected(broker, "m", 5) as client:
            await client.subscribe("m/#", qos=1)
            await client.publish("m/1", b"x", qos=1)
            await client.receive()
            reply = await http.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(reply.text)}
    node = broker.node_name
    accepted = families["ternmq_connections_accepted"]
    assert accepted.type == "counter"
    [sample] = accepted.samples
    assert sample.labels == {"node": node} and sample.value >= 1
    assert families["ternmq_clients_online"].samples[0].value == 1
    assert families["ternmq_sessions_offline"].samples[0].value == 0
    assert families["ternmq_retained_messages"].type == "gauge"
    # packets and their bytes, in and out, by type
    by_type = {
        (name, sample.labels["type"]): sample.value
        for name in ("packets_received", "packets_sent", "packet_bytes_received", "packet_bytes_sent")
        for sample in families[f"ternmq_{name}"].samples
    }
    assert by_type["packets_received", "PUBLISH"] == 1 and by_type["packets_sent", "PUBLISH"] == 1
    assert by_type["packet_bytes_received", "PUBLISH"] == by_type["packet_bytes_sent", "PUBLISH"] == 11
    assert by_type["packet_bytes_sent", "SUBACK"] == 6  # v5: header 2, packet id 2, properties 1, one code


async def test_health(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        assert (await http.get("/health")).json() == {"status": "OK"}
        assert (await http.get("/health/ping")).json() == {"status": "OK"}
        assert (await http.get("/health/listeners")).json() == {"status": "OK"}
        await broker.service.run_command(["listener", "stop", "name=test"])
        down = await http.get("/health")
        assert down.status_code == 503
        assert down.json() == {"status": "DOWN", "reasons": ["listener test is not running"]}
        listeners = await http.get("/health/listeners")
        assert listeners.status_code == 503 and "test" in listeners.json()["reason"]


# -- loading and unloading -----------------------------------------------------------------------


async def test_disable_over_http_answers_then_closes_the_port_while_mqtt_goes_on(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key), connected(broker, "sub", 5) as subscriber:
        await subscriber.subscribe("t", qos=1)
        reply = await http.get("/api/v1/plugin/disable?--name=api", headers=with_key(key))
        assert reply.json() == {"type": "text", "text": "Done"}
        await eventually(lambda: API not in broker.plugins.loaded)
        with pytest.raises(httpx.ConnectError):
            await http.get("/health/ping")
        await broker.service.publish("t", b"still here", qos=1)
        assert (await subscriber.receive()).payload == b"still here"
        await broker.service.run_command(["plugin", "enable", "name=api", "--config=port=0"])
        async with httpx.AsyncClient(base_url=base_url(broker), timeout=10) as again:
            assert (await again.get("/health/ping")).status_code == 200


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"auth": {"everything": "noauth"}}, "unknown scope 'everything'"),
        ({"auth": {"mgmt": "open"}}, "must be 'apikey' or 'noauth'"),
        ({"port": 70000}, "between 0 and 65535"),
        ({"certfile": "cert.pem"}, "certfile and keyfile go together"),
        ({"prometheus_namespace": "9lives"}, "prometheus_namespace"),
    ],
)
async def test_bad_configuration_names_table_and_key(tmp_path: Path, table: dict[str, Any], message: str) -> None:
    with pytest.raises(ExceptionGroup) as caught:
        async with open_broker(api_config(tmp_path, **table)):
            pass
    assert caught.group_contains(ConfigError, match=rf"\[plugins\.api\].*{message}", depth=2)


async def test_vernemq_examples_cluster_show_and_netsplit_settings(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        cluster = (await http.get("/api/v1/cluster/show", headers=with_key(key))).json()
        assert cluster == {"type": "table", "table": [{"Node": broker.node_name, "Running": True}]}
        done = await http.get("/api/v1/set?allow_publish_during_netsplit=on", headers=with_key(key))
        assert done.json() == {"type": "text", "text": "Done"}
        shown = (await http.get("/api/v1/show?--allow_publish_during_netsplit", headers=with_key(key))).json()
        assert shown["table"][0]["allow_publish_during_netsplit"] == "on"
        refused = await http.get("/api/v1/set?allow_publish_during_netsplit=maybe", headers=with_key(key))
        assert refused.status_code == 400 and "on or off" in refused.json()["error"]


async def test_https_with_a_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    table = {"certfile": str(tmp_path / "cert.pem"), "keyfile": str(tmp_path / "key.pem")}
    async with open_broker(api_config(tmp_path, **table)) as broker:
        url = f"https://127.0.0.1:{plugin_of(broker).port}"
        async with httpx.AsyncClient(base_url=url, verify=context, timeout=10) as https:
            assert (await https.get("/health")).json() == {"status": "OK"}
        async with httpx.AsyncClient(base_url=url.replace("https", "http"), timeout=10) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get("/health")


# -- what requests, keys files and plugins must not be able to break ----------------------------------


@pytest.mark.parametrize("path", ["/api/v1/plugin/disable/--name=api", "/api/v1/plugin/disable?name=api"])
async def test_every_spelling_of_disabling_the_api_is_answered_first(tmp_path: Path, path: str) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        reply = await http.get(path, headers=with_key(key))
        assert reply.json() == {"type": "text", "text": "Done"}
        await eventually(lambda: API not in broker.plugins.loaded)
        await broker.service.run_command(["plugin", "enable", "name=api", "--config=port=0"])
        [info] = [p for p in broker.service.plugins() if p.name == API]
        assert info.state == "running"


async def test_reloading_the_api_over_http_keeps_it_serving(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        old = plugin_of(broker)
        assert (await http.get("/api/v1/plugin/reload/name=api", headers=with_key(key))).json()["text"] == "Done"
        await eventually(
            lambda: API in broker.plugins.loaded and plugin_of(broker) is not old and plugin_of(broker).port is not None
        )
        async with httpx.AsyncClient(base_url=base_url(broker), timeout=10) as again:
            assert (await again.get("/api/v1/listener/show", headers=with_key(key))).status_code == 200


async def test_a_bad_self_command_is_a_400_before_anything_is_done(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        reply = await http.get("/api/v1/plugin/reload?name=api&bogus=1", headers=with_key(key))
        assert reply.status_code == 400 and "unknown argument bogus=" in reply.json()["error"]
        assert (await http.get("/health/ping")).status_code == 200


async def test_a_corrupt_keys_file_fails_the_first_load_and_a_reload_keeps_the_keys(tmp_path: Path) -> None:
    keys_file = tmp_path / "api_keys.json"
    keys_file.write_text('[{"key": "k1-key", "scope": "mgmt", "expires_at": "2030-01-01"}]')
    with pytest.raises(ExceptionGroup) as caught:
        async with open_broker(api_config(tmp_path)):
            pass
    assert caught.group_contains(Exception, match="not a list of API keys", depth=2)
    keys_file.unlink()
    async with api_broker(tmp_path) as (broker, http, key):
        keys_file.write_text("not json")
        with pytest.raises(CommandError, match="api_keys.json: not JSON"):  # the reload fails ...
            await broker.service.run_command(["plugin", "reload", "name=api"])
        # ... and the running API stays, with the keys it had
        async with httpx.AsyncClient(base_url=base_url(broker), timeout=10) as again:
            assert (await again.get("/api/v1/listener/show", headers=with_key(key))).status_code == 200


async def test_keys_that_cannot_come_back_the_same_are_refused(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        for bad in ("key=with:colon", "key=späße-key", "key=with space"):
            with pytest.raises(CommandError, match="printable ASCII"):
                await broker.service.run_command(["api-key", "add", bad])
        with pytest.raises(CommandError, match="past the year 9999|such as"):
            await broker.service.run_command(["api-key", "create", "expires=9999-12-31T23:59:59-01:00"])
        assert (await http.get("/api/v1/session/show", headers={"x-api-key": ""})).status_code == 401
        both = {"x-api-key": key, "authorization": "Bearer whatever"}
        assert (await http.get("/api/v1/session/show", headers=both)).status_code == 401


# -- API keys kept by a store plugin ----------------------------------------------------------


def store_config(tmp_path: Path, **table: Any) -> Any:
    """The SQLite store (first: plugins load in configuration order) and the API without
    a keys_file, in a data directory of the test's own (``tmp_path / "data"``)."""
    store = {"file": str(tmp_path / "t.db")}
    config = test_config(plugins={"sqlite_store": store, API: {"port": 0, **table}})
    return attrs.evolve(config, broker=attrs.evolve(config.broker, data_dir=str(tmp_path / "data")))


def stored_records(db: Path, namespace: str) -> dict[str, bytes]:
    """The records of ``namespace`` in the store file, read by a connection of our own."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT key, value FROM records WHERE namespace = ?", (namespace,))
        return {key: bytes(value) for key, value in rows}


async def test_keys_kept_by_the_store_survive_a_restart_without_a_keys_file(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    async with open_broker(store_config(tmp_path)) as broker:
        run = broker.service.run_command
        created = await run(["api-key", "create"])
        assert isinstance(created, Text)
        # durable when the command answers: in the file, as another connection reads it
        [(record_key, value)] = stored_records(db, "api_keys").items()
        assert json.loads(value) == {"key": created.text, "scope": "mgmt", "expires_at": None}
        assert created.text not in record_key  # a record key may be logged: it is no secret
        assert await run(["api-key", "add", "key=status-key", "scope=status"]) == Text("Done")
        assert await run(["api-key", "add", "key=gone-key"]) == Text("Done")
        assert await run(["api-key", "delete", "key=gone-key"]) == Text("Done")
        assert sorted(json.loads(v)["key"] for v in stored_records(db, "api_keys").values()) == sorted(
            [created.text, "status-key"]
        )
    assert os.stat(db).st_mode & 0o777 == 0o600  # the keys' protection: the file is the owner's
    async with open_broker(store_config(tmp_path)) as broker:
        async with httpx.AsyncClient(base_url=base_url(broker), timeout=10) as http:
            assert (await http.get("/api/v1/session/show", headers=with_key(created.text))).status_code == 200
            assert (await http.get("/api/v1/session/show", auth=(created.text, ""))).status_code == 200
            assert (await http.get("/api/v1/session/show", headers=with_key("gone-key"))).status_code == 401
            assert (await http.get("/api/v1/session/show", headers=with_key("status-key"))).status_code == 401
        shown = await broker.service.run_command(["api-key", "show"])
        assert isinstance(shown, Table)
        assert {(row["Key"], row["Scope"]) for row in shown.rows} == {(created.text, "mgmt"), ("status-key", "status")}
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith("t.db")) == []


async def test_a_keys_file_set_is_used_even_with_a_store(tmp_path: Path) -> None:
    config = store_config(tmp_path, keys_file=str(tmp_path / "mine.json"))
    async with open_broker(config) as broker:
        created = await broker.service.run_command(["api-key", "create"])
        assert isinstance(created, Text)
    assert [entry["key"] for entry in json.loads((tmp_path / "mine.json").read_text())] == [created.text]
    assert stored_records(tmp_path / "t.db", "api_keys") == {}


async def test_a_keys_file_stays_when_the_store_fails_to_commit_its_import(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "api_keys.json").write_text(json.dumps([{"key": "file-key-123456", "scope": "mgmt"}]))
    config = test_config(plugins={API: {"port": 0}})
    broker = Broker(attrs.evolve(config, broker=attrs.evolve(config.broker, data_dir=str(data))))
    await broker.plugins.register("store", StoreThatCannotCommit())  # before the api plugin loads
    async with serving(broker):
        async with httpx.AsyncClient(base_url=base_url(broker), timeout=10) as http:
            assert (await http.get("/api/v1/session/show", headers=with_key("file-key-123456"))).status_code == 200
    assert (data / "api_keys.json").exists() and not (data / "api_keys.json.imported").exists()
    assert "the store failed to commit the API keys imported from it; the file stays" in caplog.text


async def test_a_keys_file_is_imported_into_the_store_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ternmq")
    db, data = tmp_path / "t.db", tmp_path / "data"
    no_store = test_config(plugins={API: {"port": 0}})
    async with open_broker(attrs.evolve(no_store, broker=attrs.evolve(no_store.broker, data_dir=str(data)))) as broker:
        old = await broker.service.run_command(["api-key", "create"])  # kept in data/api_keys.json, as before
        assert isinstance(old, Text)
    assert [entry["key"] for entry in json.loads((data / "api_keys.json").read_text())] == [old.text]
    async with open_broker(store_config(tmp_path)) as broker:
        async with httpx.AsyncClient(base_url=base_url(broker), timeout=10) as http:
            assert (await http.get("/api/v1/session/show", headers=with_key(old.text))).status_code == 200
    assert not (data / "api_keys.json").exists()
    assert os.stat(data / "api_keys.json.imported").st_mode & 0o777 == 0o600
    assert "1 API keys imported from" in caplog.text and "api_keys.json.imported" in caplog.text
    assert [json.loads(value)["key"] for value in stored_records(db, "api_keys").values()] == [old.text]
    # Once the store holds keys a file is not imported again, and a record that cannot
    # be used is logged with its namespace and key and skipped.
    (data / "api_keys.json").write_text(json.dumps([{"key": "late-key", "scope": "mgmt"}]))
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("INSERT INTO records VALUES ('api_keys', 'mgmt:broken', ?)", (b"{not json",))
        value = json.dumps({"key": "moved-key", "scope": "mgmt", "expires_at": None}).encode()
        connection.execute("INSERT INTO records VALUES ('api_keys', 'mgmt:not-its-key', ?)", (value,))
    caplog.clear()
    async with open_broker(store_config(tmp_path)) as broker:
        async with httpx.AsyncClient(base_url=base_url(broker), timeout=10) as http:
            assert (await http.get("/api/v1/session/show", headers=with_key(old.text))).status_code == 200
            for skipped in ("late-key", "moved-key"):
                assert (await http.get("/api/v1/session/show", headers=with_key(skipped))).status_code == 401
    assert (data / "api_keys.json").exists()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("'mgmt:broken'" in m and "api_keys" in m for m in errors), errors
    assert any("'mgmt:not-its-key'" in m and "api_keys" in m for m in errors), errors


async def test_a_key_change_the_store_fails_to_commit_is_an_error_and_stays_in_force(tmp_path: Path) -> None:
    config = test_config(plugins={API: {"port": 0}})
    broker = Broker(attrs.evolve(config, broker=attrs.evolve(config.broker, data_dir=str(tmp_path / "data"))))
    store = StoreThatCannotCommit()
    await broker.plugins.register("store", store)  # before the api plugin loads
    not_saved = "the change is in force, but the store has not saved it yet"
    async with serving(broker):
        run = broker.service.run_command
        with pytest.raises(CommandError, match=not_saved):  # not "Done"
            await run(["api-key", "add", "key=kept-key-123"])
        with pytest.raises(CommandError, match=r"a new key \(api-key show lists it\): " + not_saved):
            await run(["api-key", "create", "scope=status"])
        shown = await run(["api-key", "show"])
        assert isinstance(shown, Table) and {row["Scope"] for row in shown.rows} == {"mgmt", "status"}
        async with httpx.AsyncClient(base_url=base_url(broker), timeout=10) as http:
            assert (await http.get("/api/v1/session/show", headers=with_key("kept-key-123"))).status_code == 200
            reply = await http.get("/api/v1/api-key/delete?key=kept-key-123", headers=with_key("kept-key-123"))
            assert reply.status_code == 503 and not_saved in reply.json()["error"], reply.text
            # the deletion is in force, and handed to the store (which retries the commit)
            assert (await http.get("/api/v1/session/show", headers=with_key("kept-key-123"))).status_code == 401
    assert [json.loads(value)["scope"] for (space, _), value in store.records.items() if space == "api_keys"] == [
        "status"
    ]


def messages(exc: BaseException) -> list[str]:
    """The messages of an exception (group), its causes' too."""
    if isinstance(exc, BaseExceptionGroup):
        return [message for inner in exc.exceptions for message in messages(inner)]
    return [str(exc), *(messages(exc.__cause__) if exc.__cause__ is not None else [])]


async def test_a_bad_key_record_or_entry_names_its_field_never_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "t.db"
    async with open_broker(store_config(tmp_path)):
        pass  # the store's file, with its tables
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        for record_key, entry in (
            ("mgmt:a", {"key": "secret-key-one", "scope": "mgmt", "expires_at": "soon"}),
            ("mgmt:b", {"key": "secret-key-two", "scope": "everything"}),
            ("mgmt:c", {"key": "secret key three", "scope": "mgmt"}),
        ):
            connection.execute(
                "INSERT INTO records VALUES ('api_keys', ?, ?)", (record_key, json.dumps(entry).encode())
            )
    async with open_broker(store_config(tmp_path)) as broker:
        shown = await broker.service.run_command(["api-key", "show"])
        assert isinstance(shown, Table) and shown.rows == ()
    errors = {r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR}
    assert any("'mgmt:a'" in m and "expires_at" in m for m in errors), errors
    assert any("'mgmt:b'" in m and "scope" in m for m in errors), errors
    assert any("'mgmt:c'" in m and "bad key" in m for m in errors), errors
    assert "secret" not in caplog.text
    # A file to import with a bad entry fails the load, naming the file and the field.
    caplog.clear()
    other = tmp_path / "other"
    (other / "data").mkdir(parents=True)
    (other / "data" / "api_keys.json").write_text(json.dumps([{"key": "secret-key-four", "scope": "everything"}]))
    with pytest.raises(ExceptionGroup) as caught:
        async with open_broker(store_config(other)):
            pass
    told = messages(caught.value)
    assert any("api_keys.json" in m and "bad scope" in m for m in told), told
    assert not any("secret" in m for m in told) and "secret" not in caplog.text, told


async def test_a_keys_file_that_stays_is_not_imported_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db, data = tmp_path / "t.db", tmp_path / "data"
    data.mkdir()
    (data / "api_keys.json").write_text(json.dumps([{"key": "old-key-123456", "scope": "mgmt"}]))
    (data / "api_keys.json.imported").mkdir()  # in the way: the rename is refused and the file stays
    async with open_broker(store_config(tmp_path)) as broker:
        async with httpx.AsyncClient(base_url=base_url(broker), timeout=10) as http:
            assert (await http.get("/api/v1/session/show", headers=with_key("old-key-123456"))).status_code == 200
        assert await broker.service.run_command(["api-key", "delete", "key=old-key-123456"]) == Text("Done")
    assert (data / "api_keys.json").exists() and "cannot be renamed" in caplog.text
    assert stored_records(db, "api_keys") == {}
    async with open_broker(store_config(tmp_path)) as broker:  # the store holds no key now ...
        async with httpx.AsyncClient(base_url=base_url(broker), timeout=10) as http:
            # ... and the file, imported once, does not bring the deleted key back
            assert (await http.get("/api/v1/session/show", headers=with_key("old-key-123456"))).status_code == 401
    assert stored_records(db, "api_keys") == {}


class Broken:
    @hookimpl
    def register_admin_commands(self, registry: Any) -> None:
        registry.add("boom", self._boom, help="fails")

    @hookimpl
    def register_metrics(self, registry: Any) -> None:
        registry.gauge("sessions", lambda: 1, "a name the kernel has")
        registry.gauge("labelled", lambda: {("x",): 1}, "a node label", labels=("node",))
        registry.gauge("unreadable", lambda: "many", "not a number")
        registry.gauge("fine", lambda: 7, "a good one")

    def _boom(self, service: Any, args: Any) -> Any:
        raise RuntimeError("boom")


async def test_a_failing_command_is_a_json_500_and_bad_metrics_are_left_out(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key), registered(broker, Broken()):
        reply = await http.get("/api/v1/boom", headers=with_key(key))
        assert reply.status_code == 500 and reply.json()["type"] == "error"
        page = await http.get("/metrics")
    assert page.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(page.text)}
    assert [sample.value for sample in families["ternmq_sessions"].samples] == [0]  # the kernel's, once
    assert families["ternmq_labelled"].samples[0].labels == {"node": broker.node_name, "exported_node": "x"}
    assert "ternmq_unreadable" not in families
    assert families["ternmq_fine"].samples[0].value == 7


async def test_cors_preflight_aliases_and_empty_flag_values(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key), connected(broker, "c1", 4):
        preflight = await http.options("/api/v1/session/show")
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"
        sessions = (await http.get("/api/v1/sessions", headers=with_key(key))).json()
        assert [row["client_id"] for row in sessions["table"]] == ["c1"]
        filtered = (await http.get("/api/v1/session/show?--client_id=", headers=with_key(key))).json()
        assert filtered["table"] == []  # a filter on an empty client id, not a column


async def test_metrics_count_hook_calls_per_plugin(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        async with connected(broker, "r", 5) as client:
            await client.publish("kept", b"x", qos=1, retain=True)
        families = {f.name: f for f in text_string_to_metric_families((await http.get("/metrics")).text)}
    calls = {(s.labels["plugin"], s.labels["hook"]): s.value for s in families["ternmq_hook_calls"].samples}
    assert calls[("retainer", "retain_store")] == 1


# -- HTTP publish ------------------------------------------------------------------------------------


class OnlyAlice:
    """auth_on_register: alice with her password; auth_on_publish: not under secret/."""

    @hookimpl
    def auth_on_register(self, client: Any, password: bytes | None) -> Any:
        ok = client.username == "alice" and password == b"alice-secret"
        return allow() if ok else deny(0x86)

    @hookimpl
    def auth_on_publish(self, client: Any, message: Any) -> Any:
        return deny() if message.topic.startswith("secret/") else allow()


@asynccontextmanager
async def publishing(tmp_path: Path, **table: Any) -> AsyncIterator[tuple[Broker, httpx.AsyncClient, Any]]:
    async with api_broker(tmp_path, **table) as (broker, http, _):
        key = await broker.service.run_command(["api-key", "create", "scope=httppub"])
        assert isinstance(key, Text)
        http.headers["x-api-key"] = key.text
        async with connected(broker, "watcher", 5) as watcher, registered(broker, OnlyAlice()):
            await watcher.subscribe("#", qos=1)  # before OnlyAlice, which would refuse it
            yield broker, http, watcher


PUBLISH = "/restmqtt/api/v1/publish"


async def test_http_publish_in_the_three_styles_reaches_a_subscriber(tmp_path: Path) -> None:
    async with publishing(tmp_path) as (broker, http, watcher):
        body = {
            "topic": "a/json",
            "user": "alice",
            "password": "alice-secret",
            "client_id": "http-client",
            "qos": 1,
            "retain": False,
            "payload": "aGVsbG8=",
            "user_properties": [{"k1": "v1"}],
        }
        reply = await http.post(PUBLISH + "?encoding=base64", json=body)
        assert (reply.status_code, reply.text, reply.headers["content-type"]) == (200, "Published", "text/plain")
        message = await watcher.receive()
        assert (message.topic, message.payload, message.qos) == ("a/json", b"hello", 1)
        assert message.properties["user_property"] == [("k1", "v1")]
        headers = {"topic": "a/header", "user": "alice", "password": "alice-secret", "qos": "0", "retain": "true"}
        headers["content-type"] = "application/octet-stream"
        assert (await http.put(PUBLISH, content=b"\x00raw", headers=headers)).text == "Published"
        message = await watcher.receive()
        assert (message.topic, message.payload) == ("a/header", b"\x00raw")
        assert [m.topic for m in await broker.service.retained("a/#")] == ["a/header"]
        query = {"topic": "a/query", "user": "alice", "password": "alice-secret", "qos": "1"}
        assert (await http.post(PUBLISH, params=query, content=b"q")).text == "Published"
        assert (await watcher.receive()).topic == "a/query"


@pytest.mark.parametrize(
    ("params", "body", "headers", "status", "text"),
    [
        ({}, {"topic": "t", "user": "alice", "password": "wrong", "payload": "x"}, {}, 401, "Authentication failure."),
        (
            {},
            {"topic": "secret/x", "user": "alice", "password": "alice-secret", "payload": "x"},
            {},
            403,
            "Authorization failure.",
        ),
        (
            {},
            {"topic": "$SYS/x", "user": "alice", "password": "alice-secret", "payload": "x"},
            {},
            400,
            "Invalid topic",
        ),
        ({}, {"topic": "a/+", "user": "alice", "password": "alice-secret", "payload": "x"}, {}, 400, "Invalid topic"),
        ({}, {"topic": "t", "qos": 3, "payload": "x"}, {}, 400, "Invalid QoS value. Must be in range 0..2"),
        (
            {},
            {"topic": "t", "retain": "maybe", "payload": "x"},
            {},
            400,
            "Invalid retain flag. Must be in true or false",
        ),
        (
            {},
            {"topic": "t", "payload": "x", "user_properties": {"k": "v"}},
            {},
            400,
            "User properties need to be a key/value list (json encoded)",
        ),
        ({"topic": "t"}, None, {"topic": "t"}, 400, "Parameters found in header as well as url-encoded"),
        ({"encoding": "hex"}, {"topic": "t", "payload": "x"}, {}, 400, "Unknown payload encoding"),
        (
            {"other": "1"},
            {"topic": "t", "payload": "x"},
            {},
            400,
            "Only encoding plain or base64 allows. No more URL parameters supported.",
        ),
    ],
)
async def test_http_publish_refusals_as_vernemq_words_them(
    tmp_path: Path, params: dict[str, str], body: Any, headers: dict[str, str], status: int, text: str
) -> None:
    async with publishing(tmp_path) as (broker, http, watcher):
        content = json.dumps(body).encode() if body is not None else b"x"
        reply = await http.post(PUBLISH, params=params, content=content, headers=headers)
        assert (reply.status_code, reply.text) == (status, text)
        assert await watcher.nothing_received(0.05)


async def test_http_publish_not_json_too_large_and_without_a_key(tmp_path: Path) -> None:
    async with publishing(
        tmp_path, httppub_auth="predefined", httppub_user="alice", httppub_password="alice-secret"
    ) as (
        broker,
        http,
        watcher,
    ):
        assert (await http.post(PUBLISH, content=b"{not json")).text == "Content is not a valid json"
        huge = b"x" * (broker.settings.limits.max_packet_size + 1)
        reply = await http.post(PUBLISH, params={"topic": "t"}, content=huge)
        assert (reply.status_code, reply.text) == (413, "Payload too large.")
        # predefined credentials: the request's own are not asked for
        assert (await http.post(PUBLISH, json={"topic": "p", "payload": "x"})).text == "Published"
        assert (await watcher.receive()).topic == "p"
        del http.headers["x-api-key"]
        assert (await http.post(PUBLISH, json={"topic": "p", "payload": "x"})).status_code == 401
        metrics = broker.service.metrics()
        assert metrics["counter.http_publish_published"] == 1 and metrics["counter.http_publish_too_large"] == 1


# -- the status page ---------------------------------------------------------------------------------


async def test_status_json_in_vernemqs_shape(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key), connected(broker, "s1", 5) as client:
        await client.subscribe("s/#", qos=1)
        data = (await http.get("/status.json")).json()
    [entry] = data
    node = entry[broker.node_name]
    assert (node["num_online"], node["num_offline"], node["num_subscriptions"]) == (1, 0, 1)
    assert node["mystatus"] == [[{broker.node_name: True}]]
    assert node["listeners"][0]["name"] == "test" and node["listeners"][0]["status"] == "running"
    assert {p["name"] for p in node["plugins"]} >= {"retainer", "api"}


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
async def test_the_status_page_shows_the_node_in_headless_chromium(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key), connected(broker, "viewer", 4):
        url = f"{base_url(broker)}/status"
        argv = [
            str(CHROMIUM),
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ]
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    dom = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert f"{broker.node_name} (version" in dom
    assert "<td>clients online</td><td>1</td>" in dom
    assert "<td>test</td><td>tcp</td><td>running</td>" in dom
    assert "<td>retainer</td><td>running</td><td>0</td>" in dom
    assert '<p id="error"></p>' in dom  # the page could read status.json


# -- routes plugins add ------------------------------------------------------------------------------


class Greeter:
    @hookimpl
    def register_api_routes(self, routes: Any) -> None:
        routes.add("/greeting", self.greet, methods=("GET", "POST"), scope="status")
        routes.add("/admin-only", self.greet)  # scope mgmt: behind a key

    async def greet(self) -> Any:
        from quart import request

        name = request.args.get("name", "world")
        if request.method == "POST":
            name = (await request.get_json())["name"]
        return {"greeting": f"hello {name}"}


async def test_a_plugin_loaded_after_the_api_serves_its_routes_until_it_unloads(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        assert (await http.get("/greeting")).status_code == 404
        async with registered(broker, Greeter()):
            assert (await http.get("/greeting?name=ann")).json() == {"greeting": "hello ann"}
            assert (await http.post("/greeting", json={"name": "bob"})).json() == {"greeting": "hello bob"}
            assert (await http.get("/admin-only")).status_code == 401
            assert (await http.get("/admin-only", headers=with_key(key))).json() == {"greeting": "hello world"}
            assert (await http.delete("/greeting")).status_code == 404
        missing = await http.get("/greeting")
        assert missing.status_code == 404 and missing.json()["type"] == "error"


async def test_session_show_with_topic_lists_a_row_per_subscription(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key), connected(broker, "subber", 5) as client:
        await client.subscribe("a/#", qos=1)
        await client.subscribe("b", qos=2)
        reply = await http.get("/api/v1/session/show?--client_id&--topic&--qos", headers=with_key(key))
        rows = reply.json()["table"]
        assert sorted((row["client_id"], row["topic"], row["qos"]) for row in rows) == [
            ("subber", "a/#", 1),
            ("subber", "b", 2),
        ]
        only_b = await http.get("/api/v1/session/show?--client_id&--topic=b", headers=with_key(key))
        assert only_b.json()["table"] == [{"client_id": "subber", "topic": "b"}]


# -- VerneMQ's documented examples, as its users send them ----------------------------


async def test_every_documented_vernemq_example_works_as_written(tmp_path: Path) -> None:
    """VerneMQ's HTTP API page, example by example, with the key in the URL as the page
    shows it (``http://KEY@localhost:8888/api/v1/...``): what it answers there, we answer."""
    async with (
        api_broker(tmp_path) as (broker, _, key),
        connected(broker, "myclient", 5, username="client1", clean_start=False) as client,
        httpx.AsyncClient(base_url=base_url(broker).replace("://", f"://{key}@"), timeout=10) as http,
    ):
        await client.subscribe("sensors/#", qos=1)

        async def table(path: str) -> list[dict[str, Any]]:
            reply = await http.get(path)
            assert reply.status_code == 200, (path, reply.text)
            body = reply.json()
            assert body["type"] == "table", (path, body)
            return list(body["table"])

        [session] = await table("/api/v1/session/show")
        assert session == {
            "client_id": "myclient",
            "is_online": True,
            "mountpoint": "",
            "peer_host": "127.0.0.1",
            "peer_port": session["peer_port"],
            "user": "client1",
        }
        assert await table("/api/v1/cluster/show") == [{"Node": broker.node_name, "Running": True}]
        [listener] = await table("/api/v1/listener/show")
        vernemq_columns = {"type", "status", "address", "port", "mountpoint", "max_conns", "active_conns", "all_conns"}
        assert vernemq_columns <= set(listener) and listener["status"] == "running"
        plugins = await table("/api/v1/plugin/show")
        assert all({"Plugin", "Type", "Hook(s)", "M:F/A"} <= set(row) for row in plugins)
        assert (await http.get("/api/v1/set?allow_publish_during_netsplit=on")).json() == Text("Done").to_json()
        # the reference's examples and VerneMQ's short paths
        assert await table("/api/v1/session/show?--client_id&--topic") == [
            {"client_id": "myclient", "topic": "sensors/#"}
        ]
        metrics = (await http.get("/api/v1/metrics/show")).json()["text"].splitlines()
        assert "counter.connections_accepted = 1" in metrics and "gauge.clients_online = 1" in metrics
        assert await table("/api/v1/sessions") == await table("/api/v1/session/show")
        assert await table("/api/v1/cluster") == await table("/api/v1/cluster/show")
        assert [row["Plugin"] for row in await table("/api/v1/plugins")] == [row["Plugin"] for row in plugins]
        assert [row["port"] for row in await table("/api/v1/listeners")] == [listener["port"]]
        # as scripts and VerneMQ's own web UI send them
        assert await table("/api/v1/session/show?--is_online=true&--topic=sensors/%23&--limit=1") == [
            {"is_online": True, "topic": "sensors/#"}
        ]
        webui = "--client_id=myclient&--user&--is_online&--offline_messages&--online_messages&--mountpoint"
        [row] = await table(
            f"/api/v1/session/show?{webui}&--peer_host&--peer_port&--queue_started_at&--session_started_at"
        )
        assert (row["offline_messages"], row["online_messages"]) == (0, 0)
        assert time.time() - 60 < row["session_started_at"] <= row["queue_started_at"] + 1 < time.time() + 2
        joined = await http.get("/api/v1/cluster/join?discovery-node=NodeB@10.0.0.2")
        assert joined.status_code == 400 and "single node" in joined.json()["error"]
        done = await http.get("/api/v1/session/disconnect/?client-id=myclient&--cleanup")
        assert done.json() == Text("Done").to_json()
        assert (await client.closed()).reason_code == 0x98
        await eventually(lambda: "myclient" not in broker.sessions)


async def test_session_items_of_vernemq_for_an_offline_session(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        async with connected(broker, "sleeper", 5, clean_start=False) as client:
            await client.subscribe("news", qos=1)
        await eventually(lambda: not broker.sessions["sleeper"].connection)
        await broker.service.publish("news", b"one", qos=1)
        reply = await http.get(
            "/api/v1/session/show?--client_id&--is_offline&--offline_messages&--statename&--session_started_at",
            headers=with_key(key),
        )
        assert reply.json()["table"] == [
            {
                "client_id": "sleeper",
                "is_offline": True,
                "offline_messages": 1,
                "statename": "offline",
                "session_started_at": None,
            }
        ]
        unsubscribed = await http.get("/api/v1/session/unsubscribe?client-id=sleeper&topic=news", headers=with_key(key))
        assert unsubscribed.json() == Text("Done").to_json() and broker.service.subscriptions("sleeper") == ()
        unsubscribes: list[str] = []

        class Watcher:
            @hookimpl
            def on_unsubscribe(self, client: Any, topic_filters: Any) -> None:
                unsubscribes.append(client.client_id)

        async with registered(broker, Watcher()):
            again = await http.get("/api/v1/session/unsubscribe?client-id=sleeper&topic=news", headers=with_key(key))
        assert again.status_code == 400 and "no subscription" in again.json()["error"]
        assert unsubscribes == []  # refused before anything was done
        elsewhere = await http.get(
            "/api/v1/session/disconnect?client-id=sleeper&--mountpoint=m1", headers=with_key(key)
        )
        assert elsewhere.status_code == 400 and "mountpoint 'm1'" in elsewhere.json()["error"]


async def test_disconnect_clients_checks_every_id_before_it_disconnects_any(tmp_path: Path) -> None:
    async with (
        api_broker(tmp_path) as (broker, http, key),
        connected(broker, "a", 4) as a,
        connected(broker, "b", 5) as b,
    ):
        refused = await http.get("/api/v1/session/disconnect/clients?client-ids=a,nobody", headers=with_key(key))
        assert refused.status_code == 400 and "'nobody'" in refused.json()["error"]
        assert broker.sessions["a"].connection is not None
        done = await http.get("/api/v1/session/disconnect/clients?client-ids=a,b,b", headers=with_key(key))
        assert done.json() == Text("Done").to_json()
        await a.closed()  # MQTT 3.1.1: the socket closes, no DISCONNECT
        packets = []
        while (packet := await b.next_packet(5)) is not None:  # to the close
            packets.append(packet)
        assert [(type(p).__name__, p.reason_code) for p in packets] == [
            ("Disconnect", 0x98)
        ]  # b named twice, told once
        await eventually(lambda: "a" not in broker.sessions)  # a clean session ends with its client


async def test_listener_show_tls_and_mqtt_columns(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key):
        [row] = (await http.get("/api/v1/listener/show?--tls&--mqtt", headers=with_key(key))).json()["table"]
        assert (row["tls_version"], row["certfile"], row["require_certificate"]) == (None, None, False)
        assert row["allowed_protocol_versions"] == "3,4,5"
        [plain] = (await http.get("/api/v1/listener/show", headers=with_key(key))).json()["table"]
        assert "certfile" not in plain and "allowed_protocol_versions" not in plain


async def test_metrics_show_aggregates_filters_by_label_and_describes(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, key), connected(broker, "m", 5) as client:
        await client.publish("t", b"x", qos=1)
        run = broker.service.run_command
        summed = (await run(["metrics", "show"])).text.splitlines()
        by_type = [line for line in summed if line.startswith("counter.packets_received")]
        assert by_type == ["counter.packets_received = 2"]  # CONNECT and PUBLISH, summed
        apart = (await run(["metrics", "show", "--aggregate=false"])).text.splitlines()
        assert 'counter.packets_received{type="PUBLISH"} = 1' in apart
        publish_only = (await run(["metrics", "show", "--type=PUBLISH", "--aggregate=false"])).text.splitlines()
        assert publish_only == [  # none sent: nobody subscribed
            'counter.packet_bytes_received{type="PUBLISH"} = 9',
            'counter.packets_received{type="PUBLISH"} = 1',
        ]
        described = (await run(["metrics", "show", "--with-descriptions"])).text.splitlines()
        at = described.index("counter.packets_received = 2")
        assert described[at - 1] == "# MQTT packets received, by type"
        with pytest.raises(CommandError, match="unknown flag --colour"):
            await run(["metrics", "show", "--colour=red"])


async def test_vernemqs_api_v2_client_and_disconnect(tmp_path: Path) -> None:
    async with api_broker(tmp_path) as (broker, http, mgmt_key), connected(broker, "c1", 5) as client:
        await client.subscribe("a/+", qos=1)
        key = (await broker.service.run_command(["api-key", "create", "scope=api2"])).text
        refused = await http.get("/api/v2/client?client_id=c1", headers=with_key(mgmt_key))
        assert refused.status_code == 401  # a key of scope mgmt is not one of api2
        online = await http.get("/api/v2/client?client_id=c1&topics", headers=with_key(key))
        assert online.json() == {"status": "online", "topics": {"a/+": 1}}
        assert (await http.get("/api/v2/client?client_id=c2", headers=with_key(key))).json() == {"status": "unknown"}
        in_other_mountpoint = await http.get("/api/v2/client?client_id=c1&mountpoint=m", headers=with_key(key))
        assert in_other_mountpoint.json() == {"status": "unknown"}
        missing = await http.get("/api/v2/client", headers=with_key(key))
        assert missing.status_code == 400 and "client_id" in missing.json()["error"]
        assert (await http.get("/api/v2/disconnect?client_id=c2", headers=with_key(key))).json() == "unknown"
        assert (await http.head("/api/v2/disconnect?client_id=c1", headers=with_key(key))).status_code == 405
        assert (await http.get("/api/v2/disconnect?client_id=c1", headers=with_key(key))).json() == "ok"
        assert (await client.closed()).reason_code == 0x98
        await eventually(lambda: broker.sessions.get("c1") is None or broker.sessions["c1"].connection is None)
