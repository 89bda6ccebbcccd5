"""``ternmq``: start the broker (embedded default config, or ``--config FILE``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

import attrs
import trio

from .broker import Broker
from .values.config import Config, ConfigError, load_config, require_listeners


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


async def run(config: Config) -> None:
    broker = Broker(config)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await nursery.start(broker.serve)
            async for signum in signals:
                logging.getLogger("ternmq").info("received %s, shutting down", signal.Signals(signum).name)
                broker.stop()
                break


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        require_listeners(config)
        config = apply_overrides(config, args.host, args.port)
    except ConfigError as exc:
        print(f"ternmq: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(run, config)
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
