"""Transports end to end: TCP, TLS (server and client certificates), WebSocket (ws, wss).

Certificates come from ``trustme`` (a throwaway CA per test module, written to files);
clients are paho-mqtt (TCP, TLS, websockets), mosquitto_pub/mosquitto_sub (TLS), raw
``trio_websocket`` connections and our own MQTTTestClient over any of those streams.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import paho.mqtt.client as paho
import pytest
import trio
import trio_websocket
import trustme

from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Connack, Connect, Publish, encode
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.testing import MQTTTestClient, open_broker, registered, test_config
from ternmq.kernel.transport.listeners import WebSocketStream
from ternmq.kernel.values.config import ConfigError, ListenerConfig
from ternmq.kernel.values.types import ClientInfo

from helpers import eventually, session_rows


@attrs.frozen
class Certs:
    ca: trustme.CA
    cafile: str
    certfile: str  # the server's certificate chain, for 127.0.0.1 and localhost
    keyfile: str
    client_cert: trustme.LeafCert  # CN "sensor-42", issued by ca
    client_certfile: str
    client_keyfile: str
    stranger_certfile: str  # CN "mallory", issued by a CA the broker does not trust
    stranger_keyfile: str


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("sensor-42.example", common_name="sensor-42")
    stranger = trustme.CA().issue_cert("mallory.example", common_name="mallory")

    def write(name: str, blob: Any) -> str:
        path = directory / name
        blob.write_to_path(str(path))
        return str(path)

    cert_chain = directory / "server.pem"
    cert_chain.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    return Certs(
        ca=ca,
        cafile=write("ca.pem", ca.cert_pem),
        certfile=str(cert_chain),
        keyfile=write("server.key", server.private_key_pem),
        client_cert=client,
        client_certfile=write("client.pem", client.cert_chain_pems[0]),
        client_keyfile=write("client.key", client.private_key_pem),
        stranger_certfile=write("mallory.pem", stranger.cert_chain_pems[0]),
        stranger_keyfile=write("mallory.key", stranger.private_key_pem),
    )


def tls_listener(certs: Certs, name: str = "tls", type: str = "tls", **kwargs: Any) -> ListenerConfig:
    return ListenerConfig(name=name, type=type, port=0, certfile=certs.certfile, keyfile=certs.keyfile, **kwargs)


def client_context(certs: Certs, *, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context()
    certs.ca.configure_trust(context)
    if client_cert:
        certs.client_cert.configure_cert(context)
    return context


@asynccontextmanager
async def tls_client(port: int, context: ssl.SSLContext, level: int = 5) -> AsyncIterator[MQTTTestClient]:
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
    try:
        yield MQTTTestClient(stream, level)
    finally:
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def raw_websocket(url: str, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Any]:
    """A client WebSocket proposing the "mqtt" subprotocol."""
    async with trio_websocket.open_websocket_url(url, ssl_context, subprotocols=["mqtt"]) as websocket:
        try:
            yield websocket
        finally:
            if websocket.closed is not None:
                # trio-websocket 0.12's aclose() returns early after an abnormal closure
                # (the broker just closing TCP) and leaves the client's socket open.
                await trio.aclose_forcefully(websocket._stream)


@asynccontextmanager
async def ws_client(url: str, level: int = 5) -> AsyncIterator[MQTTTestClient]:
    """An MQTTTestClient speaking over a raw WebSocket (binary frames)."""
    async with raw_websocket(url) as websocket:
        yield MQTTTestClient(WebSocketStream(websocket), level)


class Registrations:
    """Records the ClientInfo of every auth_on_register and on_register."""

    def __init__(self) -> None:
        self.auth: list[ClientInfo] = []
        self.registered: list[ClientInfo] = []

    @hookimpl
    def auth_on_register(self, client: ClientInfo) -> None:
        self.auth.append(client)

    @hookimpl
    def on_register(self, client: ClientInfo) -> None:
        self.registered.append(client)


def mosquitto_tls(certs: Certs, port: int, *, client_cert: bool = True) -> list[str]:
    args = ["-h", "localhost", "-p", str(port), "--cafile", certs.cafile]
    if client_cert:
        args += ["--cert", certs.client_certfile, "--key", certs.client_keyfile]
    return args


# ------------------------------------------------------------------------------- TCP


async def test_tcp_listener_serves_paho_v311_and_v5(broker: Broker, paho_client: Any) -> None:
    for protocol in (paho.MQTTv311, paho.MQTTv5):
        c = paho_client(f"tcp-{protocol}", protocol)
        await c.connect(broker.port())
        await c.subscribe("tcp/t", 1)
        await c.publish("tcp/t", b"over tcp", 1)
        assert (await c.receive()).payload == b"over tcp"
        await c.disconnect()


async def test_tcp_client_info_carries_peer_address_and_listener(broker: Broker) -> None:
    recorder = Registrations()
    async with registered(broker, recorder), MQTTTestClient.open(broker.port()) as c:
        assert (await c.connect("peer")).reason_code == 0
        local_port = c.stream.socket.getsockname()[1]
    info = recorder.registered[0]
    assert (info.peer_host, info.peer_port, info.listener, info.tls_common_name) == (
        "127.0.0.1",
        local_port,
        "test",
        None,
    )


# ------------------------------------------------------------------------------- TLS


async def test_tls_listener_serves_paho_with_server_certificate(certs: Certs, paho_client: Any) -> None:
    async with open_broker(test_config(listeners=(tls_listener(certs),))) as broker:
        c = paho_client("tls-paho", paho.MQTTv5)
        c.client.tls_set(ca_certs=certs.cafile)
        connack = await c.connect(broker.port())
        assert connack[1] == 0
        await c.subscribe("tls/t", 1)
        await c.publish("tls/t", b"encrypted", 1)
        assert (await c.receive()).payload == b"encrypted"
        await c.disconnect()


async def test_tls_listener_serves_mosquitto_pub_and_sub_with_cafile(certs: Certs, mosquitto: Any) -> None:
    async with open_broker(test_config(listeners=(tls_listener(certs),))) as broker:
        tls = mosquitto_tls(certs, broker.port(), client_cert=False)
        async with trio.open_nursery() as nursery:
            received: list[bytes] = []

            async def subscribe() -> None:
                result = await mosquitto("mosquitto_sub", *tls, "-i", "msub", "-t", "tls/m", "-C", "1", "-W", "8")
                received.append(result.stdout)

            nursery.start_soon(subscribe)
            await eventually(lambda: broker.service.subscriptions("msub"))
            await mosquitto("mosquitto_pub", *tls, "-t", "tls/m", "-m", "hello over tls", "-q", "1")
        assert received == [b"hello over tls\n"]


async def test_plain_mqtt_on_tls_port_is_dropped_and_broker_keeps_serving(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ternmq.listeners")
    async with open_broker(test_config(listeners=(tls_listener(certs),))) as broker:
        async with MQTTTestClient.open(broker.port()) as plain:
            await plain.send(Connect("plain", 5, True, 60, None, None, None, {}, "MQTT"))
            assert await plain.next_packet() is None
        # A client that connects and leaves at once, then one that closes mid-handshake.
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port())
        await stream.aclose()
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port())
        await stream.send_all(b"\x16\x03\x01\x00\x05hello")
        await stream.aclose()
        async with tls_client(broker.port(), client_context(certs)) as c:
            assert (await c.connect("after")).reason_code == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("TLS handshake" in r.getMessage() for r in caplog.records)


async def test_tls_client_that_never_handshakes_is_closed_after_connect_timeout(certs: Certs) -> None:
    async with open_broker(test_config(listeners=(tls_listener(certs),), connect_timeout=0.3)) as broker:
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port())
        with trio.fail_after(3):
            assert await stream.receive_some(100) == b""
        await stream.aclose()
        assert broker.listeners["tls"].active == 0


async def test_missing_certificate_file_refuses_the_listener_naming_the_key(certs: Certs, tmp_path: Path) -> None:
    async with open_broker() as broker:
        missing = str(tmp_path / "nope.pem")
        with pytest.raises(ConfigError) as error:
            await broker.start_listener(attrs.evolve(tls_listener(certs, "bad"), keyfile=missing))
        assert (error.value.table, error.value.key) == ("listeners.bad", "keyfile")
        assert missing in str(error.value)
        bogus = tmp_path / "bogus.pem"
        bogus.write_text("not a certificate")
        with pytest.raises(ConfigError) as error:
            await broker.start_listener(attrs.evolve(tls_listener(certs, "bad2"), certfile=str(bogus)))
        assert error.value.key == "certfile"
        assert broker.listeners["bad2"].status == "stopped"
        with pytest.raises(ConfigError) as error:  # as `ternmq-admin listener start type=tls` could
            await broker.start_listener(ListenerConfig(name="bad3", type="tls", port=0))
        assert (error.value.table, error.value.key) == ("listeners.bad3", "certfile")


async def test_key_that_does_not_match_the_certificate_is_reported_under_keyfile(certs: Certs, tmp_path: Path) -> None:
    other = trustme.CA().issue_cert("127.0.0.1")  # a key of another certificate
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    async with open_broker() as broker:
        with pytest.raises(ConfigError) as error:
            await broker.start_listener(attrs.evolve(tls_listener(certs, "bad"), keyfile=str(tmp_path / "other.key")))
    assert (error.value.source, error.value.table, error.value.key) == ("<test>", "listeners.bad", "keyfile")
    assert str(error.value) == (
        f"<test>: [listeners.bad] keyfile: the private key in {tmp_path / 'other.key'} "
        f"does not match the certificate in {certs.certfile}"
    )


def _encrypted_key(tmp_path: Path) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(trustme.CA().issue_cert("x").private_key_pem.bytes(), None)
    path = tmp_path / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return str(path)


@pytest.mark.parametrize(
    ("key", "make", "message"),
    [
        ("certfile", lambda certs, tmp: str(tmp), "{path} is a folder, not a file"),
        ("keyfile", lambda certs, tmp: str(tmp), "{path} is a folder, not a file"),
        ("certfile", lambda certs, tmp: certs.keyfile, "{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ("keyfile", lambda certs, tmp: certs.certfile, "{path} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"),
        (
            "keyfile",
            lambda certs, tmp: _encrypted_key(tmp),
            "{path} is protected by a pass phrase; give an unencrypted key",
        ),
        ("cafile", lambda certs, tmp: certs.keyfile, "cannot load {path}: it holds no PEM CA certificate"),
    ],
    ids=[
        "certfile-folder",
        "keyfile-folder",
        "certfile-is-a-key",
        "keyfile-is-a-certificate",
        "keyfile-encrypted",
        "cafile-is-a-key",
    ],
)
async def test_unusable_certificate_files_are_reported_under_their_key(
    certs: Certs, tmp_path: Path, key: str, make: Any, message: str
) -> None:
    path = make(certs, tmp_path)
    async with open_broker() as broker:
        with pytest.raises(ConfigError) as error:
            await broker.start_listener(attrs.evolve(tls_listener(certs, "bad"), **{key: path}))
    assert (error.value.table, error.value.key) == ("listeners.bad", key)
    assert str(error.value) == f"<test>: [listeners.bad] {key}: " + message.format(path=path)


async def test_unreadable_keyfile_is_reported_under_keyfile(certs: Certs, tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root reads a file whatever its mode: take one whose reading fails anyway
        secret, reason = Path("/proc/self/mem"), "Input/output error"
    else:
        secret, reason = tmp_path / "secret.key", "Permission denied"
        secret.write_bytes(Path(certs.keyfile).read_bytes())
        secret.chmod(0)
    async with open_broker() as broker:
        with pytest.raises(ConfigError) as error:
            await broker.start_listener(attrs.evolve(tls_listener(certs, "bad"), keyfile=str(secret)))
    assert str(error.value) == f"<test>: [listeners.bad] keyfile: cannot read {secret}: {reason}"


# ------------------------------------------------------------------ client certificates


def client_cert_listener(certs: Certs, **kwargs: Any) -> ListenerConfig:
    return tls_listener(certs, "mtls", cafile=certs.cafile, **kwargs)


async def test_require_certificate_refuses_clients_without_a_certificate(certs: Certs, mosquitto: Any) -> None:
    config = test_config(listeners=(client_cert_listener(certs, require_certificate=True),))
    async with open_broker(config) as broker:
        port = broker.port()
        result = await mosquitto(
            "mosquitto_pub", *mosquitto_tls(certs, port, client_cert=False), "-t", "x", "-m", "y", check=False
        )
        assert result.returncode != 0
        async with tls_client(port, client_context(certs)) as c:
            try:
                await c.send(Connect("nocert", 5, True, 60, None, None, None, {}, "MQTT"))
                # TLS 1.3 lets the client finish its handshake; the refusal shows on the first read.
                answer = await c.stream.receive_some(100)
            except trio.BrokenResourceError:
                answer = b""
            assert answer == b""  # no CONNACK
        # The broker keeps serving clients that present one.
        await mosquitto("mosquitto_pub", *mosquitto_tls(certs, port), "-t", "x", "-m", "y")
        async with tls_client(port, client_context(certs, client_cert=True)) as c:
            assert (await c.connect("withcert")).reason_code == 0


async def test_require_certificate_refuses_a_certificate_from_an_unknown_ca(certs: Certs, mosquitto: Any) -> None:
    config = test_config(listeners=(client_cert_listener(certs, require_certificate=True),))
    async with open_broker(config) as broker:
        args = [
            "-h",
            "localhost",
            "-p",
            str(broker.port()),
            "--cafile",
            certs.cafile,
            "--cert",
            certs.stranger_certfile,
            "--key",
            certs.stranger_keyfile,
        ]
        result = await mosquitto("mosquitto_pub", *args, "-t", "x", "-m", "y", check=False)
        assert result.returncode != 0
        assert not broker.sessions


async def test_use_identity_as_username_gives_the_certificate_cn_to_auth_on_register(
    certs: Certs, mosquitto: Any, paho_client: Any
) -> None:
    listener = client_cert_listener(certs, require_certificate=True, use_identity_as_username=True)
    async with open_broker(test_config(listeners=(listener,))) as broker:
        recorder = Registrations()
        async with registered(broker, recorder):
            # The username the client sends is replaced by the certificate's CN.
            await mosquitto(
                "mosquitto_pub",
                *mosquitto_tls(certs, broker.port()),
                "-i",
                "mosq",
                "-u",
                "claimed-name",
                "-t",
                "x",
                "-m",
                "y",
            )
            c = paho_client("paho-cert", paho.MQTTv311)
            c.client.tls_set(ca_certs=certs.cafile, certfile=certs.client_certfile, keyfile=certs.client_keyfile)
            await c.connect(broker.port())
            await c.disconnect()
        by_id = {info.client_id: info for info in recorder.auth}
        assert by_id["mosq"].username == "sensor-42"
        assert by_id["paho-cert"].username == "sensor-42"
        assert by_id["mosq"].tls_common_name == "sensor-42"
        assert by_id["mosq"].listener == "mtls"


async def test_optional_client_certificate_admits_clients_without_one(certs: Certs) -> None:
    async with open_broker(test_config(listeners=(client_cert_listener(certs),))) as broker:
        recorder = Registrations()
        async with registered(broker, recorder):
            async with tls_client(broker.port(), client_context(certs)) as c:
                assert (await c.connect("anon", username="u")).reason_code == 0
            async with tls_client(broker.port(), client_context(certs, client_cert=True)) as c:
                assert (await c.connect("cert", username="u")).reason_code == 0
        assert [(i.client_id, i.username, i.tls_common_name) for i in recorder.auth] == [
            ("anon", "u", None),
            ("cert", "u", "sensor-42"),
        ]


async def test_use_identity_as_username_refuses_a_client_without_certificate_as_not_authorized(certs: Certs) -> None:
    listener = client_cert_listener(certs, use_identity_as_username=True)
    async with open_broker(test_config(listeners=(listener,))) as broker:
        async with tls_client(broker.port(), client_context(certs)) as c:
            connack = await c.connect("nocert", username="someone")
            assert isinstance(connack, Connack) and connack.reason_code == 0x87


# ------------------------------------------------------------------------ WebSocket


def ws_listener(name: str = "ws", **kwargs: Any) -> ListenerConfig:
    return ListenerConfig(name=name, type="ws", port=0, **kwargs)


@pytest.fixture
async def ws_broker() -> AsyncIterator[Broker]:
    """A broker with a TCP listener "tcp" and a WebSocket listener "ws" on /mqtt."""
    config = test_config(listeners=(ListenerConfig(name="tcp", port=0), ws_listener()))
    async with open_broker(config) as running:
        yield running


def ws_url(broker: Broker, listener: str = "ws", path: str = "/mqtt", scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{broker.port(listener)}{path}"


async def test_websocket_handshake_answers_the_mqtt_subprotocol(ws_broker: Broker) -> None:
    async with raw_websocket(ws_url(ws_broker)) as websocket:
        assert websocket.subprotocol == "mqtt"
        await websocket.send_message(encode(Connect("raw-ws", 4, True, 60, None, None, None, {}, "MQTT"), 4))
        with trio.fail_after(5):
            connack = await websocket.get_message()
        assert connack == b"\x20\x02\x00\x00"  # CONNACK, session present 0, accepted


async def test_websocket_client_info_carries_the_peer_address(ws_broker: Broker) -> None:
    recorder = Registrations()
    async with registered(ws_broker, recorder), ws_client(ws_url(ws_broker)) as c:
        assert (await c.connect("ws-peer")).reason_code == 0
        local = c.stream.websocket.local
    info = recorder.registered[0]
    assert (info.peer_host, info.peer_port, info.listener) == ("127.0.0.1", local.port, "ws")
    assert local.port != 0


async def test_text_frame_closes_only_that_websocket_connection(ws_broker: Broker) -> None:
    async with ws_client(ws_url(ws_broker)) as other:
        assert (await other.connect("bystander")).reason_code == 0
        async with raw_websocket(ws_url(ws_broker)) as websocket:
            await websocket.send_message(encode(Connect("texter", 4, True, 60, None, None, None, {}, "MQTT"), 4))
            assert await websocket.get_message() == b"\x20\x02\x00\x00"
            await websocket.send_message("\xc0\x00")  # a PINGREQ, but as text
            with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed):
                while True:
                    assert await websocket.get_message() is None  # no PINGRESP either
        await eventually(lambda: "texter" not in ws_broker.sessions)
        await other.subscribe("still/here")
        await other.publish("still/here", b"alive")
        assert (await other.receive()).payload == b"alive"


async def test_websocket_on_another_path_is_refused_with_404(ws_broker: Broker) -> None:
    # A hand-written upgrade request (trio-websocket's client leaks its socket on rejection).
    request = (
        b"GET /other HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
    async with await trio.open_tcp_stream("127.0.0.1", ws_broker.port("ws")) as stream:
        await stream.send_all(request)
        response = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in response:
                response += await stream.receive_some(1000)
    assert response.startswith(b"HTTP/1.1 404 ")


async def test_garbage_http_on_websocket_listener_does_not_hurt_the_broker(
    ws_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", ws_broker.port("ws"))
    await stream.send_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")  # MQTT, not HTTP
    with trio.fail_after(5):
        while await stream.receive_some(1000):
            pass
    await stream.aclose()
    async with ws_client(ws_url(ws_broker)) as c:
        assert (await c.connect("after-garbage")).reason_code == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5], ids=["paho-v311", "paho-v5"])
async def test_messages_flow_between_tcp_and_websocket_clients(
    ws_broker: Broker, paho_client: Any, protocol: int
) -> None:
    ws = paho_client("paho-ws", protocol, transport="websockets")
    connack = await ws.connect(ws_broker.port("ws"))
    assert connack[1] == 0
    await ws.subscribe("mixed/to-ws", 1)
    async with MQTTTestClient.open(ws_broker.port("tcp")) as tcp:
        assert (await tcp.connect("tcp-side")).reason_code == 0
        await tcp.subscribe("mixed/to-tcp", qos=1)
        await tcp.publish("mixed/to-ws", b"from tcp", qos=1)
        assert (await ws.receive()).payload == b"from tcp"
        await ws.publish("mixed/to-tcp", b"from ws" * 1000, 1)
        received = await tcp.receive()
        assert isinstance(received, Publish) and received.payload == b"from ws" * 1000
    await ws.disconnect()


async def test_wss_listener_serves_paho_websocket_over_tls(certs: Certs, paho_client: Any) -> None:
    listener = tls_listener(certs, "wss", "wss", cafile=certs.cafile)
    async with open_broker(test_config(listeners=(ListenerConfig(name="tcp", port=0), listener))) as broker:
        recorder = Registrations()
        async with registered(broker, recorder):
            c = paho_client("paho-wss", paho.MQTTv5, transport="websockets")
            c.client.tls_set(ca_certs=certs.cafile, certfile=certs.client_certfile, keyfile=certs.client_keyfile)
            await c.connect(broker.port("wss"))
            await c.subscribe("wss/t", 1)
            async with MQTTTestClient.open(broker.port("tcp")) as tcp:
                await tcp.connect("tcp-pub")
                await tcp.publish("wss/t", b"to wss", qos=1)
            assert (await c.receive()).payload == b"to wss"
            await c.disconnect()
        info = next(i for i in recorder.auth if i.client_id == "paho-wss")
        assert (info.listener, info.tls_common_name) == ("wss", "sensor-42")
        # And a raw WebSocket over TLS gets the subprotocol too.
        async with raw_websocket(ws_url(broker, "wss", scheme="wss"), client_context(certs)) as websocket:
            assert websocket.subprotocol == "mqtt"


# ------------------------------------------------------------------- several listeners


async def test_two_tcp_and_one_websocket_listener_run_at_once_each_logging_ready(
    caplog: pytest.LogCaptureFixture, paho_client: Any
) -> None:
    caplog.set_level(logging.INFO, logger="ternmq.listeners")
    listeners = (ListenerConfig(name="a", port=0), ListenerConfig(name="b", port=0), ws_listener("w"))
    async with open_broker(test_config(listeners=listeners)) as broker:
        ports = {name: broker.port(name) for name in ("a", "b", "w")}
        assert len(set(ports.values())) == 3
        ready = [r.getMessage() for r in caplog.records if "ready" in r.getMessage()]
        assert sorted(ready) == sorted(
            [
                f"listener a (tcp) ready on 127.0.0.1:{ports['a']}",
                f"listener b (tcp) ready on 127.0.0.1:{ports['b']}",
                f"listener w (ws) ready on 127.0.0.1:{ports['w']}/mqtt",
            ]
        )
        ws = paho_client("on-w", paho.MQTTv311, transport="websockets")
        await ws.connect(ports["w"])
        await ws.subscribe("all/#")
        async with MQTTTestClient.open(ports["a"]) as a, MQTTTestClient.open(ports["b"]) as b:
            await a.connect("on-a")
            await b.connect("on-b")
            await a.publish("all/a", b"1")
            await b.publish("all/b", b"2")
            assert {(await ws.receive()).payload, (await ws.receive()).payload} == {b"1", b"2"}
            assert {row["client_id"]: row["listener"] for row in session_rows(broker)} == {
                "on-w": "w",
                "on-a": "a",
                "on-b": "b",
            }
        await ws.disconnect()


async def test_stopped_listener_refuses_new_clients_but_keeps_its_own(ws_broker: Broker) -> None:
    port = ws_broker.port("tcp")
    async with MQTTTestClient.open(port) as kept:
        assert (await kept.connect("kept")).reason_code == 0
        assert ws_broker.stop_listener("tcp")
        await eventually(lambda: ws_broker.listeners["tcp"].status == "stopped")
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
        await kept.subscribe("k")
        await kept.publish("k", b"still served")
        assert (await kept.receive()).payload == b"still served"
        running = await ws_broker.start_listener(attrs.evolve(ws_broker.listeners["tcp"].config, port=0))
        async with MQTTTestClient.open(running.port) as fresh:
            assert (await fresh.connect("fresh")).reason_code == 0


async def test_stopping_a_listener_with_kill_sessions_closes_its_clients(ws_broker: Broker) -> None:
    async with ws_client(ws_url(ws_broker)) as on_ws, MQTTTestClient.open(ws_broker.port("tcp")) as on_tcp:
        assert (await on_ws.connect("on-ws")).reason_code == 0
        assert (await on_tcp.connect("on-tcp")).reason_code == 0
        assert ws_broker.stop_listener("ws", kill_sessions=True)
        disconnect = await on_ws.next_packet()
        assert disconnect is not None and disconnect.reason_code == 0x98
        await eventually(lambda: ws_broker.listeners["ws"].active == 0)
        assert not ws_broker.stop_listener("ws")
        await on_tcp.publish("t", b"tcp untouched", qos=1)
        assert [row["client_id"] for row in session_rows(ws_broker) if row["is_online"]] == ["on-tcp"]
