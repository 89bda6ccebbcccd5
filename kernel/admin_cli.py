"""``ternmq-admin``: run admin commands against a running broker.

``ternmq-admin [--config FILE] [--socket PATH] [--format=human|json] <command> ...``
finds the control socket of the broker started with the same ``--config`` (or the
embedded default's without it), sends the command and prints the answer. Exit codes:
0 done, 1 the command failed or was not understood, 2 the broker cannot be reached or
the configuration is bad.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

from .config import ConfigError, load_config
from .control import control_socket_path

USAGE = """Usage: ternmq-admin [--config FILE] [--socket PATH] [--format=human|json] <command> [args]

Runs an admin command in the running ternmq broker, e.g.
  ternmq-admin plugin show
  ternmq-admin session show --client_id --is_online
  ternmq-admin plugin enable name=myauth --config password_file=/etc/ternmq/users.json
Use `ternmq-admin --help` with a running broker for every command, and
`ternmq-admin <command> --help` for one."""


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


def request(path: str, argv: list[str], timeout: float = 30.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"argv": argv}).encode() + b"\n")
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        options, command = _split_options(args)
    except ValueError as exc:
        print(f"ternmq-admin: {exc}\n\n{USAGE}", file=sys.stderr)
        return 1
    output_format = options.get("format", "human")
    if output_format not in ("human", "json"):
        print(f"ternmq-admin: --format must be human or json\n\n{USAGE}", file=sys.stderr)
        return 1
    if not command:
        print(USAGE, file=sys.stderr)
        return 1
    path = options.get("socket")
    if path is None:
        try:
            path = control_socket_path(load_config(options.get("config")).broker)
        except ConfigError as exc:
            print(f"ternmq-admin: configuration error: {exc}", file=sys.stderr)
            return 2
        if path is None:
            print("ternmq-admin: this configuration has control_socket = \"off\"", file=sys.stderr)
            return 2
    try:
        reply = request(path, command)
    except (OSError, ValueError) as exc:
        if command in (["--help"], ["-h"]):
            print(USAGE)
            return 0
        print(f"ternmq-admin: cannot reach the broker at {path}: {exc}", file=sys.stderr)
        return 2
    if not reply.get("ok"):
        message = f"ternmq-admin: {reply.get('error')}"
        if reply.get("usage"):
            message += "\n\n" + reply["usage"]
        print(message, file=sys.stderr)
        return 1
    if output_format == "json":
        print(json.dumps(reply["result"]))
    else:
        print(reply["human"])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
