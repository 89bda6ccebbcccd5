"""``ternmq``: start the broker (embedded default config, or ``--config FILE``).

With ``--workers N`` (or ``[broker] workers``) above 1 it supervises N broker processes
instead, each started with ``--worker K`` (kernel/workers.py).
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from .broker import Broker
from .values.config import Config, ConfigError, load_config, require_listeners
from .workers import apply_workers, supervise, watch_supervisor, worker_config

log = logging.getLogger("ternmq")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ternmq",
        description="Run the ternmq MQTT broker. Without --config it runs the embedded "
        "default: 127.0.0.1:1883, anonymous clients allowed, retained messages on.",
    )
    parser.add_argument("--config", metavar="FILE", help="a TOML configuration (see plugins.toml)")
    parser.add_argument("--host", help="override the address of the first listener")
    parser.add_argument("--port", type=int, help="override the port of the first listener")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N broker processes on this machine (Linux) sharing each listener's port "
        "(SO_REUSEPORT), each a node of the [cluster] named NODE-K (node_name with -K before "
        "the @); this process supervises them. Default: [broker] workers (1)",
    )
    # Internal: how the supervisor starts worker K (see kernel/workers.py).
    parser.add_argument("--worker", type=int, metavar="K", help=argparse.SUPPRESS)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default: info"
    )
    return parser


def apply_overrides(config: Config, host: str | None, port: int | None) -> Config:
    """``--host``/``--port`` replace the address and port of the first listener."""
    if host is None and port is None:
        return config
    if not config.listeners:
        raise ConfigError(config.source, "listeners", None, "--host/--port need at least one [[listeners]]")
    first = config.listeners[0]
    changes: dict[str, Any] = {}
    if host is not None:
        changes["address"] = host
    if port is not None:
        if not 0 <= port <= 65535:
            raise ConfigError(config.source, f"listeners.{first.name}", "port", "--port must be 0..65535")
        changes["port"] = port
    return attrs.evolve(config, listeners=(attrs.evolve(first, **changes),) + config.listeners[1:])


async def run(config: Config, *, supervised: bool = False) -> None:
    """Run a broker until SIGINT or SIGTERM (or, ``supervised``, until its supervisor ends)."""
    broker = Broker(config)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await nursery.start(broker.serve)
            async with trio.open_nursery() as waiting:
                waiting.start_soon(_first_signal, signals, waiting.cancel_scope)
                if supervised:
                    waiting.start_soon(watch_supervisor, waiting.cancel_scope)
            broker.stop()


async def _first_signal(signals: AsyncIterator[int], done: trio.CancelScope) -> None:
    async for signum in signals:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        done.cancel()
        return


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(arguments)
    worker = "" if args.worker is None else f"[worker {args.worker}] "
    logging.basicConfig(level=args.log_level.upper(), format=f"%(asctime)s %(levelname)s {worker}%(name)s: %(message)s")
    try:
        config = load_config(args.config)
        require_listeners(config)
        config = apply_overrides(config, args.host, args.port)
        config = apply_workers(config, args.workers)
        if args.worker is not None:
            config = worker_config(config, args.worker)
    except ConfigError as exc:
        print(f"ternmq: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.worker is None and config.broker.workers > 1:
            return supervise(config, arguments)
        trio.run(functools.partial(run, config, supervised=args.worker is not None))
    except KeyboardInterrupt:
        pass
    except (OSError, ConfigError, BaseExceptionGroup) as exc:
        error = _startup_error(exc)
        if error is None:
            raise
        if isinstance(error, ConfigError):  # e.g. a certificate file that cannot be loaded
            print(f"ternmq: configuration error: {error}", file=sys.stderr)
            return 2
        print(f"ternmq: cannot start: {error}", file=sys.stderr)
        return 1
    return 0


def _startup_error(exc: BaseException) -> BaseException | None:
    """The OSError or ConfigError that stopped the start (trio wraps it in nursery groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, (OSError, ConfigError)) else None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
