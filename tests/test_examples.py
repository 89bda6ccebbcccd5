"""The example configurations start as written (with ``--port 0``); examples/third_party.toml
also from another working directory (its users file is relative to its own folder);
production.toml parses, and starts once its certificate paths point at real files
(trustme) in a modified copy next to copies of examples/passwd and examples/acl.conf:
its documented users log in, wrong passwords and unknown users are refused, and topics
are granted and refused as the ACL file says.

The examples that use the json_auth plugin get examples/third_party pip-installed into a
folder of its own, on the broker's PYTHONPATH: the test run installs nothing into this
environment.
"""

from __future__ import annotations

import os
import re
import shutil
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
    assert config.broker.no_match == "deny"
    assert config.broker.node_name == "mqtt1@broker.example.com"
    assert config.broker.limits.max_packet_size == 262144
    assert [(listener.name, listener.type, listener.port) for listener in config.listeners] == [
        ("local", "tcp", 1883),
        ("tls", "tls", 8883),
        ("wss", "wss", 8084),
    ]
    assert [(p.name, p.enabled) for p in config.plugins] == [("retainer", True), ("passwd", True), ("acl", True)]
    passwd, acl = config.plugins[1].settings, config.plugins[2].settings
    assert passwd["password_file"] == "passwd" and acl["acl_file"] == "acl.conf"
    assert acl["on_no_rule"] == "deny"
    # Relative to the configuration file's folder: the files the example ships.
    assert (EXAMPLES / passwd["password_file"]).is_file()
    assert (EXAMPLES / acl["acl_file"]).is_file()


def documented_users() -> dict[str, str]:
    """The example users and passwords production.toml's header comment names."""
    lines = (EXAMPLES / "production.toml").read_text().splitlines()
    comment = " ".join(line.lstrip("# ") for line in lines if line.startswith("#"))
    return dict(re.findall(r"([\w-]+) \(password ([\w-]+)\)", comment))


def test_production_example_users_are_documented_and_hashed() -> None:
    # The test below logs in with exactly these: the comment tells the truth.
    assert documented_users() == {"alice": "alice-secret", "sensor-17": "sensor-secret"}
    lines = (EXAMPLES / "passwd").read_text().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["alice", "sensor-17"]
    # ternmq-passwd's $7$ (PBKDF2-SHA512) lines, no password in plain text.
    assert all(line.split(":", 1)[1].startswith("$7$210000$") for line in lines)
    assert not any(password in "\n".join(lines) for password in documented_users().values())


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


@pytest.fixture
def production(broker_process: Any, tmp_path: Path, certificates: dict[str, Any]) -> Any:
    """examples/production.toml started from a copy in tmp_path: certificate paths point
    at generated files, the TLS and WSS ports are free ones (the first listener's is
    --port 0), data_dir is in tmp_path. examples/passwd and examples/acl.conf are copied
    next to it as they are, so the relative paths of the example are what is tested."""
    text = (EXAMPLES / "production.toml").read_text()
    for name, path in certificates["paths"].items():
        assert f"/etc/ternmq/{name}" in text
        text = text.replace(f'"/etc/ternmq/{name}"', f'"{path}"')
    assert 'data_dir = "/var/lib/ternmq"' in text
    text = text.replace('data_dir = "/var/lib/ternmq"', f'data_dir = "{tmp_path / "data"}"')
    # Fixed ports may be taken on a test machine.
    assert "port = 8883" in text and "port = 8084" in text
    text = text.replace("port = 8883", "port = 0").replace("port = 8084", "port = 0")
    assert 'password_file = "passwd"' in text and 'acl_file = "acl.conf"' in text
    assert "/etc/ternmq/" not in text.replace("ternmq-passwd -c /etc/ternmq/passwd", "")
    copy = tmp_path / "production.toml"
    copy.write_text(text)
    shutil.copyfile(EXAMPLES / "passwd", tmp_path / "passwd")
    shutil.copyfile(EXAMPLES / "acl.conf", tmp_path / "acl.conf")
    # Started from another folder: the plugins find their files next to the config.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    process = broker_process(copy, listeners=3, cwd=elsewhere)
    assert set(process.ports) == {"local", "tls", "wss"}
    return process


async def test_production_toml_starts_with_real_certificate_files(
    production: Any, certificates: dict[str, Any]
) -> None:
    context = ssl.create_default_context()
    certificates["ca"].configure_trust(context)
    tcp = await trio.open_tcp_stream("127.0.0.1", production.ports["tls"])
    tls = trio.SSLStream(tcp, context, server_hostname="localhost")
    client = MQTTTestClient(tls, 5)
    try:
        assert (await client.connect("alice-tls", username="alice", password=b"alice-secret")).reason_code == 0
        assert client.stream.getpeercert()["subjectAltName"]  # a verified server certificate
        suback = await client.subscribe("home/#", qos=1)
        assert suback.reason_codes == [1]
        async with MQTTTestClient.open(production.ports["local"], 4) as local:
            assert (await local.connect("alice-tcp", username="alice", password=b"alice-secret")).reason_code == 0
            puback = await local.publish("home/kitchen/light", b"on", qos=1)
            assert puback.reason_code == 0
        message = await client.receive()
        assert (message.topic, message.payload) == ("home/kitchen/light", b"on")
    finally:
        await trio.aclose_forcefully(tls)


async def test_production_toml_refuses_wrong_passwords_and_unknown_users(production: Any) -> None:
    port = production.ports["local"]
    assert await connack(port, "alice", "alice", b"alice-secret") == 0
    assert await connack(port, "sensor-17", "sensor-17", b"sensor-secret") == 0
    # A wrong password: MQTT 5 0x86 (bad user name or password), MQTT 3 return code 4.
    assert await connack(port, "a1", "alice", b"sensor-secret") == 0x86
    assert await helpers.v311_connack_return_code(port, "a2", "alice", b"wrong") == 4
    assert await connack(port, "s1", "sensor-17", b"alice-secret") == 0x86
    # A user the password file does not list, and no user at all: allow_anonymous = false.
    assert await connack(port, "m1", "mallory", b"alice-secret") == 0x86
    assert await helpers.v311_connack_return_code(port, "m2", "mallory", b"alice-secret") == 5
    assert await connack(port, "anon") == 0x86


async def test_production_toml_grants_what_the_acl_file_grants(production: Any) -> None:
    port = production.ports["local"]
    async with (
        MQTTTestClient.open(port) as alice,
        MQTTTestClient.open(port) as sensor,
        MQTTTestClient.open(port, 4) as alice_v3,
    ):
        assert (await alice.connect("alice", username="alice", password=b"alice-secret")).reason_code == 0
        assert (await sensor.connect("sensor-17", username="sensor-17", password=b"sensor-secret")).reason_code == 0
        # One SUBSCRIBE, an answer per filter: home/# and sensors/+/temp are granted;
        # sensors/# is refused (it could receive sensors/+/credentials, which a deny rule
        # matches), and office/# is in no rule (on_no_rule = "deny").
        suback = await alice.subscribe("home/#", "sensors/#", "sensors/+/temp", "office/#", qos=1)
        assert suback.reason_codes == [1, 0x87, 1, 0x87]
        # alice publishes where readwrite grants it and gets her own message back.
        assert (await alice.publish("home/kitchen", b"21.0", qos=1)).reason_code == 0
        message = await alice.receive()
        assert (message.topic, message.payload) == ("home/kitchen", b"21.0")
        # She may only read sensors/#: her publish there is refused and delivered to nobody.
        assert (await alice.publish("sensors/sensor-17/temp", b"-40", qos=1)).reason_code == 0x87
        # A device writes under its own user name (pattern write sensors/%u/#) ...
        assert (await sensor.publish("sensors/sensor-17/temp", b"19.5", qos=1)).reason_code == 0
        message = await alice.receive()
        assert (message.topic, message.payload) == ("sensors/sensor-17/temp", b"19.5")
        # ... not under another device's, and not outside sensors/.
        assert (await sensor.publish("sensors/other/temp", b"0", qos=1)).reason_code == 0x87
        assert (await sensor.publish("home/kitchen", b"0", qos=1)).reason_code == 0x87
        # It reads its commands (pattern read commands/%u/#), not another device's.
        suback = await sensor.subscribe("commands/sensor-17/#", "commands/other/#", qos=1)
        assert suback.reason_codes == [1, 0x87]
        assert (await alice.publish("commands/sensor-17/interval", b"60", qos=1)).reason_code == 0
        message = await sensor.receive()
        assert (message.topic, message.payload) == ("commands/sensor-17/interval", b"60")
        assert await alice.nothing_received()  # the refused publishes reached no one
        assert await sensor.nothing_received()
        # An MQTT 3.1.1 client gets 0x80 for a refused filter.
        assert (await alice_v3.connect("alice-3", username="alice", password=b"alice-secret")).reason_code == 0
        suback = await alice_v3.subscribe("home/#", "sensors/#", qos=1)
        assert suback.reason_codes == [1, 0x80]
