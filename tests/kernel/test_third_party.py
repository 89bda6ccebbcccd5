"""The third-party example plugin (examples/third_party), installed as a user would.

The package is built and installed by pip once per test session, into a folder of its
own (``pip install --target``), never into this environment: the broker subprocesses
get that folder on their PYTHONPATH, or in ``[broker] plugin_path``, where the entry
point is found as in site-packages. Its own test suite must pass; and it is enabled and
disabled with ``ternmq-admin`` in a running ``ternmq`` process while a client stays
connected.

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

from ternmq.kernel.testing import MQTTTestClient

from helpers import eventually
from plugin_samples import (
    REPO,
    BrokerProcess,
    admin,
    broker_with_control_socket,
    json_auth_site,
    short_dir,
    subprocess_env,
    v311_connack_return_code,
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder examples/third_party is pip-installed into."""
    return json_auth_site(tmp_path_factory)


def test_the_example_is_installed_with_its_entry_point_outside_this_environment(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata

    # This environment does not have it (the test run installs nothing into it) ...
    probe = (
        "import importlib.metadata as m, sys\n"
        "try: m.version('ternmq-json-auth')\n"
        "except m.PackageNotFoundError: sys.exit(0)\n"
        "sys.exit(f'ternmq-json-auth is installed in {sys.prefix}')"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr
    # ... but the folder does, with its entry point, as soon as it is on sys.path.
    monkeypatch.syspath_prepend(str(site))
    assert importlib.metadata.version("ternmq-json-auth") == "1.0.0"
    points = [ep for ep in importlib.metadata.entry_points(group="ternmq.plugins") if ep.name == "json_auth"]
    assert [ep.value for ep in points] == ["ternmq_json_auth"]


def test_the_examples_own_test_suite_passes() -> None:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "examples/third_party/tests",
            "-c",
            "examples/third_party/pyproject.toml",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:benchmark",  # installed on some machines; it would leave .benchmarks/ here
            "-q",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 passed" in result.stdout, result.stdout


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
def running(tmp_path: Path, site: Path) -> Iterator[Running]:
    """A broker whose configuration is in tmp_path/etc, started in tmp_path/work: a
    relative path is the configuration folder's, not the working directory's."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "work").mkdir()
    socket = tmp_path / "admin.sock"
    with broker_with_control_socket(
        tmp_path / "etc", "third-party@127.0.0.1", socket, pythonpath=[site], cwd=tmp_path / "work"
    ) as (process, config, env):
        yield Running(process, config, env)


async def connack_v5(port: int, client_id: str, username: str | None = None, password: bytes | None = None) -> int:
    async with MQTTTestClient.open(port) as client:
        return (await client.connect(client_id, username=username, password=password)).reason_code


async def test_enable_and_disable_json_auth_in_a_running_broker(
    running: Running, paho_client: Any, tmp_path: Path
) -> None:
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
        ("entry point (ternmq-json-auth)", "1.0.0", "running", ["auth_on_register"])
    ]
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


async def test_enable_with_a_missing_users_file_fails_and_loads_nothing(running: Running, tmp_path: Path) -> None:
    result = await running.admin("plugin", "enable", "name=json_auth", "--config", "users_file=missing.json")
    assert result.returncode == 1
    # Relative to the broker's configuration file, not to the folder of either process.
    missing = tmp_path / "etc" / "missing.json"
    assert result.stderr == (
        f"ternmq-admin: plugin json_auth: set-up failed: [Errno 2] No such file or directory: '{missing}'\n"
    )
    shown = json.loads(await running.ok("--format=json", "plugin", "show"))["table"]
    assert [r["Plugin"] for r in shown] == ["retainer"]
    (tmp_path / "etc" / "broken.json").write_text('{"alice": ')
    result = await running.admin("plugin", "enable", "name=json_auth", "--config", "users_file=broken.json")
    assert result.returncode == 1
    assert f"plugin json_auth: set-up failed: {tmp_path / 'etc' / 'broken.json'} is not valid JSON" in result.stderr
    assert "Traceback" not in running.process.text()


async def test_enable_with_a_relative_users_file_reads_the_one_next_to_the_configuration(
    running: Running, tmp_path: Path
) -> None:
    port = running.process.port
    (tmp_path / "etc" / "users.json").write_text(json.dumps({"alice": "secret"}))
    (tmp_path / "work" / "users.json").write_text(json.dumps({"alice": "other"}))  # the broker's cwd: not this one
    assert await running.ok("set", "allow_anonymous=false") == "Done"
    assert await running.ok("plugin", "enable", "name=json_auth", "--config", "users_file=users.json") == "Done"
    assert await connack_v5(port, "a1", "alice", b"secret") == 0
    assert await connack_v5(port, "a2", "alice", b"other") == 0x86
    # An edit of the file applies at the next CONNECT; a broken edit keeps the users read before.
    (tmp_path / "etc" / "users.json").write_text(json.dumps({"alice": "changed"}))
    assert await connack_v5(port, "a3", "alice", b"changed") == 0
    (tmp_path / "etc" / "users.json").write_text('{"alice": "half-saved')
    assert await connack_v5(port, "a4", "alice", b"changed") == 0
    # The broker's log reaches us through a pipe: wait for the line rather than race it.
    await eventually(lambda: "keeping the users read before" in running.process.text())
    assert "Traceback" not in running.process.text()


async def test_plugin_path_finds_the_example_installed_into_a_folder_next_to_the_configuration(
    tmp_path: Path, site: Path
) -> None:
    """``pip install --target`` into a plugin_path folder, as an operator without a
    virtualenv of the broker's would: the entry point name works in plugins.toml."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "plugins").symlink_to(site, target_is_directory=True)
    (etc / "users.json").write_text(json.dumps({"alice": "secret"}))
    config = etc / "ternmq.toml"
    config.write_text("""
[broker]
allow_anonymous = false
control_socket = "off"
plugin_path = ["plugins"]

[[listeners]]
name = "default"
port = 0

[plugins.json_auth]
users_file = "users.json"
""")
    with short_dir() as runtime:
        env = {k: v for k, v in subprocess_env(runtime).items() if k != "PYTHONPATH"}
        with BrokerProcess(["--config", str(config)], env=env, cwd=runtime) as process:
            process.wait_ready()
            assert await connack_v5(process.port, "a", "alice", b"secret") == 0
            assert await connack_v5(process.port, "b", "alice", b"wrong") == 0x86
