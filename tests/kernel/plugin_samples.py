"""Sample plugins and helpers for the plugin manager, admin and ternmq-admin tests.

The plugins are loaded by dotted path (``plugin_samples:SamplePlugin``): this directory
is on ``sys.path`` while pytest runs the tests next to it, and the tests that start a
broker subprocess put it on that process's ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.lowlevel

from ternmq.kernel import hookimpl
from ternmq.kernel.values.output import Text
from ternmq.kernel.values.types import ClientInfo, Message, allow, deny

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
THIRD_PARTY = REPO / "examples" / "third_party"

# Plugins that record into a shared list (the priority test reads the calling order).
CALL_ORDER: list[str] = []


@attrs.frozen
class SampleConfig:
    greeting: str = "hello"
    limit: int = 3


class SamplePlugin:
    """A plugin object with typed settings, a notification hook and an admin command."""

    Config = SampleConfig

    def __init__(self, config: SampleConfig) -> None:
        self.config = config
        self.published: list[str] = []

    @hookimpl
    def on_publish(self, client: ClientInfo, message: Message) -> None:
        self.published.append(message.topic)

    @hookimpl
    def register_admin_commands(self, registry: Any) -> None:
        registry.describe("sample", "Commands of the sample plugin.")
        registry.add("sample hello", self._hello, help="Say the configured greeting.", flags={"name": "who to greet"})

    def _hello(self, broker: Any, args: Any) -> Text:
        return Text(f"{self.config.greeting}, {args.flag('name', 'world')}")


READY_MADE = SamplePlugin(SampleConfig(greeting="built by its module"))


@attrs.frozen
class TagConfig:
    tag: str = ""


class Recorder:
    """auth_on_register with no opinion; appends its tag to CALL_ORDER when asked."""

    Config = TagConfig

    def __init__(self, config: TagConfig) -> None:
        self.config = config

    @hookimpl
    def auth_on_register(self, client: ClientInfo) -> None:
        CALL_ORDER.append(self.config.tag)


class Misspelt:
    """A typo in a hook name: must fail the load, not be silently ignored."""

    @hookimpl
    def auth_on_registr(self, client: ClientInfo) -> None:  # sic
        return None


class Server:
    """A plugin with ``serve``: a TCP listener and a child task in its own scope."""

    def __init__(self) -> None:
        self.port = 0
        self.stopped = False
        self.child_cancelled = False
        self.accepted = 0

    async def serve(self, broker: Any, *, task_status: Any) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._child)
                task_status.started()
                await trio.serve_listeners(self._handle, listeners)
        finally:
            self.stopped = True
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _child(self) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.child_cancelled = True
            raise

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        async with stream:
            await stream.send_all(b"hi\n")


class BrokenServe:
    """``serve`` fails before it reports started (its database is unreachable)."""

    @hookimpl
    def on_publish(self, client: ClientInfo, message: Message) -> None:
        return None

    async def serve(self, broker: Any, *, task_status: Any) -> None:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("database unreachable")


@attrs.frozen
class AnswerConfig:
    code: int = 0x97
    delay: float = 0.0
    client_id: str = ""  # "" = every client; else only this one


class SlowDenier:
    """auth_on_publish: after ``delay`` seconds refuses with ``code`` (a recognisable answer)."""

    Config = AnswerConfig

    def __init__(self, config: AnswerConfig) -> None:
        self.config = config
        self.calls = 0
        self.entered = trio.Event()

    @hookimpl
    async def auth_on_publish(self, client: ClientInfo, message: Message) -> Any:
        if self.config.client_id and client.client_id != self.config.client_id:
            return None
        self.calls += 1
        self.entered.set()
        await trio.sleep(self.config.delay)
        return deny(self.config.code, "slow answer")


class Hanger:
    """auth_on_publish never answers for ``client_id`` (every client when empty)."""

    Config = AnswerConfig

    def __init__(self, config: AnswerConfig) -> None:
        self.config = config
        self.calls = 0

    @hookimpl
    async def auth_on_publish(self, client: ClientInfo, message: Message) -> Any:
        if self.config.client_id and client.client_id != self.config.client_id:
            return None
        self.calls += 1
        await trio.sleep_forever()


class Failer:
    """auth_on_publish raises every time; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def auth_on_publish(self, client: ClientInfo, message: Message) -> Any:
        self.calls += 1
        raise RuntimeError("auth backend down")


@attrs.frozen
class PasswordConfig:
    password: str = "secret"


class PasswordAuth:
    """auth_on_register: the configured password is allowed, anything else refused."""

    Config = PasswordConfig

    def __init__(self, config: PasswordConfig) -> None:
        self.config = config

    @hookimpl
    def auth_on_register(self, client: ClientInfo, password: bytes | None) -> Any:
        if password == self.config.password.encode():
            return allow()
        return deny(0x86, "bad username or password")


@attrs.frozen
class UsersFileConfig:
    users_file: Path


class UsersFile:
    """auth_on_register from a JSON file of {username: password}, read when built: a file
    that does not parse fails the load (or the reload)."""

    Config = UsersFileConfig

    def __init__(self, config: UsersFileConfig) -> None:
        self.users: dict[str, str] = json.loads(config.users_file.read_text())

    @hookimpl
    def auth_on_register(self, client: ClientInfo, password: bytes | None) -> Any:
        if client.username in self.users:
            return allow() if password == self.users[client.username].encode() else deny(0x86)
        return None


# -- the third-party example, installed as a user would, outside this environment ------


_install_lock = threading.Lock()
_json_auth_site: Path | None = None


def json_auth_site(tmp_path_factory: Any) -> Path:
    """A folder with examples/third_party installed in it by ``pip install --target``
    (its module and its dist-info, which holds the entry point), once per test session.

    Nothing is installed into this environment, so the test run leaves it as it found
    it: a test puts the folder on a broker subprocess's ``PYTHONPATH``, or on
    ``sys.path`` (importlib.metadata finds entry points in any dist-info on sys.path).
    The package is built from a copy, so that the build leaves nothing (build/,
    *.egg-info) in the work tree. ``--no-build-isolation`` when this environment can
    build a wheel itself; otherwise pip fetches setuptools into an isolated build.
    """
    global _json_auth_site
    with _install_lock:
        if _json_auth_site is not None:
            return _json_auth_site
        site = Path(tmp_path_factory.mktemp("json_auth_site"))
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "third_party"
            shutil.copytree(
                THIRD_PARTY,
                source,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".pytest_cache", "tests"),
            )
            command = [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                "--no-compile",
                "--target",
                str(site),
            ]
            if _can_build_wheels_in_place():
                command.append("--no-build-isolation")
            result = subprocess.run(
                command + [str(source)], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
            )
        if result.returncode != 0:
            raise RuntimeError(f"installing examples/third_party failed:\n{result.stdout}\n{result.stderr}")
        assert list(site.glob("ternmq_json_auth-*.dist-info")), list(site.iterdir())
        _json_auth_site = site
        return site


def _can_build_wheels_in_place() -> bool:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
    if (major, minor) >= (70, 1):
        return True  # bdist_wheel is part of setuptools
    if major < 69:
        return False  # the example's build-system asks setuptools>=69
    try:
        importlib.metadata.version("wheel")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# -- a real broker process -------------------------------------------------------------


READY = re.compile(r"listener (\S+) \((\w+)\) ready on ([^:\s]+):(\d+)")


class BrokerProcess:
    """``ternmq ...`` as a subprocess; its log (stderr) is read by a thread.

    ``ports`` maps each listener name to its bound port once ``wait_ready`` returned.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        listeners: int = 1,
    ) -> None:
        self.argv = list(argv)
        self.env = env
        self.log: list[str] = []
        self.ports: dict[str, int] = {}
        self._expected = listeners
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            ["ternmq", *self.argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._lock:
                self.log.append(line)
                match = READY.search(line)
                if match:
                    self.ports[match.group(1)] = int(match.group(4))
                    if len(self.ports) >= self._expected:
                        self._ready.set()
        self._ready.set()  # the process ended: wake a waiter

    def wait_ready(self, timeout: float = 15.0) -> dict[str, int]:
        self._ready.wait(timeout)
        if len(self.ports) < self._expected:
            raise AssertionError(f"ternmq did not become ready (exit {self.process.poll()}):\n{self.text()}")
        return self.ports

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    def text(self) -> str:
        with self._lock:
            return "".join(self.log)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return self.process.returncode

    def __enter__(self) -> BrokerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def admin(*argv: str, env: dict[str, str] | None = None, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``ternmq-admin ARGV...`` and return what it printed and its exit code."""
    return subprocess.run(
        ["ternmq-admin", *argv], capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL
    )


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A new, short temporary directory (pytest's tmp_path can make socket paths too long)."""
    path = Path(tempfile.mkdtemp(prefix="tmq-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def subprocess_env(runtime_dir: Path, *, pythonpath: Sequence[Path] = (), **extra: str) -> dict[str, str]:
    """The environment of a broker/admin subprocess: this directory (and ``pythonpath``)
    importable, ``XDG_RUNTIME_DIR`` (where the default control socket goes) set to
    ``runtime_dir``.

    Keep ``runtime_dir`` short where the default socket is used: a Unix socket path
    has at most 107 bytes (see :func:`short_dir`)."""
    env = dict(os.environ)
    folders = [str(HERE), *(str(folder) for folder in pythonpath), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, folders))
    env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


async def v311_connack_return_code(
    port: int, client_id: str, username: str | None = None, password: bytes | None = None
) -> int:
    """CONNECT as an MQTT 3.1.1 client and return the CONNACK return code from the wire."""
    from ternmq.kernel.codec import Connect, encode

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(encode(Connect(client_id, 4, True, 60, username, password, None, {}, "MQTT"), 4))
        data = b""
        with trio.fail_after(5):
            while len(data) < 4:
                chunk = await stream.receive_some(4 - len(data))
                if not chunk:
                    break
                data += chunk
    assert data[:2] == b"\x20\x02", data
    return data[3]


@contextlib.contextmanager
def broker_with_control_socket(
    directory: Path, node_name: str, socket: Path, *, pythonpath: Sequence[Path] = (), cwd: Path | None = None
) -> Iterator[tuple[BrokerProcess, Path, dict[str, str]]]:
    """``ternmq --config`` in a subprocess (anonymous clients, retainer on, port 0)
    whose control socket is ``socket``: (process, config file, environment), ready.

    The config file is in ``directory``, which is also the working directory unless
    ``cwd`` says otherwise; ``pythonpath`` goes on the broker's PYTHONPATH."""
    config = directory / "plugins.toml"
    config.write_text(f'''
[broker]
node_name = "{node_name}"
allow_anonymous = true
control_socket = "{socket}"

[[listeners]]
name = "default"
port = 0

[plugins.retainer]
''')
    env = subprocess_env(directory, pythonpath=pythonpath)
    # Imported here: broker subprocesses import this module without tests/ on their path.
    from helpers import eventually_sync

    with BrokerProcess(["--config", str(config)], env=env, cwd=cwd or directory) as process:
        process.wait_ready()
        eventually_sync(socket.exists, 10, message=f"{socket} did not appear")
        yield process, config, env
