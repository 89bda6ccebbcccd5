"""VerneMQ's netsplit switches, in force while a node has lost Redis (its cluster).

The cluster plugin loads :class:`Guard` (as the plugin ``cluster-netsplit``, asked
first) when its connection to Redis is lost, and unloads it once Redis is back: so the
decision hooks below cost nothing while the cluster is whole. Meanwhile the live
settings ``allow_register_during_netsplit``, ``allow_publish_during_netsplit``,
``allow_subscribe_during_netsplit`` and ``allow_unsubscribe_during_netsplit`` (``on`` or
``off``; ``ternmq-admin set``) decide: ``on`` leaves the request to the other plugins,
``off`` (VerneMQ's default) refuses it, as VerneMQ does: a CONNECT with 0x88 (server
unavailable; MQTT 3: return code 3), a PUBLISH, SUBSCRIBE or UNSUBSCRIBE with 0x80.
"""

from __future__ import annotations

import trio

from ternmq.kernel import ClientInfo, Deny, Message, Service, deny, hookimpl

SERVER_UNAVAILABLE = 0x88
UNSPECIFIED_ERROR = 0x80
#: Asked before every other plugin (a lower priority is asked first).
PRIORITY = -1_000_000


class Guard:
    """The switches' hooks (module docstring)."""

    def __init__(self) -> None:
        self.service: Service | None = None

    async def serve(self, service: Service, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.service = service
        task_status.started()

    def _refused(self, action: str, reason_code: int) -> Deny | None:
        assert self.service is not None
        if self.service.live_settings().get(f"allow_{action}_during_netsplit", "off") == "on":
            return None  # allowed: the other plugins decide
        return deny(reason_code, f"the node has lost its cluster: {action} refused (allow_{action}_during_netsplit)")

    @hookimpl
    def auth_on_register(self, client: ClientInfo) -> Deny | None:
        return self._refused("register", SERVER_UNAVAILABLE)

    @hookimpl
    def auth_on_publish(self, message: Message) -> Deny | None:
        return self._refused("publish", UNSPECIFIED_ERROR)

    @hookimpl
    def auth_on_subscribe(self, client: ClientInfo) -> Deny | None:
        return self._refused("subscribe", UNSPECIFIED_ERROR)

    @hookimpl
    def auth_on_unsubscribe(self, client: ClientInfo) -> Deny | None:
        return self._refused("unsubscribe", UNSPECIFIED_ERROR)
