"""What every handler of /api/v2 speaks: EMQ 2's codes and error answer (``Refused``),
one request (``Call``), a body's checked fields, EMQ 2's pages and times, and the node
checks of ``nodes/{node}/...`` paths (``Handlers``, the base of the handlers' classes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from quart import Response

from ternmq.kernel import Service

from .. import model

if TYPE_CHECKING:
    from .. import Plugin

PAGE_SIZE = 20
# EMQ 2's codes.
RPC, UNKNOWN, BAD_LOGIN, EMPTY_LOGIN, NO_USER, UNDELETABLE, MISSING, BAD_TYPE = range(101, 109)
NOT_JSON, LOADED, UNLOADED, OFFLINE, USER_EXISTS, OLD_PASSWORD = range(109, 115)
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}
_MISSING: Any = object()


class Refused(Exception):
    """EMQ 2's error answer: ``{"code": code, "message": ...}`` (HTTP 200, or ``status``:
    503 for a change the users' store cannot save)."""

    def __init__(self, code: int, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@attrs.frozen
class Call:
    """One request: the path's parts, its query and its JSON body (an object)."""

    method: str
    params: tuple[str, ...]
    query: Mapping[str, str]
    body: Mapping[str, Any]


Handler = Callable[[Call], Any]  # the result, or an awaitable of it


def answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers or {}, content_type="application/json")


def param(body: Mapping[str, Any], name: str, kind: type, default: Any = _MISSING) -> Any:
    """A body's field, checked as EMQ 2 did: 107 when missing (JSON null too), 108 when
    not of ``kind``."""
    value = body.get(name)
    if value is None:
        if default is _MISSING:
            raise Refused(MISSING, f"params error: {name} is required")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Refused(BAD_TYPE, f"params type error: {name} must be {_TYPE_NAMES[kind]}")
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise Refused(BAD_TYPE, f"params type error: {name} is not valid UTF-8") from None
    return value


def moment(at: float | None) -> str:
    """EMQ 2's time: ``YYYY-MM-DD HH:MM:SS``, local."""
    return model.local_time(at) or "undefined"


def paged(call: Call, page_of: Callable[[int, int], model.Page], row: Callable[[Any], Any]) -> dict[str, Any]:
    """EMQ 2's page of ``curr_page`` and ``page_size`` (108 unless both are 1 or more)."""
    try:
        page, size = int(call.query.get("curr_page", 1)), int(call.query.get("page_size", PAGE_SIZE))
    except ValueError:
        raise Refused(BAD_TYPE, "params type error: curr_page and page_size are integers") from None
    if page < 1 or size < 1:
        raise Refused(BAD_TYPE, "params type error: curr_page and page_size are 1 or more")
    found = page_of(page, size)
    total = found.count or 0
    meta = {"current_page": page, "page_size": size, "total_num": total, "total_page": -(-total // size)}
    return {**meta, "objects": [row(item) for item in found.items]}


class Handlers:
    """The handlers of one API plugin and its service; ``node`` is this node's name."""

    def __init__(self, plugin: Plugin, service: Service) -> None:
        self.plugin = plugin
        self.service = service
        self.node = service.node_name

    def on_node(self, name: str) -> None:
        if name != self.node:
            raise Refused(RPC, f"badrpc: nodedown (no node {name!r}; this node is {self.node})")

    def last(self, call: Call) -> str:
        """The client id of ``nodes/{node}/.../{id}`` (checking the node) or ``.../{id}``."""
        if len(call.params) > 1:
            self.on_node(call.params[0])
        return call.params[-1]
