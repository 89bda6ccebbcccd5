"""``ternmq-admin``: run admin commands against a running broker.

``ternmq-admin [--config FILE] [--socket PATH] [--format=human|json] <command> ...``
finds the control socket of the broker started with the same ``--config`` (or the
embedded default's without it), sends the command and prints the answer. Exit codes:
0 done, 1 the command failed or was not understood, 2 the broker cannot be reached or
the configuration is bad.

``--help`` is answered by the broker, whose command tree includes the commands its
plugins added. When no broker answers, the tree of the essential ``admin`` plugin (built
here, without a broker) still answers it, with a note saying which socket nobody
listens on.

This client stays in the kernel, next to the configuration it reads (``load_config``:
not part of the plugins' public face); the server end, the control socket, and the
commands are the ``admin`` built-in plugin's (``ternmq.plugins.admin``).
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

import attrs

from ternmq.plugins.admin.control import control_socket_path

from .admin import ADMIN_OPTIONS_USAGE, AdminRegistry, CommandError
from .values.config import Config, ConfigError, load_config
from .workers import worker_config

USAGE = f"""Usage: ternmq-admin {ADMIN_OPTIONS_USAGE} <command> [args]

`ternmq-admin --help` lists the commands and options."""
HELP = ("--help", "-h")


class Unreachable(Exception):
    """Nothing accepts connections on the control socket (the reason is the message)."""


class NoSocket(Exception):
    """The control socket cannot be known (bad configuration, or it is off)."""


@attrs.frozen
class Target:
    """The broker ternmq-admin talks to: its control socket and, if known, node name."""

    path: str
    node: str | None
    start_hint: str  # how to start the broker this socket belongs to

    def describe(self) -> str:
        return self.path + (f" (node {self.node})" if self.node else "")


def _split_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    options: dict[str, str] = {}
    rest: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        name, has_value, value = token.partition("=")
        # ternmq-admin's own options come before the command words; after them,
        # --config belongs to the command (plugin enable ... --config key=value).
        in_command = bool(rest) and name != "--format"
        if name in ("--config", "--socket", "--format") and not in_command:
            if not has_value:
                if index + 1 >= len(argv):
                    raise ValueError(f"{name} needs a value")
                index += 1
                value = argv[index]
            options[name[2:]] = value
        else:
            rest.append(token)
        index += 1
    return options, rest


def _reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such socket"
    if isinstance(exc, ConnectionRefusedError):
        return "nobody listens on it"
    if isinstance(exc, PermissionError):
        return "permission denied (the socket is for the user the broker runs as)"
    return exc.strerror or str(exc)


def request(path: str, argv: list[str], timeout: float = 30.0) -> dict[str, Any]:
    """Send one command; :class:`Unreachable` if the socket takes no connection,
    OSError/ValueError if the broker does not answer properly."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise Unreachable(_reason(exc)) from None
        sock.sendall(json.dumps({"argv": argv}).encode() + b"\n")
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


def _target(options: dict[str, str]) -> Target:
    """Where the broker is, from --socket or the configuration (:class:`NoSocket` if neither says)."""
    config_file = options.get("config")
    hint = (
        f"Start it with `ternmq --config {config_file}`."
        if config_file
        else "Start it with `ternmq`, or name its configuration with --config FILE."
    )
    path = options.get("socket")
    node: str | None = None
    if path is None or config_file is not None:
        try:
            config = load_config(config_file)
        except ConfigError as exc:
            raise NoSocket(f"configuration error: {exc}") from None
        settings = config.broker
        node = settings.node_name
        if path is None:
            path = control_socket_path(settings)
            if path is None:
                raise NoSocket('this configuration has control_socket = "off"')
            if settings.workers > 1:
                hint = _workers_hint(config)
    if options.get("socket") is not None:
        hint = "Is the broker that owns it running?"
    return Target(path, node, hint)


def _workers_hint(config: Config) -> str:
    """Where the workers of ``ternmq --workers`` listen: each has a control socket of its own."""
    sockets = []
    for number in range(1, config.broker.workers + 1):
        try:
            sockets.append(f"worker {number}: {control_socket_path(worker_config(config, number).broker)}")
        except ConfigError:  # pragma: no cover - workers > 1 is a valid worker number
            break
    return (
        f"This configuration runs {config.broker.workers} workers (ternmq --workers), each with a control "
        f"socket of its own: name one with --socket PATH ({', '.join(sockets)})."
    )


def _offline_help(command: list[str], target: Target, reason: str) -> str | None:
    """The help of ``command`` from the admin plugin's command tree (None if it is not
    one of its commands: only the broker knows its other plugins' commands)."""
    from ternmq.plugins.admin import register_commands

    registry = AdminRegistry()
    register_commands(registry.owned_by("admin"))
    words = [w for w in command if not w.startswith("-") and "=" not in w]
    try:
        text = registry.help(words)
    except CommandError:
        return None
    return (
        f"{text}\n\nBroker: control socket {target.describe()}, not reachable: {reason}. {target.start_hint}\n"
        "This help lists the broker's own commands; those of other plugins are listed once the broker runs."
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        options, command = _split_options(args)
    except ValueError as exc:
        print(f"ternmq-admin: {exc}\n\n{USAGE}", file=sys.stderr)
        return 1
    output_format = options.get("format", "human")
    if output_format not in ("human", "json"):
        print(f"ternmq-admin: --format must be human or json, not {output_format!r}\n\n{USAGE}", file=sys.stderr)
        return 1
    if command and command[0].startswith("-") and command[0] not in HELP:
        print(f"ternmq-admin: unknown option {command[0]}\n\n{USAGE}", file=sys.stderr)
        return 1
    # No command at all: the top-level help, as for --help, but as the usage error it is.
    no_command = not command
    wants_help = no_command or any(word in HELP for word in command)
    try:
        target = _target(options)
    except NoSocket as exc:
        print(f"ternmq-admin: {exc}", file=sys.stderr)
        return 2
    try:
        reply = request(target.path, command or ["--help"])
    except Unreachable as exc:
        text = _offline_help(command, target, str(exc)) if wants_help else None
        if text is None:
            print(
                f"ternmq-admin: cannot reach the broker at {target.describe()}: {exc}. {target.start_hint}",
                file=sys.stderr,
            )
            return 2
        print(text, file=sys.stderr if no_command else sys.stdout)
        return 1 if no_command else 0
    except (OSError, ValueError) as exc:
        print(f"ternmq-admin: the broker at {target.describe()} did not answer: {exc}", file=sys.stderr)
        return 2
    if not reply.get("ok"):
        message = f"ternmq-admin: {reply.get('error')}"
        if reply.get("usage"):
            message += "\n\n" + reply["usage"]
        print(message, file=sys.stderr)
        return 1
    if output_format == "json":
        print(json.dumps(reply["result"]))
    elif wants_help and all(word.startswith("-") for word in command):
        # The top-level help: also which broker answered it.
        print(
            f"{reply['human']}\n\nBroker: control socket {target.describe()}, running.",
            file=sys.stderr if no_command else sys.stdout,
        )
    else:
        print(reply["human"])
    return 1 if no_command else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
