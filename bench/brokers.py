"""Start and stop the three brokers the benchmark compares, each on 127.0.0.1 only.

Every broker gets the same limits where it has them: 32 QoS 1/2 messages in flight per
client and 1,000 queued messages per session (ternmq's defaults), anonymous clients,
no persistence, little logging. Each runs from a fresh temporary directory and is
stopped (SIGTERM, then SIGKILL) after every scenario.

Cluster mode: ``ternmq-workersN`` is ternmq run as ``ternmq --workers N`` (a supervisor
and N worker processes sharing the port, each a node of a ``[cluster]``), with a
redis-server of its own (:class:`Redis`: a free port, no persistence, in the broker's
temporary directory). The forward scenario runs two plain ternmq nodes on one Redis
(``Broker("ternmq", redis=..., node="node1")``).
"""

from __future__ import annotations

import json
import os
import re
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
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# Not a broker: floor.py's trio-raw server (accept, fixed CONNACK, close), which run.py
# measures beside ternmq in the connects scenario. It answers nothing but CONNECT.
FLOOR = "trio-raw"


def revision_of(name: str) -> str | None:
    """REV of "ternmq@REV": ternmq as it was at that git revision (a tag, a commit,
    HEAD~3), run beside today's in the same run for a before/after comparison."""
    return name.partition("@")[2] or None if name.startswith("ternmq@") else None


def workers_of(name: str) -> int | None:
    """N of "ternmq-workersN" (N >= 2): ``ternmq --workers N``, today's tree."""
    m = re.fullmatch(r"ternmq-workers(\d+)", name)
    return int(m.group(1)) if m and int(m.group(1)) >= 2 else None


def is_ternmq(name: str) -> bool:
    return name == "ternmq" or revision_of(name) is not None or workers_of(name) is not None


def known(name: str) -> bool:
    return name in NAMES or revision_of(name) is not None or workers_of(name) is not None


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
        if name == "ternmq" or workers_of(name):
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
        if name == "redis":
            out = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True)
            return out.stdout.split(" v=")[1].split()[0] if " v=" in out.stdout else out.stdout.strip()
    except Exception as exc:  # a version string is decoration, never a reason to fail
        return f"? ({exc})"
    return "?"


class Redis:
    """A redis-server for a cluster under test: 127.0.0.1, a free port, no RDB snapshots
    and no AOF, its files in a temporary directory of its own; stopped (and the directory
    removed) by :meth:`stop`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, ready_timeout: float = 10.0) -> None:
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.tmp), "--daemonize", "no", "--logfile", str(self.tmp / "redis.log")]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self.tmp
        )
        deadline = time.monotonic() + ready_timeout
        while not _redis_ready(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        _terminate(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _redis_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _terminate(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def listening_sockets(port: int) -> int:
    """Sockets in LISTEN state on 127.0.0.1:``port`` (one per worker with SO_REUSEPORT)."""
    hexport = f":{port:04X}"
    count = 0
    try:
        with open("/proc/net/tcp") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[1].endswith(hexport) and fields[3] == "0A":
                    count += 1
    except OSError:
        return 0
    return count


class Broker:
    """One running broker (for ternmq-workersN: the supervisor and its workers).

    ``redis``: the Redis of a cluster this ternmq is a node of (``node`` names it); a
    ternmq-workersN without one starts its own, stopped with it."""

    def __init__(
        self, name: str, cpus: set[int] | None = None, redis: Redis | None = None, node: str | None = None
    ) -> None:
        if not known(name) and name != FLOOR:
            raise ValueError(
                f"unknown broker {name!r} (known: {', '.join(NAMES)}, {FLOOR}, ternmq@REV, ternmq-workersN)"
            )
        if (redis is not None or node is not None) and not is_ternmq(name):
            raise ValueError(f"{name} cannot be a node of a ternmq cluster")
        self.name = name
        self.cpus = cpus
        self.workers = workers_of(name) or 1
        self.node = node or "bench"
        self.redis = redis
        self.own_redis = self.workers > 1 and redis is None
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
            cluster = f'\n[cluster]\nredis_url = "{self.redis.url}"\n' if self.redis is not None else ""
            (t / "ternmq.toml").write_text(
                "[broker]\n"
                f'node_name = "{self.node}@127.0.0.1"\n'
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
                "enabled = true\n" + cluster
            )
            # BENCH_CPROFILE=DIR: each ternmq process under cProfile, its stats written to
            # DIR/NODE.prof when it stops (a look inside, not a measurement: cProfile slows it).
            profile = os.environ.get("BENCH_CPROFILE")
            return [
                sys.executable,
                *(["-m", "cProfile", "-o", f"{profile}/{self.node}.prof"] if profile else []),
                "-m",
                "ternmq.kernel",
                "--config",
                str(t / "ternmq.toml"),
                "--port",
                str(port),
                "--log-level",
                "warning",
                *(["--workers", str(self.workers)] if self.workers > 1 else []),
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
        if self.own_redis:
            self.redis = Redis()
            self.redis.start()
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
            # Workers: every one of them listens (SO_REUSEPORT), not just the first.
            if (self.workers == 1 or listening_sockets(self.port) >= self.workers) and _mqtt_ready(self.port):
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

    def control_sockets(self) -> list[Path]:
        """ternmq's control socket(s): one per worker (``ctl.sock-K``) with workers."""
        if self.workers > 1:
            return [self.tmp / f"ctl.sock-{k}" for k in range(1, self.workers + 1)]
        return [self.tmp / "ctl.sock"]

    def metrics(self) -> list[dict[str, float]]:
        """Each node's counters and gauges (``ternmq-admin metrics show``), one dict per
        worker; [] for a broker that is not ternmq or does not answer."""
        if not is_ternmq(self.name):
            return []
        nodes = []
        for number, path in enumerate(self.control_sockets(), start=1):
            # `metrics show` sums over the whole cluster where it can: `--node` keeps the
            # node behind this socket (a revision without that flag shows its own anyway).
            name = f"{self.node}-{number}@127.0.0.1" if self.workers > 1 else f"{self.node}@127.0.0.1"
            for flags in ([f"--node={name}"], []):
                out = subprocess.run(
                    [sys.executable, "-m", "ternmq.kernel.admin_cli", "--socket", str(path), "--format=json"]
                    + ["metrics", "show", *flags],
                    capture_output=True,
                    text=True,
                    env=self.env,
                    cwd=self.tmp,
                    timeout=20,
                )
                try:
                    text = json.loads(out.stdout)["text"]
                    break
                except (ValueError, KeyError, TypeError):
                    continue
            else:
                return []
            values = {}
            for line in text.splitlines():
                key, _, value = line.partition(" = ")
                try:
                    values[key.strip()] = float(value)
                except ValueError:
                    pass
            nodes.append(values)
        return nodes

    def stop(self) -> None:
        _terminate(self.proc)
        if self.own_redis and self.redis is not None:
            self.redis.stop()
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
