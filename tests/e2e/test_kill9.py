"""kill -9: what the broker acknowledged survives SIGKILL of its process.

A real ``ternmq`` process with the embedded default's store (``sqlite_store``) and the
retainer, ``api`` and ``banned`` plugins. A persistent subscriber goes offline; N QoS 1
and N QoS 2 messages are published with their acknowledgements received (PUBACK,
PUBCOMP); a retained message, an API key and a ban are made. Then SIGKILL, no
shutdown of any kind, and a restart on the same files: the subscriber gets every
message exactly once (QoS 2 exactly once, QoS 1 here too since each was acknowledged
after its commit), and the retained message, the key and the ban are still there.
"""

from __future__ import annotations

import re
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from ternmq.kernel.codec import Publish
from ternmq.kernel.testing import MQTTTestClient

from helpers import eventually_sync, plugin_samples

samples = plugin_samples()

N = 40
PERSISTENT = {"session_expiry_interval": 3600}
API_READY = re.compile(r"management API on (http://\S+)")


class Node:
    """One ``ternmq`` process at a time on the same configuration and data directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "admin.sock"
        self.config = directory / "ternmq.toml"
        self.config.write_text(f'''
[broker]
node_name = "kill9@127.0.0.1"
allow_anonymous = true
data_dir = "data"
control_socket = "{self.socket}"

[[listeners]]
name = "default"
port = 0

[plugins.sqlite_store]
[plugins.retainer]
[plugins.banned]
[plugins.api]
port = 0
''')
        self.env = samples.subprocess_env(directory)
        self.process: Any = None

    def start(self) -> None:
        self.process = samples.BrokerProcess(["--config", str(self.config)], env=self.env, cwd=self.directory)
        self.process.wait_ready()
        eventually_sync(self.socket.exists, 10, message=f"{self.socket} did not appear")

    @property
    def port(self) -> int:
        port: int = self.process.port
        return port

    @property
    def api(self) -> str:
        url = eventually_sync(lambda: API_READY.search(self.process.text()), 10, message="no API ready line")
        return url.group(1)

    def admin(self, *argv: str) -> str:
        result = samples.admin("--config", str(self.config), *argv, env=self.env)
        assert result.returncode == 0, result.stderr
        return str(result.stdout)

    def kill(self) -> None:
        self.process.process.send_signal(signal.SIGKILL)
        assert self.process.process.wait(10) == -signal.SIGKILL
        self.process.stop()  # closes its pipe; the process is gone already

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@pytest.fixture
def node() -> Iterator[Node]:
    with samples.short_dir() as directory:
        running = Node(directory)
        try:
            yield running
        finally:
            running.stop()


async def publish_acknowledged(port: int) -> None:
    """N QoS 1 then N QoS 2 messages, each acknowledged (PUBACK, PUBCOMP), and a retained one."""
    async with MQTTTestClient.open(port) as publisher:
        await publisher.connect("k9-publisher")
        for number in range(N):
            assert (await publisher.publish("k9/q1", f"q1-{number}".encode(), qos=1)).reason_code == 0
        for number in range(N):
            assert (await publisher.publish("k9/q2", f"q2-{number}".encode(), qos=2)).reason_code == 0
        assert (await publisher.publish("k9/retained", b"kept", qos=1, retain=True)).reason_code == 0x10


async def everything_received(port: int) -> list[Publish]:
    """What the persistent subscriber gets when it comes back, until a quiet second."""
    got = []
    async with MQTTTestClient.open(port) as subscriber:
        connack = await subscriber.connect("k9-subscriber", clean_start=False, properties=PERSISTENT)
        assert connack.session_present
        while True:
            try:
                got.append(await subscriber.receive(timeout=1.0))
            except trio.TooSlowError:
                return got


async def test_acknowledged_messages_retained_keys_and_bans_survive_kill_9(node: Node) -> None:
    await trio.to_thread.run_sync(node.start)
    async with MQTTTestClient.open(node.port) as subscriber:
        await subscriber.connect("k9-subscriber", clean_start=False, properties=PERSISTENT)
        await subscriber.subscribe("k9/q1", "k9/q2", qos=2)
        await subscriber.disconnect()
    await publish_acknowledged(node.port)
    key = (await trio.to_thread.run_sync(node.admin, "api-key", "create")).strip()
    await trio.to_thread.run_sync(node.admin, "banned", "add", "as=clientid", "who=k9-evil")

    await trio.to_thread.run_sync(node.kill)
    database = node.directory / "data" / "ternmq.db"
    with sqlite3.connect(database) as rows:  # what a restart has to go on
        assert rows.execute("SELECT count(*) FROM messages WHERE client_id = 'k9-subscriber'").fetchone() == (2 * N,)
        namespaces = {space for (space,) in rows.execute("SELECT namespace FROM records")}
        assert {"retainer", "api_keys", "banned"} <= namespaces
    assert not list((node.directory / "data").glob("*.json"))  # all in the store

    await trio.to_thread.run_sync(node.start)
    got = await everything_received(node.port)
    expected = [("k9/q1", f"q1-{n}".encode(), 1) for n in range(N)] + [
        ("k9/q2", f"q2-{n}".encode(), 2) for n in range(N)
    ]
    assert [(p.topic, p.payload, p.qos) for p in got] == expected  # each once, in order
    async with MQTTTestClient.open(node.port) as late:
        await late.connect("k9-late")
        await late.subscribe("k9/retained", qos=1)
        retained = await late.receive()
        assert (retained.payload, retained.retain) == (b"kept", True)
    async with MQTTTestClient.open(node.port) as evil:
        assert (await evil.connect("k9-evil")).reason_code == 0x8A  # still banned
    async with httpx.AsyncClient(base_url=node.api, timeout=10) as http:
        assert (await http.get("/api/v1/session/show", headers={"x-api-key": key})).status_code == 200
        assert (await http.get("/api/v1/session/show", headers={"x-api-key": "not-" + key})).status_code == 401
    # Everything was delivered and acknowledged: a second kill brings nothing back.
    await trio.to_thread.run_sync(node.kill)
    await trio.to_thread.run_sync(node.start)
    assert await everything_received(node.port) == []
