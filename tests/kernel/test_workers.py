"""``ternmq --workers N``: a supervisor and N broker processes sharing one port.

The process tests run the real ``ternmq`` console script (test_cli.py's ``ternmq``
fixture) with two workers, nodes of a cluster over a redis-server of this module's own
(a free port, nothing saved), on one fixed free port. The workers' pids come from the
supervisor's log; a process counts as gone once it no longer exists or is a zombie
(after the supervisor is killed, the workers' new parent may not reap them). Every test
kills the workers it started, should it fail before they are gone.

The configuration checks run in this process (apply_workers, worker_config), and a
few of them through the console script too, for their one-line errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from ternmq.kernel.codec import Publish
from ternmq.kernel.testing import MQTTTestClient
from ternmq.kernel.values.config import ConfigError, load_config
from ternmq.kernel.workers import apply_workers, worker_config, worker_node_name

import test_cli
from helpers import eventually, free_port
from test_cli import TernmqProcess, one_line_config_error, write_config

# test_cli.py's fixtures (the console script with a short XDG_RUNTIME_DIR), here too.
ternmq, ternmq_run, run_env, runtime_dir = test_cli.ternmq, test_cli.ternmq_run, test_cli.run_env, test_cli.runtime_dir

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers share ports the Linux way")

STARTED = re.compile(r"worker (?P<number>\d+) \(pid (?P<pid>\d+), node (?P<node>\S+)\) started")
CONTROL = r"\[worker (\d)\] ternmq\.control: control socket for ternmq-admin: (\S+)"
READY = r"\[worker (\d)\] ternmq\.listeners: listener default \(tcp\) ready on 127\.0\.0\.1:(\d+)"
ADMIN = (
    str(Path(sys.executable).parent / "ternmq-admin")
    if (Path(sys.executable).parent / "ternmq-admin").exists()
    else "ternmq-admin"
)


# -- Redis and the configuration -----------------------------------------------------------


def cluster_config(tmp_path: Path, redis_url: str, port: int, *, prefix: str, extra: str = "") -> str:
    """Two workers' configuration: the default control sockets (named after each
    worker's node), the store and the retainer, the API (worker 1 only)."""
    return write_config(
        tmp_path,
        f"""
[broker]
node_name = "tq@127.0.0.1"
allow_anonymous = true
{extra}
[[listeners]]
name = "default"
port = {port}

[plugins.sqlite_store]
[plugins.retainer]
[plugins.api]
port = 0

[cluster]
redis_url = "{redis_url}"
prefix = "{prefix}"
heartbeat_interval = 0.2
node_timeout = 2.0
""",
    )


# -- processes ----------------------------------------------------------------------------


def gone(pid: int) -> bool:
    """The process no longer runs: it does not exist, or is a zombie nobody reaped yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


@attrs.define
class Workers:
    """A running ``ternmq --workers 2`` and what its log says about its workers."""

    supervisor: TernmqProcess
    port: int
    pids: dict[int, int]  # worker number -> pid
    sockets: dict[int, str]  # worker number -> control socket


@contextlib.asynccontextmanager
async def two_workers(ternmq: Any, config: str, port: int, runtime_dir: str) -> AsyncIterator[Workers]:
    """``ternmq --config CONFIG --workers 2``, once both workers are ready; any worker
    still there at the end is killed (the test has failed by then)."""
    pids: dict[int, int] = {}
    try:
        async with ternmq("--config", config, "--workers", "2") as supervisor:
            started = await supervisor.wait_for_stderr(STARTED.pattern, 2)
            pids.update({int(m["number"]): int(m["pid"]) for m in started})
            ready = await supervisor.wait_for_stderr(READY, 2)
            assert sorted((int(m[1]), int(m[2])) for m in ready) == [(1, port), (2, port)]
            # Each worker's default control socket is named after its node.
            lines = await supervisor.wait_for_stderr(CONTROL, 2)
            sockets = {int(m[1]): m[2] for m in lines}
            folder = f"{runtime_dir}/ternmq-{os.getuid()}"
            assert sockets == {k: f"{folder}/tq-{k}@127.0.0.1.sock" for k in (1, 2)}
            await eventually(lambda: all(os.path.exists(path) for path in sockets.values()), 10)
            yield Workers(supervisor, port, pids, sockets)
    finally:
        for pid in pids.values():
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


async def admin(workers: Workers, number: int, *command: str, env: dict[str, str]) -> Any:
    """``ternmq-admin --socket <worker's socket> --format json COMMAND``'s result."""
    result = await trio.run_process(
        [ADMIN, "--socket", workers.sockets[number], "--format", "json", *command],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)["table"]


async def wait_gone(pids: Any, timeout: float = 15.0) -> None:
    await eventually(lambda: all(gone(pid) for pid in pids), timeout, message=f"workers {list(pids)} still run")


# -- the workers at work --------------------------------------------------------------------


async def test_two_workers_share_the_port_form_a_cluster_share_clients_and_stop_on_sigterm(
    ternmq: Any, tmp_path: Path, redis_url: str, runtime_dir: str, run_env: dict[str, str]
) -> None:
    port = free_port()
    config = cluster_config(tmp_path, redis_url, port, prefix="share")
    async with two_workers(ternmq, config, port, runtime_dir) as workers:
        # Both workers, seen from either one, as nodes of the cluster.
        for number in (1, 2):

            async def both_running(number: int = number) -> bool:
                rows = await admin(workers, number, "cluster", "show", env=run_env)
                return {(row["Node"], row["Running"]) for row in rows} == {
                    ("tq-1@127.0.0.1", True),
                    ("tq-2@127.0.0.1", True),
                }

            await eventually(both_running, 10, interval=0.1)
        # The API runs in worker 1 only: one management API line in the whole log.
        assert len(re.findall(r"\[worker 1\] ternmq\.api: management API on", workers.supervisor.stderr)) == 1
        assert "[worker 2] ternmq.api" not in workers.supervisor.stderr
        # Each worker its own store, under data_dir.
        assert (tmp_path / "data" / "worker-1" / "ternmq.db").exists()
        assert (tmp_path / "data" / "worker-2" / "ternmq.db").exists()

        async with contextlib.AsyncExitStack() as stack:
            clients = {}
            for index in range(20):
                client = await stack.enter_async_context(MQTTTestClient.open(port))
                connack = await client.connect(f"c{index:02}")
                assert connack.reason_code == 0
                clients[f"c{index:02}"] = client
            # The system spread them over both workers: each has some, together all
            # (session show lists every node's sessions, node status this node's).
            rows = await admin(workers, 1, "session", "show", "--client_id", "--node", env=run_env)
            where = {row["client_id"]: row["node"] for row in rows}
            assert sorted(where) == sorted(clients)
            online = {k: {c for c, node in where.items() if node == f"tq-{k}@127.0.0.1"} for k in (1, 2)}
            assert online[1] and online[2], online
            for number in (1, 2):
                status = {
                    row["Status"]: row["Value"] for row in await admin(workers, number, "node", "status", env=run_env)
                }
                assert status["node"] == f"tq-{number}@127.0.0.1"
                assert status["num_online"] == len(online[number])

            # A client on worker 2 publishes; a subscriber on worker 1 gets it.
            subscriber = clients[min(online[1])]
            publisher = clients[min(online[2])]
            await subscriber.subscribe("workers/t", qos=1)

            async def delivered() -> Publish | None:
                await publisher.publish("workers/t", b"across", qos=1)
                with trio.move_on_after(0.3):
                    return await subscriber.receive()
                return None

            message = await eventually(delivered, 10)
            assert (message.topic, message.payload) == ("workers/t", b"across")

        # SIGTERM to the supervisor: both workers stop, it exits 0, nobody is left.
        assert await workers.supervisor.stop(signal.SIGTERM, timeout=20) == 0
        await wait_gone(workers.pids.values(), 5)
        log = workers.supervisor.stderr
        assert "received SIGTERM, stopping the workers" in log
        assert all(f"[worker {number}] ternmq: received SIGTERM, shutting down" in log for number in (1, 2))
        assert "Traceback" not in log


async def test_sigkill_of_the_supervisor_makes_the_workers_stop(
    ternmq: Any, tmp_path: Path, redis_url: str, runtime_dir: str
) -> None:
    port = free_port()
    config = cluster_config(tmp_path, redis_url, port, prefix="kill")
    async with two_workers(ternmq, config, port, runtime_dir) as workers:
        assert await workers.supervisor.stop(signal.SIGKILL) == -signal.SIGKILL
        await wait_gone(workers.pids.values())
        # They stopped as on SIGTERM (the log is still theirs: they had the supervisor's stderr).
        await workers.supervisor.wait_for_stderr(r"the supervisor \(ternmq --workers\) is gone: shutting down", 2)


async def test_a_worker_that_dies_stops_the_others_and_the_supervisor_says_which(
    ternmq: Any, tmp_path: Path, redis_url: str, runtime_dir: str
) -> None:
    port = free_port()
    config = cluster_config(tmp_path, redis_url, port, prefix="die")
    async with two_workers(ternmq, config, port, runtime_dir) as workers:
        os.kill(workers.pids[2], signal.SIGKILL)
        with trio.fail_after(20):
            assert await workers.supervisor.process.wait() == 1
        await wait_gone(workers.pids.values(), 5)
        pid = workers.pids[2]
        assert (
            f"ERROR ternmq.workers: worker 2 (pid {pid}, node tq-2@127.0.0.1) ended on its own (killed by SIGKILL): "
            "stopping the other workers" in workers.supervisor.stderr
        )
        assert "[worker 1] ternmq: received SIGTERM, shutting down" in workers.supervisor.stderr


# -- configuration ----------------------------------------------------------------------------


def test_worker_node_names_put_the_number_before_the_at() -> None:
    assert worker_node_name("ternmq@127.0.0.1", 1) == "ternmq-1@127.0.0.1"
    assert worker_node_name("ternmq", 2) == "ternmq-2"


def test_worker_config_names_sockets_and_folders_after_the_worker_and_keeps_the_api_in_worker_1(
    tmp_path: Path,
) -> None:
    path = write_config(
        tmp_path,
        '[broker]\nworkers = 3\ncontrol_socket = "/run/tq.sock"\ndata_dir = "d"\n'
        '[[listeners]]\nname = "default"\nport = 1883\n[cluster]\nredis_url = "redis://127.0.0.1/0"\n'
        "[plugins.retainer]\n[plugins.api]\nport = 8888\n",
    )
    config = load_config(path)
    first, third = worker_config(config, 1), worker_config(config, 3)
    assert (first.broker.node_name, third.broker.node_name) == ("ternmq-1@127.0.0.1", "ternmq-3@127.0.0.1")
    assert (first.broker.control_socket, third.broker.control_socket) == ("/run/tq.sock-1", "/run/tq.sock-3")
    assert (first.broker.data_dir, third.broker.data_dir) == ("d/worker-1", "d/worker-3")
    assert [e.name for e in first.plugins] == ["cluster", "retainer", "api"]
    assert [e.name for e in third.plugins] == ["cluster", "retainer"]
    assert first.listeners == config.listeners and first.broker.workers == 3
    off = attrs.evolve(config, broker=attrs.evolve(config.broker, control_socket="off", node_name="n"))
    assert (worker_config(off, 2).broker.control_socket, worker_config(off, 2).broker.node_name) == ("off", "n-2")
    for number in (0, 4):
        with pytest.raises(ConfigError, match=rf"--worker {number}: this configuration runs 3 worker"):
            worker_config(config, number)


CLUSTER = '[cluster]\nredis_url = "redis://127.0.0.1:1/0"\n'


def configured(tmp_path: Path, broker: str = "", port: int = 1883, cluster: str = CLUSTER) -> str:
    return write_config(
        tmp_path,
        f'[broker]\ncontrol_socket = "off"\n{broker}\n[[listeners]]\nname = "default"\nport = {port}\n{cluster}',
    )


@pytest.mark.parametrize(
    ("broker", "port", "cluster", "workers", "table", "message"),
    [
        (
            "workers = 2",
            1883,
            "",
            None,
            "broker",
            "workers = 2: the workers are nodes of a cluster over Redis: add a [cluster] table",
        ),
        (
            "",
            1883,
            "",
            2,
            "broker",
            "--workers 2: the workers are nodes of a cluster over Redis: add a [cluster] table",
        ),
        ("workers = 2", 1883, CLUSTER + "enabled = false\n", None, "broker", "[cluster] has enabled = false"),
        ("workers = 0", 1883, CLUSTER, None, "broker", "[broker] workers: must be greater than 0"),
        ("", 1883, CLUSTER, 0, "broker", "[broker] workers: --workers must be at least 1, not 0"),
        (
            "workers = 2",
            0,
            CLUSTER,
            None,
            "listeners.default",
            "[listeners.default] port: port 0 (any free port) with workers = 2: the workers must share a known port",
        ),
        ("workers = 1", 0, CLUSTER, 3, "listeners.default", "port 0 (any free port) with --workers 3"),
    ],
    ids=["no-cluster", "no-cluster-option", "cluster-off", "zero", "zero-option", "port-0", "port-0-option"],
)
def test_refused_worker_configurations_name_file_table_and_key(
    tmp_path: Path, broker: str, port: int, cluster: str, workers: int | None, table: str, message: str
) -> None:
    path = configured(tmp_path, broker, port, cluster)
    with pytest.raises(ConfigError) as refused:
        apply_workers(load_config(path), workers)
    assert refused.value.table == table and message in str(refused.value)
    assert str(refused.value).startswith(f"{path}: [{table}] ")


def test_workers_option_overrides_the_file_both_ways(tmp_path: Path) -> None:
    two = load_config(configured(tmp_path, "workers = 2"))
    assert apply_workers(two, None).broker.workers == 2
    assert apply_workers(two, 1).broker.workers == 1
    assert apply_workers(load_config(configured(tmp_path, "", cluster="")), 1).broker.workers == 1
    assert apply_workers(load_config(configured(tmp_path)), 4).broker.workers == 4


@pytest.mark.parametrize(
    ("broker", "port", "cluster", "arguments", "table", "message"),
    [
        ("", 1883, "", ("--workers", "2"), "broker", "workers: --workers 2: the workers are nodes of a cluster"),
        ("workers = 0", 1883, CLUSTER, (), "broker", "workers: must be greater than 0"),
        ("workers = 2", 0, CLUSTER, (), "listeners.default", "port: port 0 (any free port) with workers = 2"),
    ],
    ids=["no-cluster", "zero", "port-0"],
)
async def test_refused_worker_configurations_are_one_line_errors_with_exit_code_2(
    ternmq_run: Any,
    tmp_path: Path,
    broker: str,
    port: int,
    cluster: str,
    arguments: tuple[str, ...],
    table: str,
    message: str,
) -> None:
    path = configured(tmp_path, broker, port, cluster)
    line = one_line_config_error(await ternmq_run("--config", path, *arguments), path, table)
    assert message in line


async def test_help_describes_workers_and_hides_the_internal_worker_option(ternmq_run: Any) -> None:
    result = await ternmq_run("--help")
    assert result.returncode == 0
    assert b"--workers N" in result.stdout and b"SO_REUSEPORT" in result.stdout
    assert b"--worker K" not in result.stdout


async def test_ternmq_admin_names_the_workers_sockets_of_a_workers_configuration(
    tmp_path: Path, run_env: dict[str, str], runtime_dir: str
) -> None:
    path = write_config(tmp_path, f'[broker]\nworkers = 2\nnode_name = "tq@h"\n[[listeners]]\nname = "d"\n{CLUSTER}')
    result = await trio.run_process(
        [ADMIN, "--config", path, "session", "show"], capture_stdout=True, capture_stderr=True, check=False, env=run_env
    )
    assert result.returncode == 2
    folder = f"{runtime_dir}/ternmq-{os.getuid()}"
    assert (
        f"name one with --socket PATH (worker 1: {folder}/tq-1@h.sock, worker 2: {folder}/tq-2@h.sock)"
        in result.stderr.decode()
    )
