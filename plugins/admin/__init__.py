"""The ``admin`` built-in plugin: the broker's admin commands and the control socket.

Essential: the broker loads it before any other plugin, whether the configuration names
it or not (a ``[plugins.admin]`` table may still set ``priority`` and the other keys the
kernel applies to every plugin), and ``plugin disable name=admin`` is refused.

Its commands are registered through ``register_admin_commands``, one module per owner:
:mod:`.sessions`, :mod:`.listeners`, :mod:`.plugins`, :mod:`.retained`, :mod:`.settings`
and :mod:`.node` (metrics and node status). Every handler gets the service face and the
parsed arguments. ``serve`` runs the control socket (:mod:`.control`) through which
``ternmq-admin`` runs them; ``[broker] control_socket = "off"`` turns it off.
"""

from __future__ import annotations

from typing import Any

import trio

from ternmq.kernel import AdminRegistry, Service, hookimpl

from . import listeners, node, plugins, retained, sessions, settings
from .control import control_socket_path, serve_control


def register_commands(registry: AdminRegistry) -> None:
    """Every command of the admin plugin (``ternmq-admin --help`` also builds them
    without a broker, for its offline help)."""
    plugins.register(registry)
    sessions.register(registry)
    listeners.register(registry)
    retained.register(registry)
    node.register(registry)
    settings.register(registry)


class Plugin:
    """The admin commands and the control socket (see module docstring)."""

    def __init__(self) -> None:
        self.netsplit = node.NetsplitSettings()

    @hookimpl
    def register_admin_commands(self, registry: AdminRegistry) -> None:
        register_commands(registry)

    @hookimpl
    def register_config(self, settings: Any) -> None:
        self.netsplit.register(settings)

    async def serve(self, service: Service, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        path = control_socket_path(service.settings)
        if path is None:
            task_status.started()
            return
        await serve_control(service, path, task_status=task_status)
