"""VerneMQ's lightweight ``/api/v2`` (scope ``api2``): ``client`` (is a client online,
and its subscriptions) and ``disconnect``, answered without the admin command tree.
Each returns the JSON body and the HTTP status."""

from __future__ import annotations

from typing import Any

from quart import request

from ternmq.kernel import Service

# VerneMQ's answers: online or offline for a known session, unknown for none.
ONLINE, OFFLINE, UNKNOWN = "online", "offline", "unknown"


def _wanted(service: Service) -> tuple[str | None, Any]:
    """The ``client_id`` asked about and its session, or None where it is in another
    mountpoint than ``mountpoint`` names (VerneMQ keys sessions by both; client ids are
    unique here, the mountpoint only has to match)."""
    client_id = request.args.get("client_id")
    if not client_id:
        return None, None
    session = service.session_info(client_id)
    mountpoint = request.args.get("mountpoint", "")
    if session is None or session.mountpoint != mountpoint:
        return client_id, None
    return client_id, session


def client(service: Service) -> tuple[Any, int]:
    """``/api/v2/client?client_id=C[&mountpoint=M][&topics]``."""
    client_id, session = _wanted(service)
    if client_id is None:
        return {"type": "error", "error": "client_id is needed: /api/v2/client?client_id=<id>"}, 400
    if session is None:
        answer: dict[str, Any] = {"status": UNKNOWN}
    else:
        answer = {"status": ONLINE if session.is_online else OFFLINE}
    if "topics" in request.args:
        answer["topics"] = {sub.topic_filter: sub.qos for sub in service.subscriptions(client_id)} if session else {}
    return answer, 200


def disconnect(service: Service) -> tuple[Any, int]:
    """``/api/v2/disconnect?client_id=C[&mountpoint=M][&cleanup]``: "ok", or "unknown"
    when there is no such session (MQTT 5 clients get DISCONNECT 0x98)."""
    client_id, session = _wanted(service)
    if client_id is None:
        return {"type": "error", "error": "client_id is needed: /api/v2/disconnect?client_id=<id>"}, 400
    if session is None:
        return UNKNOWN, 200
    service.disconnect(client_id, cleanup="cleanup" in request.args)
    return "ok", 200
