"""The $SYS plugin with real subscribers: VerneMQ's tree and Mosquitto's topics."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import trio

from ternmq import __version__
from ternmq.kernel import ConfigError
from ternmq.kernel.testing import open_broker, test_config

from helpers import connected


def sys_config(**table: Any) -> Any:
    return test_config(plugins={"retainer": {}, "sys": {"interval": 0.2, **table}})


async def test_vernemq_and_mosquitto_trees_reach_a_subscriber() -> None:
    async with open_broker(sys_config()) as broker, connected(broker, "watcher", 4) as watcher:
        await watcher.subscribe("$SYS/#", qos=0)
        node = broker.node_name
        seen: dict[str, bytes] = {}
        with trio.fail_after(10):
            while f"$SYS/{node}/publish/received" not in seen or "$SYS/broker/clients/connected" not in seen:
                message = await watcher.receive()
                if not message.retain:  # a live tick, not what was retained before the watcher came
                    seen[message.topic] = message.payload
        assert seen["$SYS/broker/version"] == f"ternmq version {__version__}".encode()
        assert seen["$SYS/broker/clients/connected"] == b"1"
        assert seen[f"$SYS/{node}/clients/online"] == b"1"
        assert seen["$SYS/broker/uptime"].endswith(b" seconds")
        assert seen[f"$SYS/{node}/retained/messages"].isdigit()  # a plugin's metric too


async def test_the_tree_is_retained_for_late_subscribers_by_default() -> None:
    async with open_broker(sys_config(interval=60)) as broker:
        await trio.sleep(0.1)  # the first tick has been published
        async with connected(broker, "late", 5) as late:
            await late.subscribe("$SYS/broker/clients/total", qos=0)
            message = await late.receive()
            assert message.retain and message.payload.isdigit()


async def test_not_retained_and_one_tree_when_told() -> None:
    async with open_broker(sys_config(interval=60, retain=False, vernemq_tree=False)) as broker:
        await trio.sleep(0.1)
        assert [m.topic for m in await broker.service.retained("$SYS/#")] == []
        async with connected(broker, "w", 5) as watcher:
            await watcher.subscribe("$SYS/#", qos=0)
            assert await watcher.nothing_received(0.2)
        topics = plugin_topics(broker)
        assert topics and all(topic.startswith("$SYS/broker/") for topic in topics)


def plugin_topics(broker: Any) -> dict[str, str]:
    plugin = broker.plugins.loaded["sys"].plugin
    result: dict[str, str] = plugin.topics(broker.service)
    return result


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto_sub is not installed")
async def test_mosquitto_sub_reads_the_uptime() -> None:
    async with open_broker(sys_config()) as broker:
        argv = ["mosquitto_sub", "-p", str(broker.port()), "-t", "$SYS/broker/uptime", "-C", "1", "-W", "10"]
        done = await trio.run_process(argv, capture_stdout=True, check=False)
    assert done.returncode == 0 and done.stdout.strip().endswith(b"seconds")


@pytest.mark.parametrize(
    ("table", "key"), [({"interval": 0}, "interval"), ({"qos": 3}, "qos"), ({"every": 1}, "every")]
)
async def test_bad_configuration_names_table_and_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ExceptionGroup) as caught:
        async with open_broker(test_config(plugins={"sys": table})):
            pass
    assert caught.group_contains(ConfigError, match=rf"\[plugins\.sys\] {key}", depth=2)
