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

from ternmq.kernel.codec import Disconnect
from ternmq.kernel.testing import MQTTTestClient

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

    async def wait_for_stderr(self, pattern: str, count: int = 1, timeout: float = START_TIMEOUT) -> list[re.Match[str]]:
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
        process = await trio.lowlevel.open_process([*argv0, *args], stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                   cwd=tmp_path, env=run_env)
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
            return await trio.run_process([TERNMQ, *args], capture_stdout=True, capture_stderr=True,
                                          check=False, cwd=tmp_path, env=run_env)

    return run


def write_config(tmp_path: Path, text: str, name: str = "ternmq.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def mosquitto_round_trip(mosquitto: Any, port: int, topic: str = "cli/t", payload: str = "hi") -> None:
    """mosquitto_sub receives what mosquitto_pub publishes (published until the sub got it)."""
    async with trio.open_nursery() as nursery:
        result: list[bytes] = []

        async def subscribe() -> None:
            done = await mosquitto("mosquitto_sub", "-p", str(port), "-t", topic, "-C", "1", "-W", "8")
            result.append(done.stdout)
            nursery.cancel_scope.cancel()

        nursery.start_soon(subscribe)
        with trio.fail_after(8):
            while True:
                await mosquitto("mosquitto_pub", "-p", str(port), "-t", topic, "-m", payload)
                await trio.sleep(0.1)
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
        ternmq: Any, tmp_path: Path, mosquitto: Any) -> None:
    path = write_config(tmp_path, """
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
""")
    async with ternmq("--config", path) as broker:
        ready = await broker.ready(3)
        assert {name: (line["type"], line["path"]) for name, line in ready.items()} == {
            "first": ("tcp", ""), "second": ("tcp", ""), "web": ("ws", "/mqtt")}
        for name in ("first", "second"):
            await mosquitto_round_trip(mosquitto, int(ready[name]["port"]), topic=f"on/{name}", payload=name)
        url = f"ws://127.0.0.1:{ready['web']['port']}/mqtt"
        async with trio_websocket.open_websocket_url(url, subprotocols=["mqtt"]) as websocket:
            assert websocket.subprotocol == "mqtt"
        assert await broker.stop() == 0
    assert len(READY.findall(broker.stderr)) == 3


async def test_host_and_port_override_only_the_first_listener(ternmq: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, """
[broker]
control_socket = "off"
[[listeners]]
name = "first"
address = "192.0.2.1"
port = 1
[[listeners]]
name = "second"
port = 0
""")
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
    ("[broker.limits]\nmax_inflight = \"many\"\n", "[broker.limits] max_inflight: must be an integer"),
    ("[broker.limits]\nmax_inflight = 0\n", "[broker.limits] max_inflight: must be between 1 and 65535"),
    ('[[listeners]]\nname = "edge"\ntype = "quic"\n', "[listeners.edge] type: must be one of"),
    ('[[listeners]]\nname = "edge"\ntype = "tls"\nport = 0\n', "[listeners.edge] certfile: a tls listener needs"),
    ("[mqtt]\nport = 1883\n", "[mqtt]: unknown table"),
    ('[broker\nnode_name = "x"\n', "not valid TOML"),
    ('[broker]\ncontrol_socket = "off"\n[[listeners]]\nname = "edge"\ntype = "tls"\nport = 0\n'
     'certfile = "absent.pem"\nkeyfile = "absent.key"\n', "[listeners.edge] certfile: no such file: absent.pem"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS,
                         ids=["unknown-key", "wrong-type", "out-of-range", "bad-listener-type", "tls-no-certfile",
                              "unknown-table", "invalid-toml", "certfile-not-found"])
async def test_bad_config_exits_non_zero_naming_file_table_and_key(
        ternmq_run: Any, tmp_path: Path, text: str, message: str) -> None:
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
    assert result.stderr.decode() == f"ternmq: configuration error: {path}: cannot read the file: No such file or directory\n"


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
