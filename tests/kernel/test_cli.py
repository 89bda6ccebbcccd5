"""The ``ternmq`` console script, run as a real process.

Each test starts ``ternmq`` (or ``python -m ternmq.kernel``) with ``--port 0`` or a
config whose listeners use port 0, reads the bound ports from the ready lines on
stderr, talks to it with mosquitto_pub/mosquitto_sub or our test client, and stops it
with a signal.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
import trustme

from ternmq.kernel.codec import Disconnect
from ternmq.kernel.testing import MQTTTestClient

from helpers import eventually

READY = re.compile(r"listener (?P<name>\S+) \((?P<type>\w+)\) ready on (?P<address>[^\s:]+):(?P<port>\d+)(?P<path>\S*)")
# The console script installed next to this interpreter (not a pyenv shim in front of it).
_BESIDE = Path(sys.executable).parent / "ternmq"
TERNMQ = str(_BESIDE) if _BESIDE.exists() else shutil.which("ternmq") or "ternmq"
START_TIMEOUT = 15.0


class TernmqProcess:
    """A running ``ternmq`` whose stderr is collected as it comes."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stderr = ""
        self._grew = trio.Event()

    async def collect(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some(65536):
            self.stderr += chunk.decode("utf-8", "replace")
            self._grew.set()
            self._grew = trio.Event()
        self._grew.set()

    async def wait_for_stderr(
        self, pattern: str, count: int = 1, timeout: float = START_TIMEOUT
    ) -> list[re.Match[str]]:
        """Wait until ``pattern`` matched ``count`` times in stderr (or the process ended)."""
        with trio.fail_after(timeout):
            while len(matches := list(re.finditer(pattern, self.stderr))) < count:
                if self.process.returncode is not None and self._grew.is_set():
                    break
                await self._grew.wait()
        assert len(matches) >= count, f"expected {count} x {pattern!r} in stderr:\n{self.stderr}"
        return matches

    async def ready(self, count: int = 1) -> dict[str, dict[str, str]]:
        """The ready lines, by listener name, once ``count`` listeners are up."""
        matches = await self.wait_for_stderr(READY.pattern, count)
        return {m["name"]: m.groupdict() for m in matches}

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        self.process.send_signal(signum)
        with trio.fail_after(timeout):
            return await self.process.wait()


@pytest.fixture
def runtime_dir() -> Iterator[str]:
    """A short XDG_RUNTIME_DIR, so that the default control socket path fits (108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="tq") as directory:
        yield directory


@pytest.fixture
def run_env(runtime_dir: str) -> dict[str, str]:
    return {**os.environ, "XDG_RUNTIME_DIR": runtime_dir}


@pytest.fixture
def ternmq(tmp_path: Path, run_env: dict[str, str]) -> Any:
    """``async with ternmq(*args) as proc``: the console script, killed if still running after."""

    @asynccontextmanager
    async def start(*args: str, argv0: tuple[str, ...] = (TERNMQ,)) -> AsyncIterator[TernmqProcess]:
        process = await trio.lowlevel.open_process(
            [*argv0, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            env=run_env,
        )
        running = TernmqProcess(process)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(running.collect)
                try:
                    yield running
                except BaseException:
                    print(f"--- ternmq stderr ---\n{running.stderr}")
                    raise
                finally:
                    if process.returncode is None:
                        process.kill()
                    with trio.CancelScope(shield=True):
                        await process.wait()
        finally:
            assert process.stderr is not None
            await process.stderr.aclose()

    return start


@pytest.fixture
def ternmq_run(tmp_path: Path, run_env: dict[str, str]) -> Any:
    """``result = await ternmq_run(*args)``: run to completion (for failures)."""

    async def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(START_TIMEOUT):
            return await trio.run_process(
                [TERNMQ, *args], capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path, env=run_env
            )

    return run


def write_config(tmp_path: Path, text: str, name: str = "ternmq.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def mosquitto_round_trip(mosquitto: Any, port: int, topic: str = "cli/t", payload: str = "hi") -> None:
    """mosquitto_sub receives what mosquitto_pub publishes (published until the sub got it)."""
    result: list[bytes] = []

    async def subscribe() -> None:
        done = await mosquitto("mosquitto_sub", "-p", str(port), "-t", topic, "-C", "1", "-W", "8")
        result.append(done.stdout)

    async def published_and_received() -> list[bytes]:
        await mosquitto("mosquitto_pub", "-p", str(port), "-t", topic, "-m", payload)
        return result

    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscribe)
        await eventually(published_and_received, 8, interval=0.1)
    assert result == [f"{payload}\n".encode()]


# -------------------------------------------------------------------------- running


async def test_port_zero_logs_the_bound_port_and_serves_mosquitto(ternmq: Any, mosquitto: Any) -> None:
    async with ternmq("--port", "0") as broker:
        ready = await broker.ready()
        assert list(ready) == ["default"]
        line = ready["default"]
        assert (line["type"], line["address"]) == ("tcp", "127.0.0.1")
        port = int(line["port"])
        assert port not in (0, 1883)
        await mosquitto_round_trip(mosquitto, port)
        assert await broker.stop() == 0
    assert len(READY.findall(broker.stderr)) == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_shuts_down_cleanly_with_exit_code_0(ternmq: Any, signum: int) -> None:
    async with ternmq("--port", "0") as broker:
        port = int((await broker.ready())["default"]["port"])
        async with MQTTTestClient.open(port, 5) as client:
            assert (await client.connect("until-shutdown")).reason_code == 0
            started = trio.current_time()
            broker.process.send_signal(signum)
            # A v5 client is told why: DISCONNECT 0x8B server shutting down.
            disconnect = await client.next_packet()
            assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x8B
            assert await client.next_packet() is None
            with trio.fail_after(5):
                assert await broker.process.wait() == 0
            assert trio.current_time() - started < 5
    assert f"received {signal.Signals(signum).name}, shutting down" in broker.stderr
    assert "Traceback" not in broker.stderr


async def test_config_file_runs_every_listener_and_logs_one_ready_line_each(
    ternmq: Any, tmp_path: Path, mosquitto: Any
) -> None:
    path = write_config(
        tmp_path,
        """
[broker]
allow_anonymous = true
control_socket = "off"
[[listeners]]
name = "first"
port = 0
[[listeners]]
name = "second"
port = 0
[[listeners]]
name = "web"
type = "ws"
port = 0
""",
    )
    async with ternmq("--config", path) as broker:
        ready = await broker.ready(3)
        assert {name: (line["type"], line["path"]) for name, line in ready.items()} == {
            "first": ("tcp", ""),
            "second": ("tcp", ""),
            "web": ("ws", "/mqtt"),
        }
        for name in ("first", "second"):
            await mosquitto_round_trip(mosquitto, int(ready[name]["port"]), topic=f"on/{name}", payload=name)
        url = f"ws://127.0.0.1:{ready['web']['port']}/mqtt"
        async with trio_websocket.open_websocket_url(url, subprotocols=["mqtt"]) as websocket:
            assert websocket.subprotocol == "mqtt"
        assert await broker.stop() == 0
    assert len(READY.findall(broker.stderr)) == 3


async def test_host_and_port_override_only_the_first_listener(ternmq: Any, tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
[broker]
control_socket = "off"
[[listeners]]
name = "first"
address = "192.0.2.1"
port = 1
[[listeners]]
name = "second"
port = 0
""",
    )
    async with ternmq("--config", path, "--host", "127.0.0.1", "--port", "0") as broker:
        ready = await broker.ready(2)
        assert ready["first"]["address"] == "127.0.0.1" and int(ready["first"]["port"]) not in (0, 1)
        assert ready["second"]["address"] == "127.0.0.1"
        assert await broker.stop() == 0


async def test_embedded_default_refuses_nobody_on_loopback(ternmq: Any, mosquitto: Any) -> None:
    """Without --config: anonymous clients allowed and retained messages on."""
    async with ternmq("--port", "0") as broker:
        port = str((await broker.ready())["default"]["port"])
        await mosquitto("mosquitto_pub", "-p", port, "-t", "kept", "-m", "retained", "-r", "-q", "1")
        result = await mosquitto("mosquitto_sub", "-p", port, "-t", "kept", "-C", "1", "-W", "5")
        assert result.stdout == b"retained\n"
        assert await broker.stop() == 0


async def test_log_level_debug_shows_debug_lines_and_info_hides_them(ternmq: Any, mosquitto: Any) -> None:
    for level, shown in (("debug", True), ("info", False)):
        async with ternmq("--port", "0", "--log-level", level) as broker:
            port = (await broker.ready())["default"]["port"]
            await mosquitto("mosquitto_pub", "-p", port, "-t", "x", "-m", "y")
            assert await broker.stop() == 0
        assert (" DEBUG ternmq.listeners: connection from 127.0.0.1:" in broker.stderr) is shown, broker.stderr
        assert " INFO " in broker.stderr


async def test_python_dash_m_ternmq_kernel_runs_the_broker(ternmq: Any, mosquitto: Any) -> None:
    async with ternmq("--port", "0", argv0=(sys.executable, "-m", "ternmq.kernel")) as broker:
        port = int((await broker.ready())["default"]["port"])
        await mosquitto_round_trip(mosquitto, port)
        assert await broker.stop(signal.SIGINT) == 0


# ------------------------------------------------------------------------- failures


BAD_CONFIGS = [
    ("[broker]\nallow_anonymus = true\n", "[broker] allow_anonymus: unknown key"),
    ('[broker.limits]\nmax_inflight = "many"\n', "[broker.limits] max_inflight: must be an integer"),
    ("[broker.limits]\nmax_inflight = 0\n", "[broker.limits] max_inflight: must be between 1 and 65535"),
    ('[[listeners]]\nname = "edge"\ntype = "quic"\n', "[listeners.edge] type: must be one of"),
    ('[[listeners]]\nname = "edge"\ntype = "tls"\nport = 0\n', "[listeners.edge] certfile: a tls listener needs"),
    ("[mqtt]\nport = 1883\n", "[mqtt]: unknown table"),
    ('[broker\nnode_name = "x"\n', "not valid TOML"),
    (
        '[broker]\ncontrol_socket = "off"\n[[listeners]]\nname = "edge"\ntype = "tls"\nport = 0\n'
        'certfile = "absent.pem"\nkeyfile = "absent.key"\n',
        "[listeners.edge] certfile: no such file: absent.pem",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"),
    BAD_CONFIGS,
    ids=[
        "unknown-key",
        "wrong-type",
        "out-of-range",
        "bad-listener-type",
        "tls-no-certfile",
        "unknown-table",
        "invalid-toml",
        "certfile-not-found",
    ],
)
async def test_bad_config_exits_non_zero_naming_file_table_and_key(
    ternmq_run: Any, tmp_path: Path, text: str, message: str
) -> None:
    path = write_config(tmp_path, text, "bad.toml")
    result = await ternmq_run("--config", path)
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert stderr.startswith(f"ternmq: configuration error: {path}: ")
    assert message in stderr
    assert "Traceback" not in stderr and "ready on" not in stderr


async def test_missing_config_file_exits_non_zero_naming_it(ternmq_run: Any, tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    result = await ternmq_run("--config", str(path))
    assert result.returncode == 2
    assert (
        result.stderr.decode()
        == f"ternmq: configuration error: {path}: cannot read the file: No such file or directory\n"
    )


async def test_out_of_range_port_override_names_the_listener(ternmq_run: Any) -> None:
    result = await ternmq_run("--port", "70000")
    assert result.returncode == 2
    assert "[listeners.default] port: --port must be 0..65535" in result.stderr.decode()


async def test_port_in_use_exits_1_naming_listener_and_address(ternmq_run: Any) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        result = await ternmq_run("--port", str(port))
    finally:
        await listeners[0].aclose()
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert f"ternmq: cannot start: [Errno 98] listener default cannot listen on 127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr


async def test_bad_arguments_exit_2_with_usage(ternmq_run: Any) -> None:
    result = await ternmq_run("--log-level", "loud")
    assert result.returncode == 2
    assert b"usage: ternmq" in result.stderr and b"invalid choice: 'loud'" in result.stderr


async def test_help_describes_the_options(ternmq_run: Any) -> None:
    result = await ternmq_run("--help")
    assert result.returncode == 0
    for option in (b"--config", b"--host", b"--port", b"--log-level"):
        assert option in result.stdout


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) ternmq")


def error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The one line (with its newline) that is not a log line of the start-up; there
    must be exactly one, and no traceback."""
    stderr = result.stderr.decode()
    lines = [line for line in stderr.splitlines(keepends=True) if not LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].endswith("\n"), stderr
    assert "Traceback" not in stderr and "ready on" not in stderr
    return lines[0]


def one_line_config_error(result: subprocess.CompletedProcess[bytes], path: str, table: str) -> str:
    """The error of a refused configuration: exit code 2, one line naming the file and table."""
    assert result.returncode == 2, result.stderr.decode()
    line = error_line(result)
    assert line.startswith(f"ternmq: configuration error: {path}: [{table}]"), line
    return line


LISTENER = '[broker]\ncontrol_socket = "off"\n[[listeners]]\nname = "default"\nport = 0\n'


async def test_config_without_listeners_is_refused(ternmq_run: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, "[broker]\nallow_anonymous = true\n[plugins.retainer]\n")
    stderr = one_line_config_error(await ternmq_run("--config", path), path, "listeners")
    assert "no listener" in stderr and "[[listeners]]" in stderr


async def test_second_broker_on_the_same_control_socket_names_both_ways_out(
    ternmq: Any, ternmq_run: Any, runtime_dir: str, tmp_path: Path
) -> None:
    socket = f"{runtime_dir}/ternmq-{os.getuid()}/ternmq@127.0.0.1.sock"
    async with ternmq("--port", "0") as first:
        await first.ready()
        # The broker says where ternmq-admin reaches it.
        assert f" INFO ternmq.control: control socket for ternmq-admin: {socket}\n" in first.stderr
        second = await ternmq_run("--port", "0")
        assert second.returncode == 1
        assert error_line(second) == (
            f"ternmq: cannot start: another broker already owns the control socket {socket} (it is "
            "named after node_name 'ternmq@127.0.0.1'); to run one more broker on this machine, give "
            'it another node_name or another control_socket ("off": none) in the [broker] table of '
            "a configuration file given with --config\n"
        )
        # With a configuration file, the message names it.
        path = write_config(tmp_path, LISTENER.replace('control_socket = "off"', f'control_socket = "{socket}"'))
        stderr = error_line(await ternmq_run("--config", path))
        assert f"already owns the control socket {socket}; to run one more broker" in stderr
        assert stderr.endswith(f"in the [broker] table of {path}\n")
        # Another node_name is a way out: it gets a socket of its own.
        path = write_config(
            tmp_path, LISTENER.replace('control_socket = "off"', 'node_name = "second@127.0.0.1"'), "second.toml"
        )
        async with ternmq("--config", path) as other:
            await other.ready()
            assert (
                f"control socket for ternmq-admin: {runtime_dir}/ternmq-{os.getuid()}/second@127.0.0.1.sock"
                in other.stderr
            )
            assert await other.stop() == 0
        assert await first.stop() == 0


async def test_unknown_plugin_is_a_one_line_configuration_error_with_the_ways_to_name_one(
    ternmq_run: Any, tmp_path: Path
) -> None:
    path = write_config(tmp_path, LISTENER + "[plugins.retainer]\n[plugins.nosuch]\n")
    stderr = one_line_config_error(await ternmq_run("--config", path), path, "plugins.nosuch")
    assert stderr.startswith(
        f"ternmq: configuration error: {path}: [plugins.nosuch]: not a built-in plugin "
        "(acl, api, banned, cluster, passwd, redis_store, retainer, sqlite_store, sys, webhooks), not an entry point in group ternmq.plugins (installed: none) and not a "
        "dotted path"
    )
    assert "module:object" in stderr and "pip install PACKAGE" in stderr


PLUGIN_FAILURES = [
    # A module in plugin_path that raises while it is imported.
    (
        '[plugins."broken:Plugin"]\n',
        "broken.py",
        "RATE = 1 / 0\n",
        "plugins.broken:Plugin",
        "importing broken failed: division by zero",
    ),
    # A module nowhere on the broker's Python path.
    (
        '[plugins."nowhere:Plugin"]\n',
        None,
        None,
        "plugins.nowhere:Plugin",
        "cannot import nowhere: no module named 'nowhere'; the broker imports plugins itself",
    ),
    # A constructor that cannot read the file its (relative) key names.
    (
        '[plugins."reader:Plugin"]\nsource = "absent.txt"\n',
        "reader.py",
        "import attrs\nfrom pathlib import Path\n\n@attrs.frozen\nclass Config:\n    source: Path = Path('x')\n\n"
        "class Plugin:\n    Config = Config\n\n    def __init__(self, config):\n        config.source.read_text()\n",
        "plugins.reader:Plugin",
        "set-up failed: [Errno 2] No such file or directory: '{folder}/absent.txt'",
    ),
]


@pytest.mark.parametrize(
    ("table", "module", "code", "name", "message"),
    PLUGIN_FAILURES,
    ids=["fails-to-import", "not-found", "set-up-fails"],
)
async def test_a_plugin_that_cannot_load_is_a_one_line_configuration_error(
    ternmq_run: Any, tmp_path: Path, table: str, module: str | None, code: str | None, name: str, message: str
) -> None:
    folder = tmp_path / "etc"
    (folder / "plugins").mkdir(parents=True)
    if module is not None:
        (folder / "plugins" / module).write_text(code or "")
    path = write_config(folder, LISTENER.replace("[broker]\n", '[broker]\nplugin_path = ["plugins"]\n') + table)
    stderr = one_line_config_error(await ternmq_run("--config", path), path, name)
    assert message.format(folder=folder) in stderr


async def test_plugin_path_folder_that_does_not_exist_is_refused(ternmq_run: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, LISTENER.replace("[broker]\n", '[broker]\nplugin_path = ["plugins"]\n'))
    stderr = one_line_config_error(await ternmq_run("--config", path), path, "broker")
    assert stderr == f"ternmq: configuration error: {path}: [broker] plugin_path: no such folder: {tmp_path}/plugins\n"


async def test_plugin_path_folders_are_relative_to_the_configuration_file(ternmq: Any, tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    (folder / "plugins").mkdir(parents=True)
    (folder / "plugins" / "refuse_internal.py").write_text(
        "from ternmq.kernel import deny, hookimpl\n\n"
        "class Plugin:\n"
        "    @hookimpl\n"
        "    def auth_on_publish(self, message):\n"
        "        return deny(0x87, 'reserved') if message.topic.startswith('internal/') else None\n"
    )
    text = LISTENER.replace("[broker]\n", '[broker]\nallow_anonymous = true\nplugin_path = ["plugins"]\n')
    path = write_config(folder, text + '[plugins."refuse_internal:Plugin"]\n')
    async with ternmq("--config", path) as broker:  # its working directory is tmp_path, not tmp_path/etc
        port = int((await broker.ready())["default"]["port"])
        async with MQTTTestClient.open(port) as client:
            assert (await client.connect("c")).reason_code == 0
            assert (await client.publish("internal/x", b"1", qos=1)).reason_code == 0x87
            assert (await client.publish("public/x", b"1", qos=1)).reason_code < 0x80
        assert await broker.stop() == 0


async def test_tls_key_that_does_not_match_the_certificate_is_reported_under_keyfile(
    ternmq_run: Any, tmp_path: Path
) -> None:
    ours, theirs = trustme.CA().issue_cert("localhost"), trustme.CA().issue_cert("localhost")
    ours.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    theirs.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    path = write_config(
        tmp_path,
        '[broker]\ncontrol_socket = "off"\n[[listeners]]\nname = "secure"\ntype = "tls"\n'
        f'port = 0\ncertfile = "{tmp_path}/server.pem"\nkeyfile = "{tmp_path}/other.key"\n',
    )
    stderr = one_line_config_error(await ternmq_run("--config", path), path, "listeners.secure")
    assert stderr == (
        f"ternmq: configuration error: {path}: [listeners.secure] keyfile: the private key in "
        f"{tmp_path}/other.key does not match the certificate in {tmp_path}/server.pem\n"
    )
