"""A real HTTP webhook receiver for tests: hypercorn serving a small ASGI app on
127.0.0.1:0 in the test's nursery, recording every request and answering as told."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve


@attrs.frozen
class Request:
    path: str
    hook: str
    content_type: str
    body: dict[str, Any]
    client_port: int = 0  # the broker's side of the HTTP connection


@attrs.define
class Answer:
    """What the receiver sends back: a JSON value (or raw bytes), a status, headers, and
    optionally a wait first (``hold``: until that event is set)."""

    json: Any = attrs.Factory(lambda: {"result": "ok"})
    status: int = 200
    headers: dict[str, str] = attrs.Factory(dict)
    raw: bytes | None = None
    delay: float = 0.0
    hold: trio.Event | None = None


Responder = Callable[[Request], Answer]


class Receiver:
    """Records requests (``requests``) and answers with ``respond`` (by default
    ``{"result": "ok"}`` to everything)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.respond: Responder = lambda request: Answer()
        self.port = 0
        self.arrived = trio.Event()
        self.finished = 0  # replies sent

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, hook: str) -> list[dict[str, Any]]:
        return [request.body for request in self.requests if request.hook == hook]

    def hooks(self) -> list[str]:
        return [request.hook for request in self.requests]

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        content = b""
        while True:
            message = await receive()
            content += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
        request = Request(
            scope["path"], headers.get("vernemq-hook", ""), headers.get("content-type", ""), json.loads(content)
        )
        self.requests.append(request)
        self.arrived.set()
        self.arrived = trio.Event()
        answer = self.respond(request)
        if answer.hold is not None:
            await answer.hold.wait()
        if answer.delay:
            await trio.sleep(answer.delay)
        body = answer.raw if answer.raw is not None else json.dumps(answer.json).encode()
        response_headers = [(b"content-type", b"application/json")]
        response_headers += [(key.encode(), value.encode()) for key, value in answer.headers.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})
        self.finished += 1


@asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, receiver, config)
        receiver.port = int(binds[0].rsplit(":", 1)[1])
        try:
            yield receiver
        finally:
            nursery.cancel_scope.cancel()
