"""The third-party example plugin (examples/third_party), installed as a user would.

The package is pip-installed into this environment once (skipped when it is there
already); its own test suite must pass; and it is enabled and disabled with
``ternmq-admin`` in a running ``ternmq`` process while a client stays connected.

The running broker starts with ``allow_anonymous = true`` only so that the observing
paho client can connect and subscribe first; ``ternmq-admin set allow_anonymous=false``
then closes the broker to everyone else, which is the situation json_auth exists for:
before it is enabled alice is refused, while it is enabled alice (right password) is
let in and a wrong password refused, after it is disabled alice is refused again. The
observer is never disconnected; at the end anonymous access is turned back on so that
a publisher can reach it, and it receives that message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio
from plugin_samples import (
    REPO,
    BrokerProcess,
    admin,
    broker_with_control_socket,
    ensure_json_auth_installed,
    v311_connack_return_code,
)

from ternmq.kernel.testing import MQTTTestClient


@pytest.fixture(scope="module", autouse=True)
def json_auth() -> None:
    ensure_json_auth_installed()


def test_the_example_is_installed_with_its_entry_point() -> None:
    import importlib.metadata

    assert importlib.metadata.version("ternmq-json-auth") == "1.0.0"
    points = [ep for ep in importlib.metadata.entry_points(group="ternmq.plugins") if ep.name == "json_auth"]
    assert [ep.value for ep in points] == ["ternmq_json_auth"]


def test_the_examples_own_test_suite_passes() -> None:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "examples/third_party/tests", "-c", "examples/third_party/pyproject.toml",
         "-p", "no:cacheprovider", "-q"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout, result.stdout


class Running:
    def __init__(self, process: BrokerProcess, config: Path, env: dict[str, str]) -> None:
        self.process = process
        self.config = config
        self.env = env

    async def admin(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(lambda: admin("--config", str(self.config), *argv, env=self.env))

    async def ok(self, *argv: str) -> str:
        result = await self.admin(*argv)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    socket = tmp_path / "admin.sock"
    with broker_with_control_socket(tmp_path, "third-party@127.0.0.1", socket) as (process, config, env):
        yield Running(process, config, env)


async def connack_v5(port: int, client_id: str, username: str | None = None, password: bytes | None = None) -> int:
    async with MQTTTestClient.open(port) as client:
        return (await client.connect(client_id, username=username, password=password)).reason_code


async def test_enable_and_disable_json_auth_in_a_running_broker(running: Running, paho_client: Any,
                                                                tmp_path: Path) -> None:
    port = running.process.port
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"alice": "secret"}))
    observer = paho_client("observer", paho.MQTTv311)
    await observer.connect(port)
    await observer.subscribe("news/#", qos=1)

    assert await running.ok("set", "allow_anonymous=false") == "Done"
    # Before: nobody answers auth_on_register, so the default policy refuses everyone.
    assert await connack_v5(port, "alice-1", "alice", b"secret") == 0x86
    assert await v311_connack_return_code(port, "alice-2", "alice", b"secret") == 5

    enabled = await running.ok("plugin", "enable", "name=json_auth", "--config", f"users_file={users}")
    assert enabled == "Done"
    listing = json.loads(await running.ok("--format=json", "plugin", "show", "--plugin=json_auth"))["table"]
    assert [(r["source"], r["version"], r["state"], r["Hook(s)"]) for r in listing] == [
        ("entry point (ternmq-json-auth)", "1.0.0", "running", ["auth_on_register"])]
    # While enabled: alice with her password is allowed, a wrong password refused.
    assert await connack_v5(port, "alice-3", "alice", b"secret") == 0
    assert await v311_connack_return_code(port, "alice-4", "alice", b"secret") == 0
    assert await connack_v5(port, "alice-5", "alice", b"wrong") == 0x86
    assert await v311_connack_return_code(port, "alice-6", "alice", b"wrong") == 4
    assert await connack_v5(port, "stranger", "mallory", b"x") == 0x86  # not its user: default policy

    assert await running.ok("plugin", "disable", "name=json_auth") == "Done"
    shown = json.loads(await running.ok("--format=json", "plugin", "show"))["table"]
    assert [r["Plugin"] for r in shown] == ["retainer"]
    # After: back to what it was.
    assert await connack_v5(port, "alice-7", "alice", b"secret") == 0x86
    assert await v311_connack_return_code(port, "alice-8", "alice", b"secret") == 5

    assert await running.ok("set", "allow_anonymous=true") == "Done"
    async with MQTTTestClient.open(port) as publisher:
        assert (await publisher.connect("publisher")).reason_code == 0
        assert (await publisher.publish("news/end", b"still here", qos=1)).reason_code == 0
    message = await observer.receive()
    assert (message.topic, message.payload) == ("news/end", b"still here")
    assert not observer.disconnected.is_set() and observer.client.is_connected()
    await observer.disconnect()


async def test_enable_with_a_bad_table_is_refused_and_loads_nothing(running: Running) -> None:
    result = await running.admin("plugin", "enable", "name=json_auth", "--config", "password_file=/x")
    assert result.returncode == 1
    assert "[plugins.json_auth] password_file: unknown key" in result.stderr
    shown = json.loads(await running.ok("--format=json", "plugin", "show"))["table"]
    assert [r["Plugin"] for r in shown] == ["retainer"]
