"""examples/webhook_receiver.py as a real process: real HTTP requests in the VerneMQ
webhooks format get the answers of its rule table; bad requests get a 400 and leave it running."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import plugin_samples

helpers = plugin_samples()
BrokerProcess, short_dir, subprocess_env, admin = (
    helpers.BrokerProcess,
    helpers.short_dir,
    helpers.subprocess_env,
    helpers.admin,
)
ROOT = Path(__file__).parent.parent
RECEIVER = ROOT / "examples" / "webhook_receiver.py"

# The log lines are checked for decoded non-ASCII payloads whatever the machine's locale.
ENV = {**os.environ, "PYTHONUTF8": "1"}

RULES: dict[str, Any] = {
    "users": {"alice": "alice-secret", "sensor-17": "sensor-secret"},
    "anonymous": False,
    "publish": [{"username": "alice", "topic": "alice/#"}, {"username": "*", "topic": "public/#"}],
    "subscribe": [{"username": "*", "topic": "public/#"}, {"username": "alice", "topic": "alice/+"}],
    "cache_seconds": 0,
}


@contextmanager
def running(tmp_path: Path, rules: dict[str, Any]) -> Iterator[tuple[httpx.Client, Path]]:
    """The receiver started with ``rules``; yields an HTTP client for it and its stderr file."""
    directory = Path(tempfile.mkdtemp(dir=tmp_path))  # a test may start several receivers
    rules_file = directory / "rules.json"
    rules_file.write_text(json.dumps(rules))
    stderr_path = directory / "receiver.log"
    command = [sys.executable, str(RECEIVER), "--port", "0", "--rules", str(rules_file)]
    with (
        stderr_path.open("w") as stderr,
        subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=stderr, text=True) as process,
    ):
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line.startswith("listening on http://127.0.0.1:"), (line, stderr_path.read_text())
            with httpx.Client(base_url=line.removeprefix("listening on "), timeout=10) as client:
                yield client, stderr_path
            assert process.poll() is None, "the receiver died"
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[httpx.Client]:
    with running(tmp_path, RULES) as (client, _):
        yield client


def hook(client: httpx.Client, name: str, body: dict[str, Any]) -> httpx.Response:
    return client.post("/", json=body, headers={"vernemq-hook": name})


def register(username: str | None, password: str | None, *, m5: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"peer_addr": "127.0.0.1", "peer_port": 50000, "mountpoint": "", "client_id": "c1"}
    body |= {"username": username, "password": password}
    return body | ({"clean_start": True, "properties": {}} if m5 else {"clean_session": True})


def publish(username: str | None, topic: str, payload: bytes = b"hello") -> dict[str, Any]:
    encoded = base64.b64encode(payload).decode()
    return {
        "username": username,
        "mountpoint": "",
        "client_id": "c1",
        "qos": 1,
        "topic": topic,
        "payload": encoded,
        "retain": False,
    }


def subscribe(username: str | None, *filters: tuple[str, int], m5: bool = False) -> dict[str, Any]:
    extra = {"no_local": False, "rap": False, "retain_handling": "send_retain"} if m5 else {}
    topics = [{"topic": topic, "qos": qos, **extra} for topic, qos in filters]
    return {"username": username, "mountpoint": "", "client_id": "c1", "topics": topics}


OK = {"result": "ok"}
NOT_ALLOWED = {"result": {"error": "not_allowed"}}


@pytest.mark.parametrize("m5", [False, True])
def test_register_checks_the_password(receiver: httpx.Client, m5: bool) -> None:
    name = "auth_on_register_m5" if m5 else "auth_on_register"
    allowed = hook(receiver, name, register("alice", "alice-secret", m5=m5))
    assert allowed.status_code == 200 and allowed.json() == OK
    assert allowed.headers["content-type"] == "application/json"
    assert hook(receiver, name, register("alice", "wrong", m5=m5)).json() == NOT_ALLOWED
    assert hook(receiver, name, register("mallory", "alice-secret", m5=m5)).json() == NOT_ALLOWED
    assert hook(receiver, name, register("alice", None, m5=m5)).json() == NOT_ALLOWED


def test_anonymous_register_follows_the_anonymous_flag(tmp_path: Path) -> None:
    with running(tmp_path, RULES) as (client, _):
        assert hook(client, "auth_on_register", register(None, None)).json() == NOT_ALLOWED
    with running(tmp_path, RULES | {"anonymous": True}) as (client, _):
        assert hook(client, "auth_on_register", register(None, None)).json() == OK
        assert hook(client, "auth_on_register_m5", register(None, None, m5=True)).json() == OK


@pytest.mark.parametrize("name", ["auth_on_publish", "auth_on_publish_m5"])
def test_publish_is_allowed_by_user_and_topic(receiver: httpx.Client, name: str) -> None:
    def answer(username: str | None, topic: str) -> Any:
        body = publish(username, topic) | ({"properties": {}} if name.endswith("_m5") else {})
        return hook(receiver, name, body).json()

    assert answer("alice", "alice/kitchen/temp") == OK
    assert answer("alice", "alice") == OK  # "#" includes the parent level
    assert answer("sensor-17", "alice/kitchen/temp") == NOT_ALLOWED
    assert answer("sensor-17", "public/news") == OK
    assert answer(None, "public/news") == OK  # "*" includes anonymous clients
    assert answer("alice", "private/x") == NOT_ALLOWED
    assert answer("alice", "publicity") == NOT_ALLOWED


def test_wildcard_rules_do_not_match_dollar_topics(tmp_path: Path) -> None:
    rules = RULES | {"publish": [{"username": "*", "topic": "#"}, {"username": "*", "topic": "+/x"}]}
    with running(tmp_path, rules) as (client, _):
        assert hook(client, "auth_on_publish", publish("alice", "any/topic")).json() == OK
        assert hook(client, "auth_on_publish", publish("alice", "$SYS/x")).json() == NOT_ALLOWED


def test_subscribe_v3_answers_each_filter(receiver: httpx.Client) -> None:
    filters = [("public/#", 1), ("public/a/+", 2), ("alice/b", 0), ("alice/+", 1), ("alice/#", 1), ("secret", 1)]
    response = hook(receiver, "auth_on_subscribe", subscribe("alice", *filters))
    assert response.json() == {
        "result": "ok",
        "topics": [
            {"topic": "public/#", "qos": 1},
            {"topic": "public/a/+", "qos": 2},
            {"topic": "alice/b", "qos": 0},
            {"topic": "alice/+", "qos": 1},
            {"topic": "alice/#", "qos": 128},  # "alice/+" does not cover "alice/b/c"
            {"topic": "secret", "qos": 128},
        ],
    }
    other = hook(receiver, "auth_on_subscribe", subscribe("sensor-17", ("alice/b", 1), ("public/x", 0)))
    assert other.json()["topics"] == [{"topic": "alice/b", "qos": 128}, {"topic": "public/x", "qos": 0}]


def test_subscribe_m5_answers_in_modifiers(receiver: httpx.Client) -> None:
    response = hook(receiver, "auth_on_subscribe_m5", subscribe(None, ("public/x", 2), ("alice/x", 1), m5=True))
    assert response.json() == {
        "result": "ok",
        "modifiers": {"topics": [{"topic": "public/x", "qos": 2}, {"topic": "alice/x", "qos": 135}]},
    }


def test_cache_control_only_with_cache_seconds(tmp_path: Path, receiver: httpx.Client) -> None:
    assert "cache-control" not in hook(receiver, "auth_on_register", register("alice", "alice-secret")).headers
    with running(tmp_path, RULES | {"cache_seconds": 30}) as (client, _):
        assert (
            hook(client, "auth_on_register", register("alice", "alice-secret")).headers["cache-control"] == "max-age=30"
        )
        assert hook(client, "auth_on_publish", publish("alice", "alice/x")).headers["cache-control"] == "max-age=30"
        assert "cache-control" not in hook(client, "auth_on_register", register("alice", "wrong")).headers
        assert "cache-control" not in hook(client, "on_publish", publish("alice", "alice/x")).headers


def test_notifications_get_an_empty_object_and_are_logged(tmp_path: Path) -> None:
    with running(tmp_path, RULES) as (client, log):
        response = hook(client, "on_publish", publish("alice", "alice/x", "grüße".encode()))
        assert response.status_code == 200 and response.json() == {}
        assert hook(client, "on_client_gone", {"mountpoint": "", "client_id": "c1"}).json() == {}
        assert hook(client, "on_publish", publish("alice", "alice/x", b"\xff\x00")).json() == {}
    lines = log.read_text(encoding="utf-8").splitlines()
    assert any("on_publish" in line and '"payload": "grüße"' in line for line in lines), lines
    assert any("on_publish" in line and '"payload": "/wA="' in line for line in lines), lines  # binary stays base64
    assert any("on_client_gone" in line and '"client_id": "c1"' in line for line in lines), lines


@pytest.mark.parametrize(
    ("headers", "content"),
    [
        ({"vernemq-hook": "auth_on_register"}, b"not json"),
        ({"vernemq-hook": "auth_on_register"}, b"[1, 2]"),
        ({}, json.dumps(register("alice", "alice-secret")).encode()),
        ({"vernemq-hook": "auth_on_everything"}, json.dumps(register("alice", "alice-secret")).encode()),
        ({"vernemq-hook": "auth_on_publish"}, json.dumps({"username": "alice"}).encode()),
        ({"vernemq-hook": "auth_on_subscribe"}, json.dumps({"username": "alice", "topics": [{"topic": 7}]}).encode()),
    ],
)
def test_bad_requests_get_400_and_the_receiver_keeps_serving(
    receiver: httpx.Client, headers: dict[str, str], content: bytes
) -> None:
    response = receiver.post("/", content=content, headers={"content-type": "application/json", **headers})
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)
    assert hook(receiver, "auth_on_register", register("alice", "alice-secret")).json() == OK


def test_sigterm_stops_it_cleanly(tmp_path: Path) -> None:
    command = [sys.executable, str(RECEIVER), "--port", "0"]  # the built-in rules
    with subprocess.Popen(
        command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip().removeprefix("listening on ")
            with httpx.Client(base_url=url, timeout=10) as client:
                assert hook(client, "auth_on_register", register("sensor-17", "sensor-secret")).json() == OK
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


# -- the receiver next to a broker started on examples/webhooks.toml ---------------------------


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto clients are not installed")
def test_examples_webhooks_toml_with_the_receiver_and_mosquitto_clients(tmp_path: Path) -> None:
    """The README's webhook set-up as a user runs it: the receiver, the broker on
    examples/webhooks.toml (its port 8080 replaced by the receiver's), mosquitto_pub and
    mosquitto_sub; the receiver's rules decide and it logs the notifications."""
    with running(tmp_path, RULES) as (client, log_file), short_dir() as runtime_dir:
        config = (ROOT / "examples" / "webhooks.toml").read_text()
        assert config.count("http://127.0.0.1:8080/") == 8
        config = config.replace("http://127.0.0.1:8080/", f"{client.base_url}/")
        config = config.replace('data_dir = "./data"', f'data_dir = "{tmp_path / "data"}"')
        config_file = tmp_path / "webhooks.toml"
        config_file.write_text(config)
        env = subprocess_env(runtime_dir)
        broker = BrokerProcess(["--config", str(config_file), "--port", "0"], env=env, cwd=ROOT)
        try:
            broker.wait_ready()
            port = str(broker.port)
            sub = ["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-C", "1", "-W", "10", "-u", "alice"]
            with subprocess.Popen(
                [*sub, "-P", "alice-secret", "-t", "public/#", "-V", "mqttv5"], stdout=subprocess.PIPE, text=True
            ) as watcher:
                pub = ["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-u", "alice"]
                for _ in range(50):  # until the subscriber is in
                    done = subprocess.run(
                        [*pub, "-P", "alice-secret", "-t", "public/news", "-m", "hi"], capture_output=True, timeout=10
                    )
                    assert done.returncode == 0, done.stderr
                    if watcher.poll() is not None:
                        break
                    time.sleep(0.1)
                out, _ = watcher.communicate(timeout=10)
            assert out.strip().splitlines()[0] == "hi"
            wrong = subprocess.run(
                [*pub, "-P", "wrong", "-t", "public/news", "-m", "x"], capture_output=True, text=True, timeout=10
            )
            assert wrong.returncode != 0 and "not authori" in wrong.stderr.lower()
            refused = subprocess.run(
                ["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-u", "sensor-17", "-P", "sensor-secret", "-t", "alice/#", "-C", "1", "-W", "3", "-V", "mqttv5"],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            assert "All subscription requests were denied" in refused.stderr
            # ternmq-admin adds an endpoint to the running broker, kept in the data directory
            endpoint = f"{client.base_url}/gone"
            config_arg = ("--config", str(config_file))
            added = admin(*config_arg, "webhooks", "register", "hook=on_client_gone", f"endpoint={endpoint}", env=env)
            assert added.returncode == 0 and added.stdout.strip() == "Done", added.stderr
            shown = admin(*config_arg, "webhooks", "show", env=env)
            assert shown.returncode == 0 and endpoint in shown.stdout and "runtime" in shown.stdout
            kept = json.loads((tmp_path / "data" / "webhooks.json").read_text())
            assert kept == [
                {
                    "hook": "on_client_gone",
                    "endpoint": endpoint,
                    "base64payload": True,
                    "no_payload": False,
                    "response_timeout": 5000,
                    "on_failure": "deny",
                }
            ]
            bad = admin(*config_arg, "webhooks", "register", "hook=on_nothing", f"endpoint={endpoint}", env=env)
            assert bad.returncode != 0 and "unknown hook 'on_nothing'" in bad.stderr
        finally:
            broker.stop()
    log = log_file.read_text()
    assert "auth_on_register" in log and "auth_on_subscribe_m5" in log and "on_publish" in log
    assert '"payload": "hi"' in log or "'payload': 'hi'" in log
