"""``ternmq-admin`` against a real ``ternmq`` process, over the control socket.

One broker process (``ternmq --config FILE``, port 0, control socket in a temp dir)
serves the module; each test runs ``ternmq-admin --config FILE ...`` as a subprocess
and checks what it prints and its exit code (0 done, 1 command failed or not
understood, 2 broker unreachable or bad configuration). The examples of the help and
the command list of the README run against brokers of their own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket as sockets
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ternmq.kernel.admin import ADMIN_EXAMPLES

from helpers import PLUGIN_SHOW_COLUMNS, eventually_sync
from plugin_samples import (
    REPO,
    BrokerProcess,
    admin,
    broker_with_control_socket,
    json_auth_site,
    short_dir,
    subprocess_env,
)

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
    for column in PLUGIN_SHOW_COLUMNS:
        assert column in header
    assert "retainer" in result.stdout and "builtin" in result.stdout
    assert result.stderr == ""


def test_the_essential_admin_plugin_is_listed_and_cannot_be_disabled(running: Running) -> None:
    shown = running.json("plugin", "show", "--internal")["table"]
    assert [(row["Plugin"], row["source"]) for row in shown] == [("admin", "builtin"), ("retainer", "builtin")]
    refused = running.admin("plugin", "disable", "name=admin")
    assert refused.returncode == 1
    assert refused.stderr == (
        "ternmq-admin: plugin admin: is an essential built-in plugin (the admin commands and the control socket "
        "of ternmq-admin) and cannot be disabled\n"
    )
    assert running.admin("node", "status").returncode == 0  # still answering


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
    enabled = running.json(
        "plugin",
        "enable",
        "name=sample",
        "--path=plugin_samples:SamplePlugin",
        "--config",
        "greeting=ahoy",
        "--config",
        "limit=4",
    )
    assert enabled == {"type": "text", "text": "Done"}
    try:
        hello = running.admin("sample", "hello", "--name=cli")
        assert (hello.returncode, hello.stdout.strip()) == (0, "ahoy, cli")
        rows = running.json("plugin", "show", "--plugin=sample")["table"]
        assert [(r["Plugin"], r["source"], r["state"]) for r in rows] == [
            ("sample", "path (plugin_samples)", "running")
        ]
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
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(running.process.port),
            "-i",
            "cli-watcher",
            "-t",
            "cli/#",
            "-q",
            "1",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        rows = eventually_sync(
            lambda: running.json("session", "show", "--client_id=cli-watcher", "--is_online")["table"], 10, interval=0.1
        )
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
    assert "Usage: ternmq-admin [--config FILE]" in result.stderr and "  plugin " in result.stderr
    assert result.stdout == ""


def test_unknown_option_before_the_command_is_named(running: Running) -> None:
    result = running.admin("--verbose", "plugin", "show")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("ternmq-admin: unknown option --verbose\n")
    assert "ternmq-admin --help" in result.stderr


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
    assert top.stdout.startswith("Usage: ternmq-admin [--config FILE] [--socket PATH] [--format=human|json] <command>")
    assert all(f"  {group} " in top.stdout for group in ("plugin", "session", "listener", "node"))
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
    assert result.stderr == (
        f"ternmq-admin: cannot reach the broker at {socket} (node ternmq@127.0.0.1): "
        f"no such socket. Start it with `ternmq --config {config}`.\n"
    )
    # --help still answers, from ternmq-admin itself.
    offline_help = admin("--config", str(config), "--help")
    assert offline_help.returncode == 0 and "Usage: ternmq-admin" in offline_help.stdout
    # A socket file nobody listens on (its broker was killed), and a socket named by --socket.
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as stale:
        stale.bind(str(socket))
    result = admin("--config", str(config), "plugin", "show")
    assert result.returncode == 2
    assert f"cannot reach the broker at {socket} (node ternmq@127.0.0.1): nobody listens on it." in result.stderr
    result = admin("--socket", str(tmp_path / "other.sock"), "plugin", "show")
    assert result.returncode == 2
    assert result.stderr == (
        f"ternmq-admin: cannot reach the broker at {tmp_path / 'other.sock'}: "
        "no such socket. Is the broker that owns it running?\n"
    )


def test_without_config_the_error_names_the_default_socket_and_node(tmp_path: Path) -> None:
    with short_dir() as runtime:
        env = subprocess_env(runtime, HOME=str(tmp_path))
        expected = runtime / f"ternmq-{os.getuid()}" / "ternmq@127.0.0.1.sock"
        result = admin("node", "status", env=env)
    assert result.returncode == 2
    assert result.stderr == (
        f"ternmq-admin: cannot reach the broker at {expected} (node ternmq@127.0.0.1): "
        "no such socket. Start it with `ternmq`, or name its configuration with --config FILE.\n"
    )


def _sections(help_text: str) -> dict[str, str]:
    """The Commands/Options/Examples sections of a top-level help, by title."""
    found = re.findall(r"^(Commands|Options|Examples):\n((?:  .*\n?)+)", help_text, re.MULTILINE)
    return dict(found)


def _check_top_level_help(help_text: str) -> None:
    sections = _sections(help_text)
    assert set(sections) == {"Commands", "Options", "Examples"}, help_text
    for group in ("listener", "metrics", "node", "plugin", "retain", "session", "set", "show"):
        assert f"  {group} " in sections["Commands"], group
    for option in ("--config FILE", "--socket PATH", "--format=human|json", "-h, --help"):
        assert f"  {option} " in sections["Options"], option


def test_help_lists_the_commands_and_options_and_names_the_broker(running: Running) -> None:
    top = running.admin("--help")
    assert top.returncode == 0, top.stderr
    _check_top_level_help(top.stdout)
    assert top.stdout.rstrip().endswith(f"Broker: control socket {running.socket} (node {NODE}), running.")


def test_help_without_a_broker_lists_the_kernels_commands_and_the_options(tmp_path: Path) -> None:
    socket = tmp_path / "nobody.sock"
    config = tmp_path / "plugins.toml"
    config.write_text(f'[broker]\nnode_name = "away@127.0.0.1"\ncontrol_socket = "{socket}"\n')
    top = admin("--config", str(config), "--help")
    assert top.returncode == 0, top.stderr
    _check_top_level_help(top.stdout)
    assert (
        f"Broker: control socket {socket} (node away@127.0.0.1), not reachable: no such socket. "
        f"Start it with `ternmq --config {config}`."
    ) in top.stdout
    # The kernel's commands answer --help too; a plugin's command needs its broker.
    command = admin("--config", str(config), "retain", "delete", "--help")
    assert command.returncode == 0 and command.stdout.startswith("Usage: ternmq-admin retain delete [flags]")
    assert "--topic" in command.stdout and "not reachable" in command.stdout
    plugins = admin("--config", str(config), "sample", "hello", "--help")
    assert plugins.returncode == 2 and "cannot reach the broker" in plugins.stderr
    # No command at all: the same help, as the usage error it is.
    bare = admin("--config", str(config))
    assert bare.returncode == 1 and bare.stdout == ""
    _check_top_level_help(bare.stderr)


def test_bad_option_values_answer_a_usage_error_and_log_no_traceback(running: Running) -> None:
    cases = [
        (("session", "show", "--limit=abc"), "--limit takes a whole number >= 1 (--limit=N), not 'abc'"),
        (("retain", "show", "--limit=-1"), "--limit takes a whole number >= 1 (--limit=N), not '-1'"),
        (("session", "show", "--client_id=~["), "--client_id=~[: not a regular expression"),
        (("session", "disconnect", "client-id=nobody", "--cleanup=no"), "--cleanup is a switch"),
        (("listener", "stop", "name=nosuch", "--kill_sessions=maybe"), "--kill_sessions is a switch"),
        (("listener", "start", "name=x", "port=abc"), "port: must be an integer, not 'abc'"),
        (("listener", "start", "name=x", "port=0", "--type=pigeon"), "--type: must be one of"),
        (("retain", "delete", "--topic"), "--topic needs a value"),
        (("retain", "show", "--topic=a/#/b"), "--topic=a/#/b: '#' must be the whole last level"),
        (("plugin", "enable", "name=x", "--path"), "--path needs a value"),
        (("plugin", "show", "--plugin"), "--plugin needs a value"),
        (("show", "--max_inflight=3"), "show takes --max_inflight without a value"),
        (("set", "max_inflight=abc"), "max_inflight: must be an integer, not 'abc'"),
    ]
    logged = len(running.process.log)
    for argv, message in cases:
        result = running.admin(*argv)
        words = " ".join(word for word in argv if not word.startswith("-") and "=" not in word)
        assert (result.returncode, result.stdout) == (1, ""), (argv, result.stdout, result.stderr)
        assert result.stderr.startswith(f"ternmq-admin: {message}"), (argv, result.stderr)
        assert f"\n\nUsage: ternmq-admin {words}" in result.stderr, (argv, result.stderr)
        assert "Traceback" not in result.stderr and "Error(" not in result.stderr
    time.sleep(0.3)  # the log is read by a thread
    assert running.process.log[logged:] == [], "".join(running.process.log[logged:])


def test_a_listener_start_that_fails_answers_why_and_leaves_no_row(running: Running) -> None:
    before = running.json("listener", "show")["table"]
    port = running.process.port
    busy = running.admin("listener", "start", "name=busy", f"port={port}")
    assert busy.returncode == 1 and busy.stdout == ""
    assert busy.stderr == f"ternmq-admin: listener busy cannot listen on 127.0.0.1:{port}: Address already in use\n"
    elsewhere = running.admin("listener", "start", "name=elsewhere", "address=192.0.2.1", "port=0")
    assert elsewhere.returncode == 1
    assert elsewhere.stderr.startswith("ternmq-admin: listener elsewhere cannot listen on 192.0.2.1:0: ")
    assert "[Errno" not in elsewhere.stderr
    assert running.json("listener", "show")["table"] == before


def test_retain_delete_says_what_it_deleted(running: Running) -> None:
    if shutil.which("mosquitto_pub") is None:
        pytest.fail("mosquitto_pub not installed: apt-get install mosquitto-clients (bash .ci/run does it)")

    def retain(topic: str) -> None:
        subprocess.run(
            ["mosquitto_pub", "-p", str(running.process.port), "-q", "1", "-r", "-t", topic, "-m", "x"],
            check=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )

    for topic in ("cli-r/1", "cli-r/2", "cli-r/x/y", "cli-other"):
        retain(topic)
    assert len(running.json("retain", "show", "--topic=cli-r/#")["table"]) == 3
    deleted = running.admin("retain", "delete", "--topic=cli-r/#")
    assert (deleted.returncode, deleted.stdout) == (0, "Deleted 3 retained messages matching cli-r/#\n")
    assert running.json("retain", "show", "--topic=cli-r/#")["table"] == []
    again = running.admin("retain", "delete", "--topic=cli-r/#")
    assert (again.returncode, again.stdout) == (0, "No retained message matching cli-r/#\n")
    exact = running.admin("retain", "delete", "--topic=cli-other")
    assert (exact.returncode, exact.stdout) == (0, "Deleted 1 retained message on cli-other\n")
    gone = running.admin("retain", "delete", "--topic=cli-other")
    assert (gone.returncode, gone.stdout) == (0, "No retained message on cli-other\n")


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
            eventually_sync(expected.exists, 10, message=f"{expected} did not appear")
            assert stat.S_IMODE(os.stat(expected).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(expected.parent).st_mode) == 0o700
            result = admin("--format=json", "listener", "show", env=env)
            assert result.returncode == 0, result.stderr
            rows = json.loads(result.stdout)["table"]
            assert [(r["name"], r["port"]) for r in rows] == [("default", process.port)]
        assert not expected.exists()  # removed when the broker stops


# -- the examples of the help, and the README's command list -----------------------------


def _examples(help_text: str) -> list[str]:
    return [line.strip() for line in _sections(help_text).get("Examples", "").splitlines()]


def test_every_example_of_the_help_runs(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    socket = tmp_path / "run" / "admin.sock"
    # The json_auth example needs that plugin installed (next to the broker, not here)
    # and its users file next to the configuration.
    (tmp_path / "users.json").write_text('{"alice": "secret"}')
    with broker_with_control_socket(
        tmp_path, "examples@127.0.0.1", socket, pythonpath=[json_auth_site(tmp_path_factory)]
    ) as (_, config, env):
        online = admin("--config", str(config), "--help", env=env).stdout
        offline = admin("--socket", str(tmp_path / "nobody.sock"), "--help", env=env).stdout
        examples = _examples(online)
        assert examples == _examples(offline) == [f"ternmq-admin {example}" for example in ADMIN_EXAMPLES]
        for example in examples:
            argv = shlex.split(example, comments=True)
            assert argv[0] == "ternmq-admin"
            result = admin("--config", str(config), *argv[1:], env=env)
            assert result.returncode == 0, (example, result.stderr)
        loaded = json.loads(
            admin("--config", str(config), "--format=json", "plugin", "show", "--plugin=json_auth", env=env).stdout
        )["table"]
        assert [row["state"] for row in loaded] == ["running"]


def _readme_admin_lines() -> list[str]:
    """The lines of the sh block of the README's "Managing a running broker" section."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Managing a running broker\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```sh\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_command_list_runs_top_to_bottom(tmp_path: Path) -> None:
    lines = _readme_admin_lines()
    assert len(lines) >= 10 and lines[-1].startswith("ternmq-admin --help")
    with short_dir() as runtime:  # XDG_RUNTIME_DIR: where plain ternmq and ternmq-admin put the socket
        env = subprocess_env(runtime, HOME=str(tmp_path))
        # The embedded default (plain `ternmq`), on another port than 1883.
        with BrokerProcess(["--port", "0"], env=env, cwd=tmp_path) as process:
            process.wait_ready()
            socket = runtime / f"ternmq-{os.getuid()}" / "ternmq@127.0.0.1.sock"
            eventually_sync(socket.exists, 10, message=f"{socket} did not appear")
            for line in lines:
                # The README's mosquitto clients talk to port 1883, as the embedded default does.
                command = re.sub(r"^(mosquitto_(?:pub|sub)) ", rf"\1 -p {process.port} ", line)
                result = subprocess.run(
                    ["bash", "-c", command],
                    check=False,
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=tmp_path,
                    timeout=30,
                    stdin=subprocess.DEVNULL,
                )
                output = result.stdout + result.stderr
                assert result.returncode == 0, (line, output)
                assert "Error" not in output and "ternmq-admin:" not in output, (line, output)
            time.sleep(0.3)  # the log is read by a thread
            assert " ERROR " not in process.text() and "Traceback" not in process.text(), process.text()
