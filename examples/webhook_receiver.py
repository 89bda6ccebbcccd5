"""A small webhook receiver for ternmq's webhooks plugin (VerneMQ's vmq_webhooks wire format).

The broker POSTs one JSON object per hook call, naming the hook in the ``vernemq-hook``
header. This receiver answers the auth hooks (``auth_on_register``, ``auth_on_publish``,
``auth_on_subscribe`` and their ``_m5`` variants) from a JSON rule table and logs every
call, notifications included, as one line on stderr. It needs only the standard library.

Start it next to the broker::

    python examples/webhook_receiver.py --port 8080 --rules my-rules.json

``--port 0`` picks a free port; the first line on stdout is ``listening on http://HOST:PORT``.
The rule table (without ``--rules``, ``DEFAULT_RULES`` below)::

    {
      "users": {"alice": "alice-secret", "sensor-17": "sensor-secret"},
      "anonymous": false,
      "publish": [{"username": "alice", "topic": "alice/#"}, {"username": "*", "topic": "public/#"}],
      "subscribe": [{"username": "*", "topic": "public/#"}, {"username": "alice", "topic": "alice/#"}],
      "cache_seconds": 0
    }

A rule's ``username`` ``"*"`` matches anyone, anonymous clients included; ``topic`` is an
MQTT filter. With ``cache_seconds`` > 0, allowing answers carry ``cache-control: max-age=N``
so the broker may reuse them. Wire it into the broker in plugins.toml::

    [plugins.webhooks]
    endpoints = [
      { hook = "auth_on_register", endpoint = "http://127.0.0.1:8080/" },
      { hook = "auth_on_register_m5", endpoint = "http://127.0.0.1:8080/" },
      { hook = "auth_on_publish", endpoint = "http://127.0.0.1:8080/" },
      { hook = "auth_on_publish_m5", endpoint = "http://127.0.0.1:8080/" },
      { hook = "auth_on_subscribe", endpoint = "http://127.0.0.1:8080/" },
      { hook = "auth_on_subscribe_m5", endpoint = "http://127.0.0.1:8080/" },
      { hook = "on_publish", endpoint = "http://127.0.0.1:8080/" },
      { hook = "on_client_gone", endpoint = "http://127.0.0.1:8080/" },
    ]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import signal
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger("webhook_receiver")

DEFAULT_RULES: dict[str, Any] = {
    "users": {"alice": "alice-secret", "sensor-17": "sensor-secret"},
    "anonymous": False,
    "publish": [{"username": "alice", "topic": "alice/#"}, {"username": "*", "topic": "public/#"}],
    "subscribe": [{"username": "*", "topic": "public/#"}, {"username": "alice", "topic": "alice/#"}],
    "cache_seconds": 0,
}

# Hooks whose answers the broker ignores: they are only logged.
NOTIFICATION_HOOKS = frozenset(
    {"on_register", "on_register_m5", "on_publish", "on_publish_m5", "on_subscribe", "on_subscribe_m5"}
    | {"on_unsubscribe", "on_unsubscribe_m5", "on_offline_message", "on_client_wakeup", "on_client_offline"}
    | {"on_client_gone", "on_session_expired"}
)
OK: dict[str, Any] = {"result": "ok"}
NOT_ALLOWED: dict[str, Any] = {"result": {"error": "not_allowed"}}


@dataclass(frozen=True)
class Rules:
    users: dict[str, str]
    anonymous: bool
    publish: list[tuple[str, str]]  # (username or "*", topic filter)
    subscribe: list[tuple[str, str]]
    cache_seconds: int

    @classmethod
    def from_json(cls, data: Any) -> Rules:
        """Rules from a parsed rule file; missing keys mean "nothing allowed"."""
        if not isinstance(data, dict):
            raise ValueError("the rule table must be a JSON object")

        def pairs(key: str) -> list[tuple[str, str]]:
            return [(str(rule["username"]), str(rule["topic"])) for rule in data.get(key, [])]

        users = {str(name): str(password) for name, password in data.get("users", {}).items()}
        return cls(
            users,
            bool(data.get("anonymous", False)),
            pairs("publish"),
            pairs("subscribe"),
            int(data.get("cache_seconds", 0)),
        )


def filter_covers(rule_filter: str, requested: str) -> bool:
    """Whether ``rule_filter`` matches every topic the ``requested`` filter can match; for
    a topic (no wildcards), MQTT matching: "+" is one level, "#" the rest, its parent
    level included ("a/#" matches "a").

    A requested filter is taken as a topic, except that a "+" does not cover a requested
    "#": otherwise the rule "a/+" would grant "a/#" and with it "a/b/c". Wildcards at the
    start do not reach topics beginning with "$" such as $SYS (MQTT 4.7.2).
    """
    if requested.startswith("$") and rule_filter[:1] in ("+", "#"):
        return False
    rule_levels, requested_levels = rule_filter.split("/"), requested.split("/")
    for index, level in enumerate(rule_levels):
        if level == "#":
            return True
        if index >= len(requested_levels) or requested_levels[index] == "#":
            return False
        if level != "+" and level != requested_levels[index]:
            return False
    return len(rule_levels) == len(requested_levels)


def text(body: dict[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str):
        raise TypeError(f"{key!r} must be a string")
    return value


def answer(hook: str, body: dict[str, Any], rules: Rules) -> dict[str, Any]:
    """The JSON answer to one hook call; KeyError/TypeError/ValueError mean a bad request."""
    username = body.get("username")
    if hook in ("auth_on_register", "auth_on_register_m5"):
        if username is None:
            return OK if rules.anonymous else NOT_ALLOWED
        password = body.get("password")
        return OK if password is not None and rules.users.get(username) == password else NOT_ALLOWED
    if hook in ("auth_on_publish", "auth_on_publish_m5"):
        topic = text(body, "topic")
        allowed = any(name in ("*", username) and filter_covers(pattern, topic) for name, pattern in rules.publish)
        return OK if allowed else NOT_ALLOWED
    if hook in ("auth_on_subscribe", "auth_on_subscribe_m5"):
        m5 = hook.endswith("_m5")
        rejected = 135 if m5 else 128  # MQTT 5 "not authorized" / MQTT 3.1.1 SUBACK failure
        topics = []
        for entry in body["topics"]:
            topic = text(entry, "topic")
            allowed = any(
                name in ("*", username) and filter_covers(pattern, topic) for name, pattern in rules.subscribe
            )
            # Granted filters keep the QoS asked for; the broker may still lower it.
            topics.append({"topic": topic, "qos": entry["qos"] if allowed else rejected})
        return {"result": "ok", "modifiers": {"topics": topics}} if m5 else {"result": "ok", "topics": topics}
    if hook in ("on_deliver", "on_deliver_m5"):
        return OK  # a decision hook in ternmq: deliver the message unchanged
    if hook == "on_auth_m5":
        return {"result": "next"}  # no enhanced-auth method here: let another plugin answer
    if hook in NOTIFICATION_HOOKS:
        return {}
    raise ValueError(f"unknown hook {hook!r}")


def readable(body: dict[str, Any]) -> dict[str, Any]:
    """The body for the log: the base64 payload decoded when it is UTF-8 text."""
    payload = body.get("payload")
    if not isinstance(payload, str):
        return body
    try:
        return {**body, "payload": base64.b64decode(payload, validate=True).decode("utf-8")}
    except (binascii.Error, UnicodeDecodeError):
        return body  # binary payloads stay base64: logging raw bytes helps nobody


class ReceiverServer(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], rules: Rules) -> None:
        super().__init__(address, Handler)
        self.rules = rules


class Handler(BaseHTTPRequestHandler):
    timeout = 30  # a client that stalls mid-request must not hold its thread forever

    def do_POST(self) -> None:
        assert isinstance(self.server, ReceiverServer)
        hook = self.headers.get("vernemq-hook")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            if not hook:
                raise ValueError("no vernemq-hook header")
            log.info("%s %s", hook, json.dumps(readable(body), ensure_ascii=False))
            reply = answer(hook, body, self.server.rules)
        except (KeyError, TypeError, ValueError) as error:  # json.JSONDecodeError is a ValueError
            log.warning("bad request (%s): %s", hook, error)
            self.send_json(400, {"error": str(error)})
            return
        cache_seconds = self.server.rules.cache_seconds
        cacheable = hook.startswith("auth_on_") and reply.get("result") == "ok" and cache_seconds > 0
        self.send_json(200, reply, {"cache-control": f"max-age={cache_seconds}"} if cacheable else {})

    def send_json(self, status: int, reply: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # The access log would double every line logged in do_POST; keep it for debugging only.
        log.debug(format, *args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--rules", type=Path, help="JSON rule table (default: the built-in one)")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    rules = Rules.from_json(json.loads(options.rules.read_text()) if options.rules else DEFAULT_RULES)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # leaves serve_forever the same way Ctrl-C does

    signal.signal(signal.SIGTERM, stop)
    with ReceiverServer((options.host, options.port), rules) as server:
        print(f"listening on http://{options.host}:{server.server_address[1]}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            log.info("stopping")


if __name__ == "__main__":
    main()
