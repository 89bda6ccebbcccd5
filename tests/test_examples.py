"""The example configurations start as written (with ``--port 0``); examples/third_party.toml
also from another working directory (its users file is relative to its own folder);
production.toml parses and starts once its certificate paths point at real files
(trustme) in a modified copy.

The examples that use the json_auth plugin get examples/third_party pip-installed into a
folder of its own, on the broker's PYTHONPATH: the test run installs nothing into this
environment.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from ternmq.kernel.testing import MQTTTestClient
from ternmq.kernel.values.config import load_config

from helpers import plugin_samples

helpers = plugin_samples()
REPO: Path = helpers.REPO
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def json_auth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder examples/third_party is installed into (brokers of a test that asks
    for this fixture get it on their PYTHONPATH)."""
    site: Path = helpers.json_auth_site(tmp_path_factory)
    return site


def start(
    runtime_dir: Path, config: Path | str, listeners: int = 1, *, cwd: Path = REPO, pythonpath: tuple[Path, ...] = ()
) -> Any:
    env = helpers.subprocess_env(runtime_dir, pythonpath=pythonpath)
    process = helpers.BrokerProcess(["--config", str(config), "--port", "0"], env=env, cwd=cwd, listeners=listeners)
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    return process


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """XDG_RUNTIME_DIR of the brokers: the examples use the default control socket."""
    with helpers.short_dir() as path:
        yield path


@pytest.fixture
def broker_process(runtime_dir: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    started: list[Any] = []
    # A test that asks for json_auth runs brokers that can import it.
    pythonpath = (request.getfixturevalue("json_auth"),) if "json_auth" in request.fixturenames else ()

    def factory(config: Path | str, listeners: int = 1, cwd: Path = REPO) -> Any:
        process = start(runtime_dir, config, listeners, cwd=cwd, pythonpath=pythonpath)
        started.append(process)
        return process

    yield factory
    for process in started:
        process.stop()


async def connack(
    port: int, client_id: str, username: str | None = None, password: bytes | None = None, protocol_level: int = 5
) -> int:
    async with MQTTTestClient.open(port, protocol_level) as client:
        return (await client.connect(client_id, username=username, password=password)).reason_code


async def test_minimal_toml_starts_and_takes_anonymous_clients_with_retained_messages(
    broker_process: Any, runtime_dir: Path
) -> None:
    process = broker_process("examples/minimal.toml")
    assert list(process.ports) == ["default"]
    port = process.port
    async with MQTTTestClient.open(port) as client:
        assert (await client.connect("dev-client")).reason_code == 0
        await client.publish("dev/state", b"on", qos=1, retain=True)
    async with MQTTTestClient.open(port, 4) as late:
        assert (await late.connect("late")).reason_code == 0
        await late.subscribe("dev/#")
        message = await late.receive()
        assert (message.topic, message.payload, message.retain) == ("dev/state", b"on", True)
    socket = runtime_dir / f"ternmq-{os.getuid()}" / "dev@127.0.0.1.sock"
    assert socket.exists()  # node_name "dev@127.0.0.1" names the control socket


@pytest.mark.parametrize("where", ["repository", "elsewhere"])
async def test_third_party_toml_lets_alice_in_and_refuses_bob(
    broker_process: Any, json_auth: Path, runtime_dir: Path, where: str
) -> None:
    # Started from another folder, the relative users_file is still examples/users.json.
    if where == "repository":
        process = broker_process("examples/third_party.toml")
    else:
        process = broker_process(EXAMPLES / "third_party.toml", cwd=runtime_dir)
    port = process.port
    assert await connack(port, "a", "alice", b"secret") == 0
    assert await connack(port, "a4", "alice", b"secret", protocol_level=4) == 0
    assert await connack(port, "b", "bob", b"secret") == 0x86
    assert await connack(port, "b2", "alice", b"guess") == 0x86
    assert await connack(port, "anon") == 0x86
    assert await helpers.v311_connack_return_code(port, "b3", "bob", b"secret") == 5


def test_production_toml_parses() -> None:
    config = load_config(EXAMPLES / "production.toml")
    assert config.broker.allow_anonymous is False
    assert config.broker.node_name == "mqtt1@broker.example.com"
    assert config.broker.limits.max_packet_size == 262144
    assert [(listener.name, listener.type, listener.port) for listener in config.listeners] == [
        ("local", "tcp", 1883),
        ("tls", "tls", 8883),
        ("wss", "wss", 8084),
    ]
    assert [(p.name, p.enabled) for p in config.plugins] == [("retainer", True), ("json_auth", True)]
    json_auth = config.plugins[1].settings
    assert (json_auth["on_error"], json_auth["breaker_threshold"], json_auth["breaker_cooldown"]) == ("deny", 20, 10.0)


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Any]:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    paths = {
        "server.pem": tmp_path / "server.pem",
        "server.key": tmp_path / "server.key",
        "ca.pem": tmp_path / "ca.pem",
    }
    server.cert_chain_pems[0].write_to_path(str(paths["server.pem"]))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(str(paths["server.pem"]), append=True)
    server.private_key_pem.write_to_path(str(paths["server.key"]))
    ca.cert_pem.write_to_path(str(paths["ca.pem"]))
    return {"ca": ca, "paths": paths}


async def test_production_toml_starts_with_real_certificate_files(
    broker_process: Any, json_auth: None, tmp_path: Path, certificates: dict[str, Any]
) -> None:
    text = (EXAMPLES / "production.toml").read_text()
    for name, path in certificates["paths"].items():
        assert f"/etc/ternmq/{name}" in text
        text = text.replace(f'"/etc/ternmq/{name}"', f'"{path}"')
    users = tmp_path / "users.json"
    users.write_text('{"alice": "secret"}')
    text = text.replace('"/etc/ternmq/users.json"', f'"{users}"')
    # Fixed ports may be taken on a test machine: the TLS and WSS listeners get any free
    # port (the first listener's is --port 0).
    assert "port = 8883" in text and "port = 8084" in text
    text = text.replace("port = 8883", "port = 0").replace("port = 8084", "port = 0")
    assert "/etc/ternmq" not in text
    copy = tmp_path / "production.toml"
    copy.write_text(text)

    process = broker_process(copy, listeners=3)
    assert set(process.ports) == {"local", "tls", "wss"}
    assert await connack(process.ports["local"], "alice-tcp", "alice", b"secret") == 0
    assert await connack(process.ports["local"], "anon") == 0x86
    context = ssl.create_default_context()
    certificates["ca"].configure_trust(context)
    tcp = await trio.open_tcp_stream("127.0.0.1", process.ports["tls"])
    tls = trio.SSLStream(tcp, context, server_hostname="localhost")
    client = MQTTTestClient(tls, 5)
    try:
        assert (await client.connect("alice-tls", username="alice", password=b"secret")).reason_code == 0
        assert client.stream.getpeercert()["subjectAltName"]  # a verified server certificate
        # What the example's comment promises: an authenticated user publishes and
        # subscribes (no_match = "allow"; no authorization plugin is configured).
        suback = await client.subscribe("plant/#", qos=1)
        assert suback.reason_codes == [1]
        async with MQTTTestClient.open(process.ports["local"], 4) as local:
            assert (await local.connect("alice-tcp", username="alice", password=b"secret")).reason_code == 0
            puback = await local.publish("plant/line1/temp", b"21.5", qos=1)
            assert puback.reason_code == 0
        message = await client.receive()
        assert (message.topic, message.payload) == ("plant/line1/temp", b"21.5")
    finally:
        await trio.aclose_forcefully(tls)
