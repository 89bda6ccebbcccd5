"""The control socket: a Unix socket through which ``ternmq-admin`` runs admin commands.
Its file permissions (0600, in a 0700 directory) are its access control. One JSON line
in (``{"argv": [...]}``), one JSON line out.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
import tempfile
from typing import Any

import trio

from ternmq.kernel import BrokerSettings, CommandError, Service

log = logging.getLogger("ternmq.control")
MAX_REQUEST = 1 << 20


def control_socket_path(settings: BrokerSettings) -> str | None:
    """Where the control socket of a broker with these settings lives (None: off)."""
    if settings.control_socket == "off":
        return None
    if settings.control_socket:
        return os.path.abspath(settings.control_socket)
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    name = re.sub(r"[^A-Za-z0-9@._-]", "_", settings.node_name)
    return os.path.join(base, f"ternmq-{os.getuid()}", f"{name}.sock")


def _claim(path: str, settings: BrokerSettings, config_file: str | None) -> None:
    """Create the directory (0700) and remove a stale socket; refuse a live one."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left over from a broker that died
        else:
            raise OSError(_taken(path, settings, config_file))
        finally:
            probe.close()


def _taken(path: str, settings: BrokerSettings, config_file: str | None) -> str:
    """Why the control socket is taken, and the two keys that give this broker its own."""
    why = f" (it is named after node_name {settings.node_name!r})" if not settings.control_socket else ""
    where = "a configuration file given with --config" if config_file is None else config_file
    return (
        f"another broker already owns the control socket {path}{why}; to run one more broker on this "
        f'machine, give it another node_name or another control_socket ("off": none) in the [broker] '
        f"table of {where}"
    )


async def serve_control(
    service: Service, path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Accept admin requests on ``path`` until cancelled; removes the socket after."""
    _claim(path, service.settings, service.config_file)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(path)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    # Logged so that an operator knows which socket (and so which node_name) to give
    # ternmq-admin, and sees at once when two brokers would want the same one.
    log.info("control socket for ternmq-admin: %s", path)
    try:
        task_status.started()
        # serve_listeners closes the listener, and each stream after its handler.
        await trio.serve_listeners(functools.partial(_handle, service), [listener])
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


async def _handle(service: Service, stream: trio.abc.Stream) -> None:
    """One request. Nothing a client of the socket sends or does may end the broker."""
    try:
        await _answer(service, stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        pass  # the client went away or never finished its request
    except Exception:
        log.exception("control socket request failed")


async def _answer(service: Service, stream: trio.abc.Stream) -> None:
    try:
        with trio.fail_after(5):
            request = await _read_line(stream)
        argv = json.loads(request)["argv"]
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a list of strings")
    except (ValueError, KeyError, TypeError) as exc:
        await _reply(stream, {"ok": False, "error": f"bad request: {exc}", "usage": ""})
        return
    reply: dict[str, Any]
    try:
        result = await service.run_command(argv)
        reply = {"ok": True, "result": result.to_json(), "human": result.render()}
    except CommandError as exc:
        reply = {"ok": False, "error": str(exc), "usage": exc.usage}
    except Exception as exc:  # a broken plugin command must not take the socket down
        # The command's words only: its arguments may be passwords and secrets.
        log.exception("admin command %s failed", " ".join(w for w in argv if "=" not in w and not w.startswith("-")))
        reply = {"ok": False, "error": f"command failed: {exc!r}", "usage": ""}
    await _reply(stream, reply)


async def _read_line(stream: trio.abc.Stream) -> bytes:
    data = bytearray()
    while b"\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too large")
    return bytes(data).split(b"\n", 1)[0]


async def _reply(stream: trio.abc.Stream, reply: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(reply, default=str).encode() + b"\n")
