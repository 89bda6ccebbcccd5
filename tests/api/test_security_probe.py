"""Every management endpoint of every dialect, tried without credentials, with wrong
ones, with expired ones and with those of another scope or role: none succeeds."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx

from ternmq.api import v2, v3
from ternmq.api import v5 as v5_dialect
from ternmq.kernel.broker import Broker
from ternmq.kernel.testing import open_broker, test_config

from helpers import connected


def probe_config(tmp_path: Path) -> Any:
    api = {"port": 0, "keys_file": str(tmp_path / "keys.json"), "apps_file": str(tmp_path / "apps.json")}
    return test_config(plugins={"retainer": {}, "banned": {"file": str(tmp_path / "banned.json")}, "api": api})


def vernemq_endpoints(broker: Broker) -> list[tuple[str, str, str]]:
    """(method, path, scope) of VerneMQ's modules behind keys by default."""
    commands = [("GET", "/api/v1/" + "/".join(path), "mgmt") for path in broker.admin.commands]
    return [
        *commands,
        ("GET", "/api/v1/sessions", "mgmt"),
        ("GET", "/api/v2/client?client_id=c", "api2"),
        ("GET", "/api/v2/disconnect?client_id=c", "api2"),
        ("POST", "/restmqtt/api/v1/publish", "httppub"),
    ]


def group_sample(match: re.Match[str]) -> str:
    words = match[1].removeprefix("?:").split("|")
    return words[0] if all(re.fullmatch(r"[\w/]+", w) for w in words) else "x"


def path_sample(pattern: str) -> str:
    """A path a route's pattern matches: each group (innermost first) its first word, or
    "x" where it takes a value."""
    while "(" in pattern:
        pattern = re.sub(r"\(([^()]*)\)", group_sample, pattern)
    return pattern.removesuffix("/?")


def emqx_endpoints(broker: Broker) -> list[tuple[str, str, str]]:
    """(method, path, access) of /api/v5, /api/v3 and /api/v2, with sample path values."""
    plugin, service = broker.plugins.loaded["api"].plugin, broker.service
    found = [
        ("v5", op.method, "/api/v5" + re.sub(r"\{\w+\*?\}", "x", op.path), op.access)
        for op in v5_dialect.operations(plugin, service)
        if op.access != "none"
    ]
    for _, _, method, path, _ in v3.ENDPOINTS:
        sample = re.sub(r":\w+", "x", path).strip("/")
        found.append(("v3", method, f"/api/v3/{sample}", "read" if method == "GET" else "write"))
    for route in v2.routes(plugin, service):
        if route.access != "none":
            sample = path_sample(route.pattern.pattern)
            found.append(("v2", route.method, f"/api/v2/{sample}", route.access))
    return [(method, path, access) for _, method, path, access in found]


async def test_no_management_endpoint_answers_without_the_right_credentials(tmp_path: Path) -> None:
    expired = "expired-key-0123456789"  # a mgmt key whose time has passed, as the keys file keeps one
    entry = {"key": expired, "scope": "mgmt", "expires_at": time.time() - 10}
    (tmp_path / "keys.json").write_text(json.dumps([entry]))
    async with open_broker(probe_config(tmp_path)) as broker, connected(broker, "c", 5):
        run = broker.service.run_command
        port = broker.plugins.loaded["api"].plugin.port
        status_key = (await run(["api-key", "create", "scope=status"])).text
        keys = broker.plugins.loaded["api"].plugin.keys
        emqx = (await run(["api-key", "create", "--emqx", "name=admin-key"])).text
        admin_key = tuple(line.split(": ")[1] for line in emqx.splitlines())
        viewer_text = (await run(["api-key", "create", "--emqx", "name=viewer-key", "role=viewer"])).text
        viewer = tuple(line.split(": ")[1] for line in viewer_text.splitlines())
        await run(["api-key", "create", "--emqx", "name=old", "expires=2099-01-01T00:00:00"])
        old = broker.plugins.loaded["api"].plugin.apps.update("old", expires_at=time.time() - 1)
        vernemq = vernemq_endpoints(broker)
        emqx_ops = emqx_endpoints(broker)
        assert len(vernemq) > 30 and len(emqx_ops) > 80  # the lists are really there
        tried = 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

            async def refused(method: str, path: str, **auth: Any) -> None:
                nonlocal tried
                reply = await http.request(method, path, **auth)
                tried += 1
                assert reply.status_code in (401, 403), (method, path, auth, reply.status_code, reply.text[:200])

            for method, path, _scope in vernemq:
                await refused(method, path)
                await refused(method, path, headers={"x-api-key": "wrong"})
                await refused(method, path, headers={"x-api-key": expired})
                await refused(method, path, auth=(status_key, ""))  # another scope
                await refused(method, path, auth=admin_key)  # EMQX credentials are not VerneMQ keys
            for method, path, access in emqx_ops:
                await refused(method, path)
                await refused(method, path, auth=(admin_key[0], "wrong"))
                await refused(method, path, auth=(old.key, "anything"))
                await refused(method, path, auth=(status_key, ""))  # a VerneMQ key is no EMQX key
                if access in ("write", "keys", "users"):
                    await refused(method, path, auth=viewer)  # a viewer reads only
                if access in ("keys", "users"):
                    await refused(method, path, auth=admin_key)  # keys and users are a logged-in user's
        assert tried > 500
        # nothing changed: the probe's client is still there, no ban, the keys as they were
        assert broker.sessions["c"].connection is not None
        assert sorted(k.key for k in keys) == sorted([status_key, expired])
