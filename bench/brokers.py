"""Start and stop the three brokers the benchmark compares, each on 127.0.0.1 only.

Every broker gets the same limits where it has them: 32 QoS 1/2 messages in flight per
client and 1,000 queued messages per session (ternmq's defaults), anonymous clients,
no persistence, little logging. Each runs from a fresh temporary directory and is
stopped (SIGTERM, then SIGKILL) after every scenario.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
AMQTT_VENV = BENCH / ".venv-amqtt"
AMQTT_REQUIREMENT = "amqtt>=0.12,<0.13"
MOSQUITTO = "/usr/sbin/mosquitto"
MAX_INFLIGHT = 32
MAX_QUEUED = 1000
NAMES = ("ternmq", "mosquitto", "amqtt")
# Not a broker: floor.py's trio-raw server (accept, fixed CONNACK, close), which run.py
# measures beside ternmq in the connects scenario. It answers nothing but CONNECT.
FLOOR = "trio-raw"


def revision_of(name: str) -> str | None:
    """REV of "ternmq@REV": ternmq as it was at that git revision (a tag, a commit,
    HEAD~3), run beside today's in the same run for a before/after comparison."""
    return name.partition("@")[2] or None if name.startswith("ternmq@") else None


def is_ternmq(name: str) -> bool:
    return name == "ternmq" or revision_of(name) is not None


def export_revision(rev: str, into: Path) -> Path:
    """The package tree of ternmq at ``rev`` (kernel/, plugins/, api/ laid out as
    ternmq.kernel...) under ``into``; the directory to put on PYTHONPATH."""
    src = into / "src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    package = into / "tree" / "ternmq"
    package.mkdir(parents=True)
    for module in (src / "ternmq").glob("*.py"):
        shutil.copy(module, package)
    for folder in ("kernel", "plugins", "api"):
        if (src / folder).is_dir():
            shutil.copytree(src / folder, package / folder)
    return into / "tree"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_amqtt_venv(log=print) -> Path:
    """bench/.venv-amqtt with amqtt 0.12.x, created on first use; returns its `amqtt`."""
    exe = AMQTT_VENV / "bin" / "amqtt"
    if exe.exists():
        return exe
    log(f"creating {AMQTT_VENV.relative_to(ROOT)} and installing {AMQTT_REQUIREMENT} (once)...")
    subprocess.run([sys.executable, "-m", "venv", str(AMQTT_VENV)], check=True)
    subprocess.run(
        [str(AMQTT_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", AMQTT_REQUIREMENT], check=True
    )
    return exe


def version_of(name: str) -> str:
    try:
        if (rev := revision_of(name)) is not None:
            described = subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True
            ).stdout.strip()
            return f"at {rev} ({described or '?'})"
        if name == "ternmq":
            from ternmq import __version__

            rev = subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
            return f"{__version__} ({rev})" if rev else __version__
        if name == "mosquitto":
            out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True)
            return (out.stdout + out.stderr).split("\n")[0].replace("mosquitto version ", "")
        if name == FLOOR:
            import trio

            return f"(bench/floor.py on trio {trio.__version__})"
        if name == "amqtt":
            out = subprocess.run([str(AMQTT_VENV / "bin" / "amqtt"), "--version"], capture_output=True, text=True)
            return out.stdout.strip()
    except Exception as exc:  # a version string is decoration, never a reason to fail
        return f"? ({exc})"
    return "?"


class Broker:
    """One running broker process."""

    def __init__(self, name: str, cpus: set[int] | None = None) -> None:
        if name not in NAMES and name != FLOOR and revision_of(name) is None:
            raise ValueError(f"unknown broker {name!r} (known: {', '.join(NAMES)}, {FLOOR}, ternmq@REV)")
        self.name = name
        self.cpus = cpus
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name.replace('/', '_')}-"))
        self.env: dict[str, str] | None = None  # the broker's environment, if not ours
        self.proc: subprocess.Popen | None = None
        self.log_path = self.tmp / "broker.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:
        t, port = self.tmp, self.port
        if self.name == FLOOR:
            return [sys.executable, str(BENCH / "floor.py"), "--serve", FLOOR, "--listen", str(port)]
        if is_ternmq(self.name):
            if (rev := revision_of(self.name)) is not None:
                self.env = {**os.environ, "PYTHONPATH": str(export_revision(rev, t))}
            (t / "ternmq.toml").write_text(
                "[broker]\n"
                'node_name = "bench@127.0.0.1"\n'
                "allow_anonymous = true\n"
                f'data_dir = "{t / "data"}"\n'
                f'control_socket = "{t / "ctl.sock"}"\n'
                "\n[broker.limits]\n"
                f"max_inflight = {MAX_INFLIGHT}\n"
                f"max_queued_messages = {MAX_QUEUED}\n"
                "\n[[listeners]]\n"
                'name = "default"\n'
                'type = "tcp"\n'
                'address = "127.0.0.1"\n'
                f"port = {port}\n"
                "max_connections = 100000\n"
                "\n[plugins.retainer]\n"
                "enabled = true\n"
            )
            return [
                sys.executable,
                "-m",
                "ternmq.kernel",
                "--config",
                str(t / "ternmq.toml"),
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
        if self.name == "mosquitto":
            (t / "mosquitto.conf").write_text(
                f"listener {port} 127.0.0.1\n"
                "allow_anonymous true\n"
                f"max_inflight_messages {MAX_INFLIGHT}\n"
                f"max_queued_messages {MAX_QUEUED}\n"
                "persistence false\n"
                # trio and asyncio set TCP_NODELAY on every socket; mosquitto only if asked.
                "set_tcp_nodelay true\n"
                "log_dest stderr\n"
                "log_type error\n"
                "log_type warning\n"
            )
            return [MOSQUITTO, "-c", str(t / "mosquitto.conf")]
        exe = ensure_amqtt_venv()
        # amqtt has no in-flight or queue limits to set; only the anonymous-auth plugin
        # is loaded (no $SYS, no packet/event logger plugins).
        (t / "amqtt.yaml").write_text(
            "listeners:\n"
            "  default:\n"
            "    type: tcp\n"
            f"    bind: 127.0.0.1:{port}\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        return [str(exe), "-c", str(t / "amqtt.yaml")]

    def start(self, ready_timeout: float = 30.0) -> None:
        argv = self.argv()
        cpus = self.cpus

        def setup() -> None:
            import resource

            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            if cpus:
                os.sched_setaffinity(0, cpus)

        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
            env=self.env,
            preexec_fn=setup,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if _mqtt_ready(self.port):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not accept MQTT connections within {ready_timeout} s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _mqtt_ready(port: int) -> bool:
    """A CONNECT gets a CONNACK with return code 0."""
    from loadgen import DISCONNECT, connect_packet

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(connect_packet("bench-ready", 60))
            data = b""
            while len(data) < 4:
                chunk = s.recv(4 - len(data))
                if not chunk:
                    return False
                data += chunk
            s.sendall(DISCONNECT)
            return data[0] == 0x20 and data[3] == 0
    except OSError:
        return False
