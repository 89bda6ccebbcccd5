"""The admin command tree, run in-process through ``broker.admin.run``.

Every command returns a Table or a Text; ``to_json()`` is the shape the control socket
and the HTTP API send (``{"type": "table", "table": [...]}``, ``{"type": "text",
"text": ...}``). The commands act on a real broker with real clients connected.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from typing import Any

import pytest
import trio

from ternmq import __version__
from ternmq.kernel.admin import ADMIN_EXAMPLES, ADMIN_OPTIONS_USAGE, CommandError
from ternmq.kernel.codec import Disconnect, Pingresp
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.testing import MQTTTestClient, open_broker, registered, test_config
from ternmq.kernel.values.output import Table, Text

from helpers import PLUGIN_SHOW_COLUMNS, eventually
from plugin_samples import SampleConfig, SamplePlugin


async def run(broker: Any, *argv: str) -> Table | Text:
    return await broker.admin.run(broker.service, list(argv))


async def table(broker: Any, *argv: str) -> list[dict[str, Any]]:
    result = await run(broker, *argv)
    assert isinstance(result, Table), result
    return [dict(row) for row in result.rows]


async def text(broker: Any, *argv: str) -> str:
    result = await run(broker, *argv)
    assert isinstance(result, Text), result
    return result.text


async def command_error(broker: Any, *argv: str) -> CommandError:
    with pytest.raises(CommandError) as caught:
        await run(broker, *argv)
    return caught.value


# ------------------------------------------------------------------ plugin


async def test_plugin_show_lists_each_plugin_with_its_columns(broker: Any) -> None:
    result = await run(broker, "plugin", "show")
    assert isinstance(result, Table)
    assert result.columns == PLUGIN_SHOW_COLUMNS
    rows = [dict(row) for row in result.rows]
    hooks = rows[0].pop("Hook(s)")
    assert hooks == sorted(hooks) and {"retain_delete", "retain_lookup", "retain_store"} <= set(hooks)
    functions = rows[0].pop("M:F/A")
    assert [f.split(":")[1].split("/")[0] for f in functions] == [f"Plugin.{hook}" for hook in hooks]
    assert rows == [
        {
            "Node": broker.node_name,
            "Plugin": "retainer",
            "Type": "application",
            "source": "builtin",
            "version": __version__,
            "state": "running",
            "priority": None,
            "errors": 0,
            "timeouts": 0,
            "last error": None,
        }
    ]
    rendered = result.render()
    assert all(column in rendered.splitlines()[1] for column in PLUGIN_SHOW_COLUMNS)
    assert "retain_lookup" in rendered


async def test_plugin_show_filters_by_plugin_and_hook(broker: Any) -> None:
    await run(broker, "plugin", "enable", "name=sample", "--path=plugin_samples:SamplePlugin")
    assert [r["Plugin"] for r in await table(broker, "plugin", "show")] == ["retainer", "sample"]
    assert [r["Plugin"] for r in await table(broker, "plugin", "show", "--plugin=sample")] == ["sample"]
    assert [r["Plugin"] for r in await table(broker, "plugin", "show", "--hook=on_publish")] == ["sample"]
    assert await table(broker, "plugin", "show", "--hook=on_auth") == []


async def test_results_render_as_the_json_shapes_of_format_json(broker: Any) -> None:
    shown = await run(broker, "plugin", "show")
    document = json.loads(json.dumps(shown.to_json()))
    assert document["type"] == "table"
    assert document["table"] == [dict(row) for row in shown.rows]
    assert document["table"][0]["Plugin"] == "retainer"
    done = await run(broker, "plugin", "disable", "name=retainer")
    assert json.loads(json.dumps(done.to_json())) == {"type": "text", "text": "Done"}


async def test_plugin_enable_with_path_and_repeated_config_then_disable(broker: Any) -> None:
    result = await run(
        broker,
        "plugin",
        "enable",
        "name=sample",
        "--path=plugin_samples:SamplePlugin",
        "--config",
        "greeting=hey",
        "--config=limit=9",
    )
    assert result == Text("Done")
    loaded = broker.plugins.loaded["sample"]
    assert isinstance(loaded.plugin, SamplePlugin)
    assert loaded.config == SampleConfig(greeting="hey", limit=9)  # 9 parsed as an integer
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("e")
        await client.publish("enabled/1", qos=1)
    assert loaded.plugin.published == ["enabled/1"]
    assert await text(broker, "plugin", "disable", "name=sample") == "Done"
    assert "sample" not in broker.plugins.loaded
    assert [r["Plugin"] for r in await table(broker, "plugin", "show")] == ["retainer"]


async def test_plugin_enable_and_disable_errors_are_command_errors(broker: Any) -> None:
    error = await command_error(
        broker, "plugin", "enable", "name=sample", "--path=plugin_samples:SamplePlugin", "--config", "colour=red"
    )
    assert "[plugins.sample] colour" in str(error)
    error = await command_error(
        broker, "plugin", "enable", "name=sample", "--path=plugin_samples:SamplePlugin", "--config=novalue"
    )
    assert "--config takes key=value" in str(error)
    error = await command_error(
        broker, "plugin", "enable", "name=sample", "--path=plugin_samples:SamplePlugin", "--config", "novalue"
    )
    assert "--config takes key=value, not 'novalue'" in str(error)
    error = await command_error(
        broker, "plugin", "enable", "name=sample", "--path=plugin_samples:SamplePlugin", "--config"
    )
    assert "--config takes key=value, not ''" in str(error)
    assert "plugin nosuch: not a built-in plugin" in str(await command_error(broker, "plugin", "enable", "name=nosuch"))
    assert "nosuch" in str(await command_error(broker, "plugin", "disable", "name=nosuch"))
    assert "already loaded" in str(await command_error(broker, "plugin", "enable", "name=retainer"))
    assert list(broker.plugins.loaded) == ["admin", "retainer"]  # admin: essential, always loaded


async def test_plugin_admin_commands_come_and_go_with_the_plugin(broker: Any) -> None:
    await run(
        broker,
        "plugin",
        "enable",
        "name=sample",
        "--path=plugin_samples:SamplePlugin",
        "--config",
        'greeting="good day"',
    )
    assert await text(broker, "sample", "hello", "--name=bob") == "good day, bob"
    assert "sample" in await text(broker, "--help")
    assert "Say the configured greeting." in await text(broker, "sample", "--help")
    await run(broker, "plugin", "disable", "name=sample")
    error = await command_error(broker, "sample", "hello")
    assert "unknown command" in str(error) and error.usage.startswith("Usage: ternmq-admin")
    assert "sample" not in await text(broker, "--help")


# ------------------------------------------------------------------ session


async def test_session_show_columns_and_filters(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as away:
        await away.connect("away", clean_start=False, properties={"session_expiry_interval": 60})
        await away.disconnect()
    await eventually(lambda: "away" in broker.sessions and broker.sessions["away"].connection is None)
    async with MQTTTestClient.open(broker.port()) as one, MQTTTestClient.open(broker.port(), 4) as two:
        await one.connect("c1")
        await two.connect("c2", username="bob")
        rows = await table(broker, "session", "show")
        assert {r["client_id"] for r in rows} == {"c1", "c2", "away"}
        assert set(rows[0]) == {"client_id", "is_online", "mountpoint", "peer_host", "peer_port", "user"}
        by_id = {r["client_id"]: r for r in rows}
        assert by_id["c2"]["user"] == "bob" and by_id["c2"]["peer_host"] == "127.0.0.1"
        assert by_id["away"]["is_online"] is False and by_id["c1"]["is_online"] is True

        result = await run(broker, "session", "show", "--client_id", "--user")
        assert result.columns == ("client_id", "user")
        assert sorted((r["client_id"], r["user"]) for r in result.rows) == [("away", None), ("c1", None), ("c2", "bob")]
        assert await table(broker, "session", "show", "--client_id=c2", "--protocol") == [
            {"client_id": "c2", "protocol": 4}
        ]
        online = await table(broker, "session", "show", "--client_id", "--is_online=true")
        assert sorted(r["client_id"] for r in online) == ["c1", "c2"]
        offline = await table(broker, "session", "show", "--client_id", "--is_online=false")
        assert [r["client_id"] for r in offline] == ["away"]
        matched = await table(broker, "session", "show", "--client_id=~^c[0-9]$")
        assert sorted(r["client_id"] for r in matched) == ["c1", "c2"]
        assert len(await table(broker, "session", "show", "--limit=2")) == 2
        assert len(await table(broker, "session", "show", "--client_id=~^c", "--limit=1")) == 1
        error = await command_error(broker, "session", "show", "--colour")
        assert "unknown session item --colour" in str(error)


async def test_session_disconnect_sends_0x98_and_keeps_a_persistent_session(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("kick", clean_start=False, properties={"session_expiry_interval": 60})
        await client.subscribe("keep/#", qos=1)
        assert await text(broker, "session", "disconnect", "client-id=kick") == "Done"
        disconnect = await client.closed()
        assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x98
    await eventually(lambda: broker.sessions["kick"].connection is None)
    assert [r["is_online"] for r in await table(broker, "session", "show", "--client_id=kick", "--is_online")] == [
        False
    ]
    assert "keep/#" in broker.sessions["kick"].subscriptions


async def test_session_disconnect_with_cleanup_removes_the_session(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("gone", clean_start=False, properties={"session_expiry_interval": 60})
        await client.subscribe("gone/#", qos=1)
        assert await text(broker, "session", "disconnect", "client-id=gone", "--cleanup") == "Done"
        disconnect = await client.closed()
        assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x98
    await eventually(lambda: "gone" not in broker.sessions)
    assert await table(broker, "session", "show", "--client_id=gone") == []
    async with MQTTTestClient.open(broker.port()) as again:
        connack = await again.connect("gone", clean_start=False, properties={"session_expiry_interval": 60})
        assert connack.session_present is False


async def test_session_disconnect_of_an_unknown_client_is_an_error(broker: Any) -> None:
    assert "nobody" in str(await command_error(broker, "session", "disconnect", "client-id=nobody"))
    error = await command_error(broker, "session", "disconnect")
    assert "missing argument client-id=" in str(error)
    assert error.usage.startswith("Usage: ternmq-admin session disconnect client-id=<client-id>")


# ------------------------------------------------------------------ listener


async def test_listener_show(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("l")
        rows = await table(broker, "listener", "show")
    assert rows == [
        {
            "name": "test",
            "type": "tcp",
            "status": "running",
            "address": "127.0.0.1",
            "port": broker.port(),
            "max_conns": 10000,
            "active_conns": 1,
            "all_conns": 1,
            "mountpoint": "",
        }
    ]


async def test_listener_start_then_stop_keeps_its_clients(broker: Any) -> None:
    done = await text(broker, "listener", "start", "name=extra", "port=0")
    port = broker.port("extra")
    assert port and port != broker.port()
    assert done == f"Done: extra on 127.0.0.1:{port}"
    assert {r["name"]: r["status"] for r in await table(broker, "listener", "show")} == {
        "test": "running",
        "extra": "running",
    }
    async with MQTTTestClient.open(port) as client:
        assert (await client.connect("on-extra")).reason_code == 0
        assert await text(broker, "listener", "stop", "name=extra") == "Done"
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
        await client.ping()
        assert isinstance(await client.next_packet(), Pingresp)  # its client stays
        rows = {r["name"]: r for r in await table(broker, "listener", "show")}
        assert rows["extra"]["status"] == "stopped"
    assert "extra" in str(await command_error(broker, "listener", "stop", "name=extra"))


async def test_listener_stop_with_kill_sessions_closes_its_clients(broker: Any) -> None:
    await run(broker, "listener", "start", "name=doomed", "port=0")
    port = broker.port("doomed")
    async with MQTTTestClient.open(port) as victim, MQTTTestClient.open(broker.port()) as bystander:
        await victim.connect("victim")
        await bystander.connect("bystander")
        assert await text(broker, "listener", "stop", "name=doomed", "--kill_sessions") == "Done"
        disconnect = await victim.closed()
        assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x98
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
        await bystander.ping()
        assert isinstance(await bystander.next_packet(), Pingresp)


async def test_listener_start_errors(broker: Any) -> None:
    assert "already running" in str(await command_error(broker, "listener", "start", "name=test", "port=0"))
    assert "type" in str(await command_error(broker, "listener", "start", "name=x", "port=0", "--type=carrier-pigeon"))
    assert "missing argument name=" in str(await command_error(broker, "listener", "start", "port=0"))


async def test_a_listener_start_that_fails_leaves_the_table_as_it_was(broker: Any) -> None:
    before = await table(broker, "listener", "show")
    taken = broker.port()
    error = await command_error(broker, "listener", "start", "name=busy", f"port={taken}")
    assert str(error).startswith(f"listener busy cannot listen on 127.0.0.1:{taken}: ")  # no "[Errno 98]"
    error = await command_error(broker, "listener", "start", "name=nowhere", "address=192.0.2.1", "port=0")
    assert str(error).startswith("listener nowhere cannot listen on 192.0.2.1:0: ")
    assert await table(broker, "listener", "show") == before
    # A stopped listener that fails to start again keeps its row as it was.
    await run(broker, "listener", "start", "name=spare", "port=0")
    spare = broker.port("spare")
    await run(broker, "listener", "stop", "name=spare")
    stopped = await table(broker, "listener", "show")
    assert {r["name"]: (r["status"], r["port"]) for r in stopped}["spare"] == ("stopped", spare)
    assert "cannot listen" in str(await command_error(broker, "listener", "start", "name=spare", f"port={taken}"))
    assert await table(broker, "listener", "show") == stopped
    assert (await text(broker, "listener", "start", "name=spare", "port=0")).startswith("Done: spare on 127.0.0.1:")


# ------------------------------------------------------------------ retain, metrics, node


async def test_retain_show_and_delete(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("r")
        await client.publish("r/1", b"one", qos=1, retain=True)
        await client.publish("r/2", b"two", qos=0, retain=True)
        await client.publish("r/2", b"two", qos=1)  # not retained: nothing changes
    rows = await table(broker, "retain", "show")
    assert sorted((r["topic"], r["payload"], r["qos"]) for r in rows) == [("r/1", "one", 1), ("r/2", "two", 0)]
    assert await table(broker, "retain", "show", "--topic=r/1") == [{"topic": "r/1", "payload": "one", "qos": 1}]
    assert await text(broker, "retain", "delete", "--topic=r/1") == "Deleted 1 retained message on r/1"
    assert [r["topic"] for r in await table(broker, "retain", "show")] == ["r/2"]
    async with MQTTTestClient.open(broker.port()) as late:
        await late.connect("late")
        await late.subscribe("r/#")
        assert (await late.receive()).topic == "r/2"
        assert await late.nothing_received(0.2)
    assert await text(broker, "retain", "delete", "--topic=r/1") == "No retained message on r/1"
    assert "--topic" in str(await command_error(broker, "retain", "delete"))


async def test_retain_delete_with_a_filter_deletes_what_it_matches_and_says_how_many(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("r")
        for topic in ("a/1", "a/2", "a/b/c", "b/1", "$app/x"):
            await client.publish(topic, topic.encode(), qos=1, retain=True)
    assert await text(broker, "retain", "delete", "--topic=a/+/c") == "Deleted 1 retained message matching a/+/c"
    assert await text(broker, "retain", "delete", "--topic=a/#") == "Deleted 2 retained messages matching a/#"
    assert await text(broker, "retain", "delete", "--topic=a/#") == "No retained message matching a/#"
    # "#" leaves the $ topics alone, as it does for a subscriber.
    assert sorted(r["topic"] for r in await table(broker, "retain", "show")) == ["b/1"]
    assert await table(broker, "retain", "show", "--topic=$app/#") == [
        {"topic": "$app/x", "payload": "$app/x", "qos": 1}
    ]
    async with MQTTTestClient.open(broker.port()) as late:
        await late.connect("late")
        await late.subscribe("#")
        assert (await late.receive()).topic == "b/1"
        assert await late.nothing_received(0.2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["retain", "delete", "--topic=a/#/b"], "--topic=a/#/b: '#' must be the whole last level"),
        (["retain", "delete", "--topic=$share/g/a"], "not a shared subscription"),
        (["retain", "delete", "--topic"], "--topic needs a value"),
        (["retain", "delete", "--topic="], "--topic is required"),
        (["retain", "show", "--topic=a+"], "'+' must be a whole level"),
    ],
)
async def test_retain_refuses_a_bad_topic_and_deletes_nothing(broker: Any, argv: list[str], message: str) -> None:
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("r")
        await client.publish("a/1", b"kept", qos=1, retain=True)
    error = await command_error(broker, *argv)
    assert message in str(error)
    assert error.usage.startswith(f"Usage: ternmq-admin {argv[0]} {argv[1]}")
    assert [r["topic"] for r in await table(broker, "retain", "show")] == ["a/1"]


async def test_retain_delete_without_a_retainer_says_so(broker: Any) -> None:
    await run(broker, "plugin", "disable", "name=retainer")
    assert "no retainer" in str(await command_error(broker, "retain", "delete", "--topic=a/b"))


async def test_retain_show_columns_and_limit(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("r")
        for topic in ("c/3", "c/1", "c/2"):
            await client.publish(topic, b"p", qos=1, retain=True)
    assert await table(broker, "retain", "show", "--qos", "--limit=2") == [
        {"topic": "c/1", "qos": 1},
        {"topic": "c/2", "qos": 1},
    ]
    assert await table(broker, "retain", "show", "--payload", "--topic=c/3") == [{"topic": "c/3", "payload": "p"}]


async def test_retain_show_without_a_retainer_says_so(broker: Any) -> None:
    await run(broker, "plugin", "disable", "name=retainer")
    assert "no retainer" in str(await command_error(broker, "retain", "show"))


async def test_metrics_show_counts_what_happened(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("m")
        await client.subscribe("m/#")
        await client.publish("m/1", b"x", qos=1)
        await client.receive()
        lines = (await text(broker, "metrics", "show")).splitlines()
    values = dict(line.split(" = ") for line in lines)
    assert values["gauge.clients_online"] == "1"
    assert values["gauge.subscriptions"] == "1"
    assert values["counter.connections_accepted"] == "1"
    assert values["counter.publish_received"] == "1"
    assert lines == sorted(lines)


async def test_metrics_count_packets_by_type_and_bytes_both_ways(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("counted")
        await client.subscribe("c/#", qos=1)
        await client.publish("c/1", b"x", qos=1)
        await client.receive()
        await client.disconnect()
        await eventually(lambda: not broker.sessions)
    values = broker.service.metrics()
    received = {k: v for k, v in values.items() if k.startswith("counter.packets_received")}
    sent = {k: v for k, v in values.items() if k.startswith("counter.packets_sent")}
    assert received == {
        'counter.packets_received{type="CONNECT"}': 1,
        'counter.packets_received{type="SUBSCRIBE"}': 1,
        'counter.packets_received{type="PUBLISH"}': 1,
        'counter.packets_received{type="PUBACK"}': 1,
        'counter.packets_received{type="DISCONNECT"}': 1,
    }
    assert sent == {
        'counter.packets_sent{type="CONNACK"}': 1,
        'counter.packets_sent{type="SUBACK"}': 1,
        'counter.packets_sent{type="PUBACK"}': 1,
        'counter.packets_sent{type="PUBLISH"}': 1,
    }
    assert values["counter.bytes_received"] > 20 and values["counter.bytes_sent"] > 10
    # bytes by type: whole packets, fixed header included
    assert values['counter.packet_bytes_received{type="DISCONNECT"}'] == 2  # v5, nothing after the header
    assert values['counter.packet_bytes_sent{type="PUBACK"}'] >= 4
    by_type = sum(v for k, v in values.items() if k.startswith("counter.packet_bytes_received"))
    assert by_type == values["counter.bytes_received"]
    sent_by_type = sum(v for k, v in values.items() if k.startswith("counter.packet_bytes_sent"))
    assert sent_by_type == values["counter.bytes_sent"]


async def test_metrics_time_each_plugins_hooks(broker: Any) -> None:
    class Slow:
        @hookimpl
        async def auth_on_publish(self) -> Any:
            await trio.sleep(0.05)
            return None

    async with registered(broker, Slow(), name="slow"), MQTTTestClient.open(broker.port()) as client:
        await client.connect("timed")
        await client.publish("t", b"x", qos=1)
        await client.publish("t", b"y", qos=1)
        values = broker.service.metrics()
    assert values['counter.hook_calls{plugin="slow",hook="auth_on_publish"}'] == 2
    assert values['counter.hook_seconds{plugin="slow",hook="auth_on_publish"}'] >= 0.1


async def test_metrics_show_a_labelled_metric_once_per_label_values(broker: Any) -> None:
    class Labelled:
        @hookimpl
        def register_metrics(self, registry: Any) -> None:
            registry.counter(
                "calls", lambda: {("a", 'x"y'): 2, ("b", "z"): 3}, "calls per hook and endpoint", labels=("hook", "url")
            )

    async with registered(broker, Labelled()):
        values = dict(line.split(" = ") for line in (await text(broker, "metrics", "show")).splitlines())
        apart = (await text(broker, "metrics", "show", "--aggregate=false")).splitlines()
    assert values["counter.calls"] == "5"  # summed over its labels, as VerneMQ shows them
    values = dict(line.split(" = ") for line in apart)
    assert values['counter.calls{hook="a",url="x\\"y"}'] == "2"
    assert values['counter.calls{hook="b",url="z"}'] == "3"


async def test_node_status(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("n")
        await client.subscribe("n/#")
        result = await run(broker, "node", "status")
    assert isinstance(result, Table) and result.columns == ("Status", "Value")
    status = {row["Status"]: row["Value"] for row in result.rows}
    assert status["node"] == broker.node_name
    assert (status["num_online"], status["num_offline"], status["num_subscriptions"]) == (1, 0, 1)
    assert status["version"] == __version__


async def test_node_status_queue_rows_add_up_when_messages_are_dropped() -> None:
    async with open_broker(test_config(max_queued_messages=1)) as broker:
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("sleeper", clean_start=False, properties={"session_expiry_interval": 60})
            await client.subscribe("q", qos=1)
        await eventually(lambda: broker.sessions["sleeper"].connection is None)
        for _ in range(4):
            await broker.service.publish("q", b"x", qos=1)
        result = await run(broker, "node", "status")
    status = {row["Status"]: row["Value"] for row in result.rows}
    assert (status["queue_in"], status["queue_out"], status["queue_drop"]) == (4, 1, 3)
    assert status["queue_in"] == status["queue_out"] + status["queue_drop"]


async def test_metrics_show_and_node_status_survive_a_malformed_reader(broker: Any) -> None:
    class Malformed:
        @hookimpl
        def register_metrics(self, registry: Any) -> None:
            registry.counter("wrong_keys", lambda: {"ab": 1}, "keys not tuples", labels=("x",))
            registry.counter("wrong_arity", lambda: {("a", "b"): 1}, "two values, one label", labels=("x",))
            registry.counter("not_numbers", lambda: {("a",): None}, "values not numbers", labels=("x",))
            registry.gauge("mapping_unlabelled", lambda: {("a",): 1}, "a mapping without labels")
            registry.gauge("raises", lambda: 1 / 0, "a reader that raises", labels=("x",))
            registry.gauge("fine", lambda: {("a",): 2, (3,): 4}, "good, with a number as label value", labels=("x",))

    async with registered(broker, Malformed()):
        for argv in (("metrics", "show"), ("metrics", "show", "--aggregate=false"), ("metrics", "show", "--x=a")):
            lines = set((await text(broker, *argv)).splitlines())
            for name in ("counter.wrong_keys", "counter.wrong_arity", "counter.not_numbers", "gauge.raises"):
                assert f"{name} = -1" in lines, (argv, name)
            assert ("gauge.mapping_unlabelled = -1" in lines) == ("--x=a" not in argv)  # a filter keeps labelled ones
        assert "gauge.fine = 6" in (await text(broker, "metrics", "show")).splitlines()
        assert 'gauge.fine{x="3"} = 4' in (await text(broker, "metrics", "show", "--aggregate=false")).splitlines()
        assert "gauge.fine = 4" in (await text(broker, "metrics", "show", "--x=3")).splitlines()
        assert "gauge.fine" not in await text(broker, "metrics", "show", "--x=nothing")
        assert isinstance(await run(broker, "node", "status"), Table)


# ------------------------------------------------------------------ show / set


async def test_set_max_inflight_then_show_it_and_new_clients_get_it(broker: Any) -> None:
    assert await table(broker, "show", "--max_inflight") == [{"node": broker.node_name, "max_inflight": 32}]
    assert await text(broker, "set", "max_inflight=64") == "Done"
    assert await table(broker, "show", "--max_inflight") == [{"node": broker.node_name, "max_inflight": 64}]
    async with MQTTTestClient.open(broker.port()) as client:
        connack = await client.connect("s")
        assert connack.properties["receive_maximum"] == 64
    every = (await table(broker, "show"))[0]
    assert every["max_inflight"] == 64 and every["allow_anonymous"] is True and "hook_timeout" in every


async def test_set_no_match_deny_refuses_the_next_unanswered_publish(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as client:
        assert (await client.connect("no-match")).reason_code == 0
        assert (await client.publish("nm/t", b"x", qos=1)).reason_code == 0x10  # allowed, nobody listens
        assert await text(broker, "set", "no_match=deny") == "Done"
        assert (await client.publish("nm/t", b"x", qos=1)).reason_code == 0x87
        assert (await client.subscribe("nm/#", qos=1)).reason_codes == [0x87]
        with pytest.raises(CommandError, match="no_match: must be one of 'allow', 'deny'"):
            await text(broker, "set", "no_match=maybe")
        assert broker.settings.no_match == "deny"


async def test_set_allow_anonymous_false_applies_to_the_next_connect(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as before:
        assert (await before.connect("before")).reason_code == 0
        assert await text(broker, "set", "allow_anonymous=false") == "Done"
        assert await table(broker, "show", "--allow_anonymous") == [
            {"node": broker.node_name, "allow_anonymous": False}
        ]
        async with MQTTTestClient.open(broker.port()) as after:
            assert (await after.connect("after")).reason_code == 0x86
        await before.ping()
        assert isinstance(await before.next_packet(), Pingresp)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["session", "show", "--limit=abc"], "--limit takes a whole number >= 1 (--limit=N), not 'abc'"),
        (["session", "show", "--limit=-2"], "--limit takes a whole number >= 1 (--limit=N), not '-2'"),
        (["session", "show", "--limit"], "--limit takes a whole number >= 1 (--limit=N), not nothing"),
        (["retain", "show", "--limit=1.5"], "--limit takes a whole number >= 1 (--limit=N), not '1.5'"),
        (["retain", "show", "--limit=0"], "--limit takes a whole number >= 1 (--limit=N), not '0'"),
        (["session", "show", "--client_id=~("], "--client_id=~(: not a regular expression"),
        (
            ["session", "disconnect", "client-id=victim", "--cleanup=no"],
            "--cleanup is a switch (--cleanup, or --cleanup=true|false), not --cleanup=no",
        ),
        (["listener", "stop", "name=test", "--kill_sessions=yes"], "--kill_sessions is a switch"),
        (["listener", "start", "name=x", "port=abc"], "port: must be an integer, not 'abc'"),
        (["listener", "start", "name=x", "port=70000"], "port: must be between 0 and 65535"),
        (["listener", "start", "name=x", "port=0", "--max_connections=0"], "--max_connections: must be greater than 0"),
        (
            ["listener", "start", "name=x", "port=0", "--type=pigeon"],
            "--type: must be one of 'tcp', 'tls', 'ws', 'wss'",
        ),
        (["listener", "start", "name=x", "port=0", "--type"], "--type needs a value: --type=<value>"),
        (["listener", "start", "name=x", "port=0", "--require_certificate=maybe"], "--require_certificate is a switch"),
        (["plugin", "show", "--plugin"], "--plugin needs a value"),
        (["plugin", "enable", "name=x", "--path"], "--path needs a value"),
        (["show", "--max_inflight=3"], "show takes --max_inflight without a value (set max_inflight=3 changes it)"),
        (["set", "max_inflight=abc"], "max_inflight: must be an integer, not 'abc'"),
        (["set", "--max_inflight=3"], "unknown flag --max_inflight"),
    ],
)
async def test_a_bad_option_value_is_a_usage_error_that_changes_nothing(
    broker: Any, argv: list[str], message: str
) -> None:
    async with MQTTTestClient.open(broker.port()) as victim:
        await victim.connect("victim")
        settings, listeners, plugins = broker.settings, dict(broker.listeners), list(broker.plugins.loaded)
        error = await command_error(broker, *argv)
        assert message in str(error)
        words = " ".join(w for w in argv if not w.startswith("-") and "=" not in w)
        assert error.usage.startswith(f"Usage: ternmq-admin {words}"), error.usage
        assert (broker.settings, broker.listeners, list(broker.plugins.loaded)) == (settings, listeners, plugins)
        assert [r["status"] for r in await table(broker, "listener", "show")] == ["running"]
        await victim.ping()
        assert isinstance(await victim.next_packet(), Pingresp)


async def test_switches_take_true_and_false(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("kept", clean_start=False, properties={"session_expiry_interval": 60})
        assert await text(broker, "session", "disconnect", "client-id=kept", "--cleanup=false") == "Done"
        await client.closed()
    await eventually(lambda: "kept" in broker.sessions and broker.sessions["kept"].connection is None)
    assert await text(broker, "session", "disconnect", "client-id=kept", "--cleanup=true") == "Done"
    await eventually(lambda: "kept" not in broker.sessions)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["set", "max_inflight=0"], "max_inflight"),
        (["set", "allow_anonymous=maybe"], "allow_anonymous"),
        (["set", "hook_timeout=-1"], "hook_timeout"),
        (["set", "colour=red"], "unknown setting colour"),
        (["set"], "set needs key=value"),
        (["show", "--colour"], "unknown setting colour"),
    ],
)
async def test_bad_set_or_show_is_refused_and_changes_nothing(broker: Any, argv: list[str], needle: str) -> None:
    before = broker.settings
    assert needle in str(await command_error(broker, *argv))
    assert broker.settings == before


# ------------------------------------------------------------------ errors and help


@pytest.mark.parametrize(
    ("argv", "message", "usage"),
    [
        (["bogus"], "unknown command: bogus", f"Usage: ternmq-admin {ADMIN_OPTIONS_USAGE} <command>"),
        (["plugin", "bogus"], "unknown command: plugin bogus", "Usage: ternmq-admin plugin <command>"),
        (["plugin", "show", "stray"], "unknown command: plugin show stray", "Usage: ternmq-admin plugin show"),
        (["plugin", "show", "--bogus"], "unknown flag --bogus", "Usage: ternmq-admin plugin show"),
        (["plugin", "disable", "nom=x"], "unknown argument nom=", "Usage: ternmq-admin plugin disable name=<name>"),
        (["plugin", "disable"], "missing argument name=", "Usage: ternmq-admin plugin disable name=<name>"),
        (["node", "status", "extra=1"], "unknown argument extra=", "Usage: ternmq-admin node status"),
    ],
)
async def test_unknown_commands_flags_and_arguments_raise_with_usage(
    broker: Any, argv: list[str], message: str, usage: str
) -> None:
    error = await command_error(broker, *argv)
    assert message in str(error)
    assert error.usage.startswith(usage)


def _every_level(broker: Any) -> list[tuple[str, ...]]:
    levels = {()}
    for path in broker.admin.commands:
        for length in range(1, len(path) + 1):
            levels.add(path[:length])
    return sorted(levels)


async def test_help_at_every_level(broker: Any) -> None:
    levels = _every_level(broker)
    assert {
        ("plugin",),
        ("plugin", "show"),
        ("session", "disconnect"),
        ("listener", "stop"),
        ("set",),
        ("show",),
        ("node", "status"),
        ("retain", "delete"),
        ("metrics", "show"),
    } <= set(levels)
    for level in levels:
        for flag in ("--help", "-h"):
            result = await run(broker, *level, flag)
            assert isinstance(result, Text), level
            assert result.text.startswith("Usage: ternmq-admin " + " ".join(level)), (level, result.text)
            command = broker.admin.commands.get(level)
            if command is None:  # a group lists its commands
                children = {p[len(level)] for p in broker.admin.commands if p[: len(level)] == level}
                assert all(f"  {child}" in result.text for child in children), level
            else:
                assert command.help in result.text
                assert all(f"--{name}" in result.text for name in command.flags), level
    # A group named alone prints its help too.
    assert (await text(broker, "session")).startswith("Usage: ternmq-admin session <command>")


async def test_top_level_help_lists_commands_options_and_examples(broker: Any) -> None:
    help_text = await text(broker, "--help")
    assert help_text.startswith(f"Usage: ternmq-admin {ADMIN_OPTIONS_USAGE} <command> [args]")
    commands = help_text[help_text.index("Commands:") : help_text.index("Options:")]
    assert all(f"  {group} " in commands for group in ("listener", "node", "plugin", "retain", "session", "set"))
    options = help_text[help_text.index("Options:") : help_text.index("Examples:")]
    assert all(option in options for option in ("--config FILE", "--socket PATH", "--format=human|json", "--help"))
    assert all(f"  ternmq-admin {example}" in help_text for example in ADMIN_EXAMPLES)


async def test_every_help_example_parses_against_the_command_tree(broker: Any) -> None:
    # (test_admin_cli runs them against a real broker.)
    for example in ADMIN_EXAMPLES:
        command, _, wants_help = broker.admin.parse(shlex.split(example, comments=True))
        assert command is not None and not wants_help, example
    found = []
    for command in broker.admin.commands.values():  # "set a=b c=d." / "show --a --b." in a command's help
        for example in re.findall(r": ((?:show|set) [^.]*)\.", command.help):
            parsed, _, _ = broker.admin.parse(shlex.split(example))
            assert parsed is command, example
            found.append(example)
    assert len(found) == 2, found


async def test_help_mentions_required_arguments(broker: Any) -> None:
    assert "client-id=<client-id>" in await text(broker, "session", "disconnect", "--help")
    help_text = await text(broker, "plugin", "enable", "--help")
    assert "name=<name>" in help_text and "--config" in help_text and "--path" in help_text


async def test_json_shape_of_every_read_only_command(broker: Any) -> None:
    commands: Sequence[Sequence[str]] = [
        ("plugin", "show"),
        ("session", "show"),
        ("listener", "show"),
        ("retain", "show"),
        ("node", "status"),
        ("show",),
    ]
    for argv in commands:
        document = (await run(broker, *argv)).to_json()
        assert document["type"] == "table" and isinstance(document["table"], list)
        json.dumps(document)
    assert (await run(broker, "metrics", "show")).to_json()["type"] == "text"


async def test_plugin_show_lists_plugins_in_calling_order(broker: Any) -> None:
    # The broker fixture's retainer came from the configuration, so it is first.
    await broker.plugins.load("late", {"tag": "late"}, path="plugin_samples:Recorder")
    await broker.plugins.load("urgent", {"tag": "urgent", "priority": 1}, path="plugin_samples:Recorder")
    await broker.plugins.load("later", {"tag": "later"}, path="plugin_samples:Recorder")
    rows = await table(broker, "plugin", "show")
    assert [row["Plugin"] for row in rows] == ["urgent", "retainer", "late", "later"]
