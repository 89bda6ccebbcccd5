"""``ternmq-admin`` against a real ``ternmq`` process, over the control socket.

One broker process (``ternmq --config FILE``, port 0, control socket in a temp dir)
serves the module; each test runs ``ternmq-admin --config FILE ...`` as a subprocess
and checks what it prints and its exit code (0 done, 1 command failed or not
understood, 2 broker unreachable or bad configuration).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from plugin_samples import BrokerProcess, admin, broker_with_control_socket, short_dir, subprocess_env, wait_for_path

NODE = "cli@127.0.0.1"


class Running:
    def __init__(self, process: BrokerProcess, config: Path, socket: Path, env: dict[str, str]) -> None:
        self.process = process
        self.config = config
        self.socket = socket
        self.env = env

    def admin(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return admin("--config", str(self.config), *argv, env=self.env)

    def json(self, *argv: str) -> Any:
        result = self.admin("--format=json", *argv)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("cli")
    socket = tmp / "run" / "admin.sock"
    with broker_with_control_socket(tmp, NODE, socket) as (process, config, env):
        yield Running(process, config, socket, env)


def test_plugin_show(running: Running) -> None:
    result = running.admin("plugin", "show")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[1]
    for column in ("Plugin", "Type", "Hook(s)", "M:F/A", "source", "version", "state", "priority", "errors", "timeouts"):
        assert column in header
    assert "retainer" in result.stdout and "builtin" in result.stdout
    assert result.stderr == ""


def test_format_json_prints_the_table_and_text_shapes(running: Running) -> None:
    document = running.json("plugin", "show")
    assert document["type"] == "table"
    assert [row["Plugin"] for row in document["table"]] == ["retainer"]
    assert document["table"][0]["source"] == "builtin"
    # The option before the command words, with its value as the next word, too.
    spaced = admin("--format", "json", "--config", str(running.config), "node", "status", env=running.env)
    assert spaced.returncode == 0, spaced.stderr
    assert json.loads(spaced.stdout)["type"] == "table"
    failed = running.admin("--format=yaml", "plugin", "show")
    assert failed.returncode == 1 and "--format must be human or json" in failed.stderr


def test_plugin_enable_with_config_pairs_then_its_command_then_disable(running: Running) -> None:
    enabled = running.json("plugin", "enable", "name=sample", "--path=plugin_samples:SamplePlugin",
                           "--config", "greeting=ahoy", "--config", "limit=4")
    assert enabled == {"type": "text", "text": "Done"}
    try:
        hello = running.admin("sample", "hello", "--name=cli")
        assert (hello.returncode, hello.stdout.strip()) == (0, "ahoy, cli")
        rows = running.json("plugin", "show", "--plugin=sample")["table"]
        assert [(r["Plugin"], r["source"], r["state"]) for r in rows] == [
            ("sample", "path (plugin_samples)", "running")]
    finally:
        disabled = running.admin("plugin", "disable", "name=sample")
    assert (disabled.returncode, disabled.stdout.strip()) == (0, "Done")
    gone = running.admin("sample", "hello")
    assert gone.returncode == 1 and "unknown command: sample hello" in gone.stderr


def test_node_status(running: Running) -> None:
    result = running.admin("node", "status")
    assert result.returncode == 0, result.stderr
    assert "num_online" in result.stdout and NODE in result.stdout
    status = {row["Status"]: row["Value"] for row in running.json("node", "status")["table"]}
    assert status["node"] == NODE


def test_session_show_lists_a_connected_mosquitto_sub(running: Running) -> None:
    if shutil.which("mosquitto_sub") is None:
        pytest.fail("mosquitto_sub not installed: apt-get install mosquitto-clients (bash .ci/run does it)")
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(running.process.port), "-i",
                            "cli-watcher", "-t", "cli/#", "-q", "1"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = running.json("session", "show", "--client_id=cli-watcher", "--is_online")["table"]
            if rows:
                break
            time.sleep(0.1)
        assert rows == [{"client_id": "cli-watcher", "is_online": True}]
        human = running.admin("session", "show")
        assert human.returncode == 0 and "cli-watcher" in human.stdout and "127.0.0.1" in human.stdout
    finally:
        sub.terminate()
        sub.wait(5)


def test_unknown_command_prints_usage_and_exits_1(running: Running) -> None:
    result = running.admin("bogus")
    assert result.returncode == 1
    assert "unknown command: bogus" in result.stderr
    assert "Usage: ternmq-admin <command>" in result.stderr and "plugin" in result.stderr
    assert result.stdout == ""


def test_bad_argument_exits_1_with_the_commands_usage(running: Running) -> None:
    result = running.admin("plugin", "disable", "nom=x")
    assert result.returncode == 1
    assert "unknown argument nom=" in result.stderr
    assert "Usage: ternmq-admin plugin disable name=<name>" in result.stderr
    failed = running.admin("plugin", "disable", "name=nosuch")
    assert failed.returncode == 1 and "nosuch" in failed.stderr


def test_help_at_top_and_command_level_exits_0(running: Running) -> None:
    top = running.admin("--help")
    assert top.returncode == 0, top.stderr
    assert top.stdout.startswith("Usage: ternmq-admin <command>")
    assert all(group in top.stdout for group in ("plugin", "session", "listener", "node"))
    group = running.admin("session", "--help")
    assert group.returncode == 0 and group.stdout.startswith("Usage: ternmq-admin session <command>")
    command = running.admin("plugin", "enable", "--help")
    assert command.returncode == 0
    assert command.stdout.startswith("Usage: ternmq-admin plugin enable name=<name>")
    assert "--config" in command.stdout


def test_control_socket_is_mode_0600(running: Running) -> None:
    mode = os.stat(running.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(running.socket.parent).st_mode) == 0o700


def test_broker_not_running_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    socket = tmp_path / "nobody.sock"
    config = tmp_path / "plugins.toml"
    config.write_text(f'[broker]\ncontrol_socket = "{socket}"\n')
    result = admin("--config", str(config), "plugin", "show")
    assert result.returncode == 2
    assert f"cannot reach the broker at {socket}" in result.stderr
    # --help still answers, from ternmq-admin itself.
    offline_help = admin("--config", str(config), "--help")
    assert offline_help.returncode == 0 and "Usage: ternmq-admin" in offline_help.stdout


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    result = admin("--config", str(tmp_path / "missing.toml"), "plugin", "show")
    assert result.returncode == 2 and "configuration error" in result.stderr
    off = tmp_path / "off.toml"
    off.write_text('[broker]\ncontrol_socket = "off"\n')
    result = admin("--config", str(off), "plugin", "show")
    assert result.returncode == 2 and 'control_socket = "off"' in result.stderr


def test_without_config_both_use_the_embedded_defaults_socket(tmp_path: Path) -> None:
    with short_dir() as runtime:  # XDG_RUNTIME_DIR of both processes
        env = subprocess_env(runtime, HOME=str(tmp_path))
        expected = runtime / f"ternmq-{os.getuid()}" / "ternmq@127.0.0.1.sock"
        with BrokerProcess(["--port", "0"], env=env, cwd=tmp_path) as process:
            process.wait_ready()
            wait_for_path(expected)
            assert stat.S_IMODE(os.stat(expected).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(expected.parent).st_mode) == 0o700
            result = admin("--format=json", "listener", "show", env=env)
            assert result.returncode == 0, result.stderr
            rows = json.loads(result.stdout)["table"]
            assert [(r["name"], r["port"]) for r in rows] == [("default", process.port)]
        assert not expected.exists()  # removed when the broker stops
