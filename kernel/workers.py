"""``ternmq --workers N``: N broker processes on one machine, acting as one broker.

With ``[broker] workers`` (or ``--workers``) above 1, the ``ternmq`` process is a
supervisor and runs no broker itself. It starts N workers, each
``python -m ternmq.kernel <its own arguments> --worker K``: a whole broker and a node of
the ``[cluster]`` (hence workers > 1 needs one), configured by :func:`worker_config`:

* node name: ``node_name`` with ``-K`` before the ``@`` (``ternmq-1@127.0.0.1``), so
  the default control socket is the worker's own; an explicit ``control_socket`` path
  gets ``-K`` appended;
* data directory: ``<data_dir>/worker-K``, as any node of a cluster has its own (two
  processes restoring the sessions of one store would both own them);
* plugins: all of them, except the management API (``[plugins.api]``), which runs in
  worker 1 only: its port is not shared.

Every listening socket of a worker has SO_REUSEPORT (kernel/transport/rawstream.py), so
the workers share each listener's port and Linux spreads new connections over them;
hence a listener's port may not be 0 (each worker would get a port of its own).

The supervisor forwards SIGTERM and SIGINT to the workers and waits for them (killing
those still there after ``STOP_TIMEOUT``); a worker that ends on its own makes it stop
the others and exit non-zero, saying which worker ended and how. Each worker runs in a
process group of its own, so that a Ctrl-C in a terminal reaches it once, through the
supervisor.

No worker outlives the supervisor, however it ends: a worker's stdin is a pipe from the
supervisor, and the worker stops when it closes (:func:`watch_supervisor`), which the
system does when the supervisor exits, SIGKILL included. Chosen over
``prctl(PR_SET_PDEATHSIG)``: that signal comes when the *thread* that started the child
ends, and trio starts processes from a thread of its cache, which ends when idle (the
workers would be killed some seconds later, at random); it is Linux-only, through
ctypes, and misses a supervisor that died before the child called prctl. A closed pipe
is portable, has no race, and lets the worker stop as on SIGTERM, through its own
shutdown.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import attrs
import trio

from .values.config import Config, ConfigError

log = logging.getLogger("ternmq.workers")

#: The plugin that runs in worker 1 only: the management API listens on a port of its own.
FIRST_WORKER_ONLY = ("api",)
STOP_TIMEOUT = 30.0  # seconds the workers have to stop before they are killed
KILL_AFTER = 5.0  # seconds between SIGTERM and SIGKILL when a worker is cancelled


# -- configuration ----------------------------------------------------------------------


def apply_workers(config: Config, workers: int | None) -> Config:
    """``--workers`` (if given) over ``[broker] workers``, then the checks of a
    configuration with several workers (:class:`ConfigError` naming what is wrong)."""
    source = config.source
    if workers is not None:
        if workers < 1:
            raise ConfigError(source, "broker", "workers", f"--workers must be at least 1, not {workers}")
        config = attrs.evolve(config, broker=attrs.evolve(config.broker, workers=workers))
    count = config.broker.workers
    if count == 1:
        return config
    given = f"--workers {count}" if workers is not None else f"workers = {count}"
    cluster = next((entry for entry in config.plugins if entry.name == "cluster"), None)
    if cluster is None or not cluster.enabled:
        fix = "add a [cluster] table" if cluster is None else "[cluster] has enabled = false"
        raise ConfigError(source, "broker", "workers", f"{given}: the workers are nodes of a cluster over Redis: {fix}")
    if not sys.platform.startswith("linux"):
        raise ConfigError(
            source, "broker", "workers", f"{given}: the workers share ports through Linux's SO_REUSEPORT (Linux only)"
        )
    for listener in config.listeners:
        if listener.port == 0:
            raise ConfigError(
                source,
                f"listeners.{listener.name}",
                "port",
                f"port 0 (any free port) with {given}: the workers must share a known port; give one",
            )
    return config


def worker_node_name(node_name: str, number: int) -> str:
    """``ternmq@127.0.0.1`` -> ``ternmq-1@127.0.0.1``; ``ternmq`` -> ``ternmq-1``."""
    name, at, host = node_name.partition("@")
    return f"{name}-{number}{at}{host}"


def worker_config(config: Config, number: int) -> Config:
    """The configuration of worker ``number`` (1..workers) of ``config`` (module docstring)."""
    broker = config.broker
    if not 1 <= number <= broker.workers or broker.workers == 1:
        raise ConfigError(
            config.source,
            "broker",
            "workers",
            f"--worker {number}: this configuration runs {broker.workers} worker(s); "
            "--worker is for the processes `ternmq --workers N` starts",
        )
    control_socket = broker.control_socket
    if control_socket not in ("", "off"):
        control_socket += f"-{number}"
    settings = attrs.evolve(
        broker,
        node_name=worker_node_name(broker.node_name, number),
        control_socket=control_socket,
        data_dir=str(Path(broker.data_dir) / f"worker-{number}"),
    )
    plugins = config.plugins if number == 1 else tuple(e for e in config.plugins if e.name not in FIRST_WORKER_ONLY)
    return attrs.evolve(config, broker=settings, plugins=plugins)


# -- a worker ---------------------------------------------------------------------------


async def watch_supervisor(done: trio.CancelScope) -> None:
    """Cancel ``done`` once stdin, the pipe from the supervisor, is closed (it ended)."""
    # A duplicate: closing the stream leaves fd 0 open; FdStream puts back its blocking mode.
    async with trio.lowlevel.FdStream(os.dup(0)) as stdin:
        try:
            while await stdin.receive_some(4096):
                pass
        except (trio.BrokenResourceError, OSError):
            pass
    log.warning("the supervisor (ternmq --workers) is gone: shutting down")
    done.cancel()


# -- the supervisor ---------------------------------------------------------------------


@attrs.define
class Worker:
    number: int
    node: str
    process: trio.Process | None = None

    def describe(self) -> str:
        pid = f"pid {self.process.pid}, " if self.process is not None else ""
        return f"worker {self.number} ({pid}node {self.node})"


def how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


async def _end_worker(process: trio.Process) -> None:
    """run_process's ``deliver_cancel``: SIGTERM, then SIGKILL if it is still there."""
    process.terminate()
    await trio.sleep(KILL_AFTER)
    log.error("worker pid %d still runs %.0f s after SIGTERM: killing it", process.pid, KILL_AFTER)
    process.kill()


class Supervisor:
    """Runs the workers of ``config`` until a signal, or until one of them ends.

    :param arguments: the supervisor's command line, given to every worker (with
        ``--worker K`` after it).
    """

    def __init__(self, config: Config, arguments: Sequence[str]) -> None:
        self.arguments = list(arguments)
        node_name = config.broker.node_name
        self.workers = [Worker(k, worker_node_name(node_name, k)) for k in range(1, config.broker.workers + 1)]
        self.stopping = False
        self.signum: int = signal.SIGTERM
        self.status = 0
        self._nursery: trio.Nursery | None = None
        self._workers_scope = trio.CancelScope()

    async def run(self) -> int:
        """Start every worker and wait for all of them; the exit status."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._forward_signals, signals)
                with self._workers_scope:
                    async with trio.open_nursery() as workers:
                        for worker in self.workers:
                            if self.stopping:  # a signal, or a worker already ended
                                break
                            await workers.start(self._run_worker, worker)
                        if not self.stopping:
                            log.info("supervisor pid %d runs %d workers", os.getpid(), len(self.workers))
                nursery.cancel_scope.cancel()  # every worker ended: nothing to forward to
        return self.status

    def stop(self, signum: int) -> None:
        """Send ``signum`` to every running worker (again if already stopping)."""
        if not self.stopping:
            assert self._nursery is not None
            self._nursery.start_soon(self._deadline)
        self.stopping = True
        self.signum = signum
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signum)

    async def _forward_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            log.info("received %s, stopping the workers", signal.Signals(signum).name)
            self.stop(signum)

    async def _deadline(self) -> None:
        await trio.sleep(STOP_TIMEOUT)
        running = [w.describe() for w in self.workers if w.process is not None and w.process.returncode is None]
        log.error("not stopped within %.0f s: %s; ending them", STOP_TIMEOUT, ", ".join(running))
        self.status = self.status or 1
        self._workers_scope.cancel()

    async def _run_worker(
        self, worker: Worker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        command = [sys.executable, "-m", "ternmq.kernel", *self.arguments, "--worker", str(worker.number)]
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    command,
                    stdin=subprocess.PIPE,  # the pipe whose end tells the worker to stop
                    check=False,
                    deliver_cancel=_end_worker,
                    process_group=0,
                )
            )
            worker.process = process
            log.info("%s started", worker.describe())
            if self.stopping:  # a signal came while it started
                process.send_signal(self.signum)
            task_status.started()
        if process.stdin is not None:
            await process.stdin.aclose()  # the pipe, now of no use
        assert process.returncode is not None
        self._ended(worker, process.returncode)

    def _ended(self, worker: Worker, returncode: int) -> None:
        how = how_it_ended(returncode)
        if self.stopping:
            if returncode == 0:
                log.info("%s stopped", worker.describe())
            else:
                log.error("%s stopped: %s", worker.describe(), how)
                self.status = self.status or 1
            return
        log.error("%s ended on its own (%s): stopping the other workers", worker.describe(), how)
        self.status = returncode if returncode > 0 else 1
        self.stop(signal.SIGTERM)


def supervise(config: Config, arguments: Sequence[str]) -> int:
    """Run ``config``'s workers (``ternmq --workers N``); the supervisor's exit status."""
    return trio.run(Supervisor(config, arguments).run)
