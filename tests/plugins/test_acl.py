"""The acl plugin: the parser and matcher on plain strings, then end to end with real clients."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import paho.mqtt.client as paho
import pytest
import trio
from paho.mqtt.enums import CallbackAPIVersion

from ternmq.kernel import (
    Allow,
    ClientInfo,
    CommandError,
    ConfigError,
    Message,
    TopicSubscription,
    allow,
    hookimpl,
)
from ternmq.kernel.broker import Broker
from ternmq.kernel.testing import open_broker, registered, test_config
from ternmq.kernel.values.config import ListenerConfig
from ternmq.plugins.acl import Access, AclError, Config, Plugin, covers, decide, overlaps, parse_acl

from helpers import connected, eventually

ACL = "ternmq.plugins.acl"

SAMPLE = """\
# a comment
topic read public/#

user alice
topic alice/#
topic write shared/inbox
topic deny alice/secret

user bob
topic read shared/inbox
pattern write sensor/%u/data
pattern read devices/%c/#
"""


def allowed(rules_text: str, username: str | None, client_id: str, topic: str, access: Access) -> bool | None:
    verdict, _ = decide(parse_acl(rules_text, "acl.conf"), username, client_id, topic, access)
    return verdict


def published(ack: Any) -> int:
    """A PUBACK's code with the successes (0x00, 0x10 no matching subscribers) as 0."""
    code = int(ack.reason_code)
    return 0 if code < 0x80 else code


def client_info(client_id: str, username: str | None) -> ClientInfo:
    return ClientInfo(client_id, username, "127.0.0.1", 1, 5, "test", "", "node", None)


# -- parsing -----------------------------------------------------------------------------------


def test_comments_blank_lines_and_trailing_whitespace_are_skipped() -> None:
    rules = parse_acl("# c\n\n   \ntopic read a/b   \t\n  # indented comment\n", "f")
    [rule] = rules.everyone
    assert (rule.access, rule.topic_filter, rule.line) == ("read", "a/b", 4)


def test_rules_land_in_the_global_section_user_sections_and_patterns() -> None:
    rules = parse_acl(SAMPLE, "acl.conf")
    assert [r.topic_filter for r in rules.everyone] == ["public/#"]
    assert [r.topic_filter for r in rules.users["alice"]] == ["alice/#", "shared/inbox", "alice/secret"]
    assert [r.topic_filter for r in rules.users["bob"]] == ["shared/inbox"]
    # patterns are global wherever they stand, even inside bob's section
    assert [r.topic_filter for r in rules.patterns] == ["sensor/%u/data", "devices/%c/#"]
    assert len(rules) == 7


def test_a_topic_without_an_access_word_is_readwrite_and_may_hold_spaces() -> None:
    [rule] = parse_acl("topic a b/c\n", "f").everyone
    assert (rule.access, rule.topic_filter) == ("readwrite", "a b/c")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("topci read a", "unknown keyword 'topci'"),
        ("topic", "without a topic filter"),
        ("topic read", "without a topic filter"),
        ("user", "without a username"),
        ("topic a/#/b", "'#' must be the whole last level"),
        ("topic a/b+", "'+' must be a whole level"),
        ("pattern write sensor/x%u/data", "placeholder must be a whole topic level"),
        ("topic $share/g/a", "shared subscription"),
    ],
)
def test_a_bad_line_is_an_error_naming_file_and_line(line: str, message: str) -> None:
    with pytest.raises(AclError) as caught:
        parse_acl(f"# first\ntopic ok\n{line}\n", "/etc/acl.conf")
    assert str(caught.value).startswith("/etc/acl.conf:3: ")
    assert message in str(caught.value)
    assert caught.value.line == 3


# -- matching ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "requested", "expected"),
    [
        ("a/#", "a/b/#", True),
        ("a/#", "a/+/c", True),
        ("a/#", "a", True),
        ("a/#", "#", False),
        ("a/#", "b/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/+", True),
        ("a/+", "a/#", False),
        ("a/+", "a/b/c", False),
        ("a/b", "a/+", False),
        ("a/b", "a/b", True),
        ("a/b", "a", False),
        ("+/b", "x/b", True),
        ("#", "#", True),
        ("#", "$SYS/x", False),
        ("$SYS/#", "$SYS/broker/load", True),
    ],
)
def test_a_rule_covers_a_requested_filter_only_when_the_request_is_a_subset(
    rule: str, requested: str, expected: bool
) -> None:
    assert covers(rule, requested) is expected


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("a/#", "a/secret", True),
        ("a/secret", "a/+", True),
        ("a/secret", "a/other", False),
        ("a/+", "a/b/c", False),
        ("#", "$SYS/x", False),
        ("a/b", "a/b/#", True),
    ],
)
def test_overlap_is_whether_some_topic_matches_both_filters(first: str, second: str, expected: bool) -> None:
    assert overlaps(first, second) is expected
    assert overlaps(second, first) is expected


def test_global_rules_apply_to_every_user_and_to_anonymous_clients() -> None:
    for username in ("alice", "bob", "carol", None):
        assert allowed(SAMPLE, username, "c", "public/news", "read") is True
        assert allowed(SAMPLE, username, "c", "public/news", "write") is None


def test_user_sections_go_by_username_not_client_id() -> None:
    assert allowed(SAMPLE, "alice", "bob", "alice/notes", "write") is True
    assert allowed(SAMPLE, "bob", "alice", "alice/notes", "write") is None
    assert allowed(SAMPLE, None, "alice", "alice/notes", "write") is None


def test_read_write_and_readwrite_grant_only_their_direction() -> None:
    assert allowed(SAMPLE, "alice", "c", "shared/inbox", "write") is True
    assert allowed(SAMPLE, "alice", "c", "shared/inbox", "read") is None
    assert allowed(SAMPLE, "bob", "c", "shared/inbox", "read") is True
    assert allowed(SAMPLE, "bob", "c", "shared/inbox", "write") is None
    assert allowed(SAMPLE, "alice", "c", "alice/x", "read") is True
    assert allowed(SAMPLE, "alice", "c", "alice/x", "write") is True


def test_deny_wins_over_a_grant_for_publish_and_for_overlapping_subscriptions() -> None:
    assert allowed(SAMPLE, "alice", "c", "alice/secret", "write") is False
    assert allowed(SAMPLE, "alice", "c", "alice/secret", "read") is False
    assert allowed(SAMPLE, "alice", "c", "alice/#", "read") is False  # would receive alice/secret
    assert allowed(SAMPLE, "alice", "c", "alice/public", "read") is True
    # a deny in the global section beats a later grant in the user's section
    text = "topic deny x/y\nuser u\ntopic x/#\n"
    assert allowed(text, "u", "c", "x/y", "write") is False
    assert allowed(text, "u", "c", "x/z", "write") is True


def test_patterns_substitute_username_and_client_id_for_every_client() -> None:
    assert allowed(SAMPLE, "carol", "any", "sensor/carol/data", "write") is True
    assert allowed(SAMPLE, "carol", "any", "sensor/dave/data", "write") is None
    assert allowed(SAMPLE, "carol", "dev-1", "devices/dev-1/temp", "read") is True
    assert allowed(SAMPLE, "carol", "dev-1", "devices/dev-2/temp", "read") is None
    assert allowed(SAMPLE, None, "dev-1", "devices/dev-1/#", "read") is True


def test_a_username_pattern_does_not_apply_without_a_username() -> None:
    assert allowed("pattern write %u/#\n", None, "c", "c/x", "write") is None
    assert allowed("pattern deny %u/#\ntopic #\n", None, "c", "c/x", "write") is True


def test_names_with_wildcards_or_slashes_escape_no_pattern() -> None:
    # a grant is not widened by a client id "+" ...
    assert allowed("pattern write devices/%c\n", "u", "+", "devices/other", "write") is None
    # ... and a denial is not escaped by a username holding "/"
    text = "topic #\npattern deny private/%u/#\n"
    assert allowed(text, "a/b", "c", "private/a/b/x", "write") is False
    assert allowed(text, "a/b", "c", "public/x", "write") is True


def test_a_pattern_without_placeholders_is_a_rule_for_everyone() -> None:
    text = "user u\npattern read plain/#\n"
    assert allowed(text, "someone-else", "c", "plain/x", "read") is True


def test_mountpoint_placeholder_is_the_empty_string() -> None:
    assert allowed("pattern write %m/x\n", "u", "c", "/x", "write") is True


# -- the plugin object -------------------------------------------------------------------------


def make_plugin(tmp_path: Path, text: str, **config: Any) -> Plugin:
    path = tmp_path / "acl.conf"
    path.write_text(text)
    return Plugin(Config(acl_file=path, **config))


def test_explain_names_file_line_and_rule(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, SAMPLE)
    assert plugin.explain("carol", "c", "sensor/carol/data", "write") == (
        True,
        "acl.conf:11 pattern write sensor/%u/data",
    )
    assert plugin.explain("alice", "c", "alice/secret", "read") == (False, "acl.conf:7 topic deny alice/secret")
    assert plugin.explain("carol", "c", "nowhere", "write") == (False, "no rule")
    with pytest.raises(ValueError, match="read or write"):
        plugin.explain("carol", "c", "x", "execute")


def test_a_missing_or_broken_file_fails_the_constructor(tmp_path: Path) -> None:
    with pytest.raises(AclError, match="cannot read"):
        Plugin(Config(acl_file=tmp_path / "missing.conf"))
    with pytest.raises(AclError, match=r"acl.conf:2: unknown keyword"):
        make_plugin(tmp_path, "topic a\nallow b\n")


def test_config_refuses_an_unknown_on_no_rule_and_a_negative_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="deny"):
        Config(acl_file=tmp_path, on_no_rule="allow")
    with pytest.raises(ValueError, match=">= 0"):
        Config(acl_file=tmp_path, reload_interval=-1)


async def test_publish_verdicts_are_cached_per_client_and_dropped_when_it_goes(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, "topic write a\n")
    client = client_info("c1", "u")
    message = Message("a", b"", 0, False, {}, 0.0)
    assert plugin.auth_on_publish(client, message) is not None
    assert plugin._cache == {"c1": {("u", "a"): True}}
    # the cache answers, not the rules: proves the hot path skips matching
    plugin._cache["c1"][("u", "a")] = False
    denied = plugin.auth_on_publish(client, message)
    assert denied is not None and getattr(denied, "reason_code", None) == 0x87
    plugin.on_client_gone(client)
    assert plugin._cache == {}
    plugin.auth_on_publish(client, message)
    plugin.on_client_offline(client)
    assert plugin._cache == {}


def test_the_cache_of_one_client_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ternmq.plugins.acl.CACHE_PER_CLIENT", 3)
    monkeypatch.setattr("ternmq.plugins.acl.CACHE_CLIENTS", 2)
    plugin = make_plugin(tmp_path, "topic write #\n")
    client = client_info("c1", None)
    for topic in ("t1", "t2", "t3", "t4"):
        plugin.auth_on_publish(client, Message(topic, b"", 0, False, {}, 0.0))
    assert plugin._cache == {"c1": {(None, "t4"): True}}  # full at 3: started again
    for client_id in ("c2", "c3"):
        plugin.auth_on_publish(client_info(client_id, None), Message("t", b"", 0, False, {}, 0.0))
    assert list(plugin._cache) == ["c3"]  # two clients held: started again


def test_explain_with_on_no_rule_next_reports_no_rule_and_refuses_before_the_broker_runs(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, "topic a\n", on_no_rule="next")
    assert plugin.explain("u", "c", "$share/g/a", "subscribe") == (True, "acl.conf:1 topic a")
    # without the broker's settings the no_match answer is not known: refuse, never guess
    assert plugin.explain("u", "c", "b", "publish") == (False, "no rule")


async def test_a_reload_empties_the_cache(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, "topic write a\n")
    plugin.auth_on_publish(client_info("c1", None), Message("a", b"", 0, False, {}, 0.0))
    assert plugin._cache
    assert await plugin.reload() is True
    assert plugin._cache == {}


def test_subscribe_answers_per_filter(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, "topic read ok/#\ntopic deny ok/no\n")
    subs = [TopicSubscription("ok/a", 1), TopicSubscription("ok/no", 1), TopicSubscription("$share/g/ok/b", 0)]
    answer = plugin.auth_on_subscribe(client_info("c", None), subs)
    assert answer is not None
    assert answer.modifiers["topics"] == [subs[0], ("ok/no", 0x87), subs[2]]


# -- end to end --------------------------------------------------------------------------------


def acl_config(path: Path, *, no_match: str = "allow", **table: Any) -> Any:
    return test_config(no_match=no_match, plugins={"retainer": {}, ACL: {"acl_file": str(path), **table}})


@asynccontextmanager
async def acl_broker(tmp_path: Path, text: str, *, no_match: str = "allow", **table: Any) -> AsyncIterator[Broker]:
    path = tmp_path / "acl.conf"
    path.write_text(text)
    async with open_broker(acl_config(path, no_match=no_match, **table)) as broker:
        yield broker


def plugin_of(broker: Broker) -> Plugin:
    plugin = broker.plugins.loaded[ACL].plugin
    assert isinstance(plugin, Plugin)
    return plugin


async def test_e2e_global_rules_apply_to_every_user(tmp_path: Path) -> None:
    async with acl_broker(tmp_path, "topic news/#\nuser alice\ntopic alice/#\n") as broker:
        for username in ("alice", "bob"):
            async with connected(broker, f"c-{username}", username=username) as c:
                assert (await c.subscribe("news/#", qos=1)).reason_codes == [1]
                assert published(await c.publish("news/today", b"hi", qos=1)) == 0
                assert (await c.receive()).payload == b"hi"


async def test_e2e_user_sections_go_by_username(tmp_path: Path) -> None:
    async with acl_broker(tmp_path, "user alice\ntopic alice/#\n") as broker:
        async with connected(broker, "alice", username="bob") as bob:
            assert published(await bob.publish("alice/x", b"", qos=1)) == 0x87
        async with connected(broker, "bob", username="alice") as alice:
            assert published(await alice.publish("alice/x", b"", qos=1)) == 0


async def test_e2e_read_write_and_deny(tmp_path: Path) -> None:
    text = "topic read in/#\ntopic write out/#\ntopic both/#\ntopic deny both/secret\n"
    async with acl_broker(tmp_path, text) as broker, connected(broker, "c") as c:
        assert (await c.subscribe("in/#", "out/#", "both/open", "both/#", qos=1)).reason_codes == [1, 0x87, 1, 0x87]
        assert published(await c.publish("in/x", b"", qos=1)) == 0x87
        assert published(await c.publish("out/x", b"", qos=1)) == 0
        assert published(await c.publish("both/open", b"o", qos=1)) == 0
        assert (await c.receive()).payload == b"o"
        assert published(await c.publish("both/secret", b"", qos=1)) == 0x87
        assert {s.topic_filter for s in broker.service.subscriptions("c")} == {"in/#", "both/open"}


async def test_e2e_patterns_substitute_username_and_client_id(tmp_path: Path) -> None:
    text = "pattern write sensor/%u/data\npattern read cmd/%c/#\n"
    async with acl_broker(tmp_path, text) as broker, connected(broker, "dev-7", username="ann") as c:
        assert published(await c.publish("sensor/ann/data", b"", qos=1)) == 0
        assert published(await c.publish("sensor/bob/data", b"", qos=1)) == 0x87
        assert (await c.subscribe("cmd/dev-7/#", "cmd/dev-8/#", qos=0)).reason_codes == [0, 0x87]


async def test_e2e_mqtt_311_suback_has_0x80_for_the_denied_filter_only(tmp_path: Path) -> None:
    async with acl_broker(tmp_path, "topic read ok/#\n") as broker, connected(broker, "c", 4) as c:
        assert (await c.subscribe("ok/a", "no/a", "ok/b", qos=1)).reason_codes == [1, 0x80, 1]


async def test_e2e_mqtt_311_denied_publish_closes_the_connection(tmp_path: Path) -> None:
    async with acl_broker(tmp_path, "topic read x\n") as broker, connected(broker, "c", 4) as c:
        await c.publish("x", b"", qos=0)
        assert await c.closed() is None  # 3.1.1 has no negative acknowledgement


async def test_e2e_paho_v5_gets_the_per_filter_suback(tmp_path: Path) -> None:
    async with acl_broker(tmp_path, "topic read ok/#\n") as broker:
        port = broker.port()

        def run() -> list[int]:
            granted: list[int] = []
            done = threading.Event()

            def on_subscribe(client: Any, userdata: Any, mid: Any, codes: Any, properties: Any) -> None:
                granted.extend(code.value for code in codes)
                done.set()

            client = paho.Client(CallbackAPIVersion.VERSION2, client_id="paho", protocol=paho.MQTTv5)
            client.on_subscribe = on_subscribe
            client.connect("127.0.0.1", port)
            client.loop_start()
            try:
                client.subscribe([("ok/x", 1), ("no/x", 1)])
                assert done.wait(5)
            finally:
                client.disconnect()
                client.loop_stop()
            return granted

        assert await trio.to_thread.run_sync(run) == [1, 0x87]


@pytest.mark.parametrize(
    ("on_no_rule", "no_match", "publish_code", "suback"),
    [
        ("deny", "allow", 0x87, [1, 0x87]),
        ("deny", "deny", 0x87, [1, 0x87]),
        ("next", "allow", 0, [1, 0x87]),  # a mixed packet: the undecided filter is refused
        ("next", "deny", 0x87, [1, 0x87]),
    ],
)
async def test_e2e_on_no_rule_deny_is_authoritative_and_next_leaves_it_to_no_match(
    tmp_path: Path, on_no_rule: str, no_match: str, publish_code: int, suback: list[int]
) -> None:
    async with (
        acl_broker(tmp_path, "topic ruled/#\n", no_match=no_match, on_no_rule=on_no_rule) as broker,
        connected(broker, "c") as c,
    ):
        assert published(await c.publish("ruled/x", b"", qos=1)) == 0
        assert published(await c.publish("unruled/x", b"", qos=1)) == publish_code
        assert (await c.subscribe("ruled/x", "unruled/x", qos=1)).reason_codes == suback
        assert plugin_of(broker).explain(None, "c", "unruled/x", "write") == (publish_code == 0, "no rule")
        # a packet with no ruled filter at all is left to the broker as a whole
        expected = 0x87 if on_no_rule == "deny" or no_match == "deny" else 1
        assert (await c.subscribe("unruled/y", qos=1)).reason_codes == [expected]


def rewrite(path: Path, text: str) -> None:
    """Write ``text`` with a later mtime: some filesystems keep coarse timestamps."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


async def test_e2e_a_changed_file_is_reloaded(tmp_path: Path) -> None:
    async with acl_broker(tmp_path, "topic write a\n", reload_interval=0.02) as broker, connected(broker, "c") as c:
        assert published(await c.publish("b", b"", qos=1)) == 0x87  # also fills the cache
        rewrite(tmp_path / "acl.conf", "topic write a\ntopic write b\n")
        await eventually(lambda: plugin_of(broker).reloads == 1)
        assert published(await c.publish("b", b"", qos=1)) == 0
        assert plugin_of(broker).last_error is None


async def test_e2e_a_broken_file_keeps_the_old_rules_and_logs_file_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="ternmq.plugins.acl")
    path = tmp_path / "acl.conf"
    async with acl_broker(tmp_path, "topic write a\n", reload_interval=0.02) as broker, connected(broker, "c") as c:
        rewrite(path, "topic write a\ntopic write b\ntpoic write c\n")
        await eventually(lambda: plugin_of(broker).reload_errors >= 1)
        assert f"{path}:3: unknown keyword 'tpoic'" in caplog.text
        last_error = plugin_of(broker).last_error
        assert last_error is not None and last_error.startswith(f"{path}:3:")
        shown = await broker.service.run_command(["plugin", "show", f"--plugin={ACL}"])
        assert [row["last error"] for row in shown.to_json()["table"]] == [last_error]  # plugin show says why
        assert published(await c.publish("a", b"", qos=1)) == 0
        assert published(await c.publish("b", b"", qos=1)) == 0x87  # the new line did not take effect
        # fixing the file clears the error and brings in the new rules
        rewrite(path, "topic write b\n")
        await eventually(lambda: plugin_of(broker).reloads == 1)
        assert plugin_of(broker).last_error is None
        shown = await broker.service.run_command(["plugin", "show", f"--plugin={ACL}"])
        assert [row["last error"] for row in shown.to_json()["table"]] == [None]
        assert published(await c.publish("b", b"", qos=1)) == 0


async def test_e2e_a_deleted_file_keeps_the_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="ternmq.plugins.acl")
    async with acl_broker(tmp_path, "topic write a\n", reload_interval=0.02) as broker, connected(broker, "c") as c:
        (tmp_path / "acl.conf").unlink()
        await eventually(lambda: plugin_of(broker).last_error is not None)
        assert "cannot be read" in caplog.text
        assert published(await c.publish("a", b"", qos=1)) == 0


async def test_e2e_reload_interval_zero_never_reloads(tmp_path: Path) -> None:
    async with acl_broker(tmp_path, "topic write a\n", reload_interval=0) as broker, connected(broker, "c") as c:
        rewrite(tmp_path / "acl.conf", "topic write b\n")
        await trio.sleep(0.2)
        assert plugin_of(broker).reloads == 0
        assert published(await c.publish("a", b"", qos=1)) == 0


async def test_e2e_a_broken_file_at_start_fails_the_plugin_load_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "acl.conf"
    path.write_text("topic a\nbogus\n")
    with pytest.raises(ExceptionGroup) as caught:  # the broker's nurseries wrap it
        async with open_broker(acl_config(path)):
            pass
    message = re.escape(f"[plugins.{ACL}]: set-up failed: {path}:2: unknown keyword 'bogus'")
    assert caught.group_contains(ConfigError, match=message, depth=2)


async def test_e2e_unsubscribe_is_not_checked(tmp_path: Path) -> None:
    async with acl_broker(tmp_path, "topic read a\n") as broker, connected(broker, "c") as c:
        await c.subscribe("a", qos=0)
        assert (await c.unsubscribe("a", "never/subscribed")).reason_codes == [0, 0x11]


# -- live sessions follow the rules; the admin commands ------------------------------------


async def test_e2e_a_reload_removes_live_subscriptions_the_new_rules_deny(tmp_path: Path) -> None:
    text = "topic readwrite news/#\ntopic readwrite alerts/#\n"
    async with acl_broker(tmp_path, text, reload_interval=0.02) as broker, connected(broker, "reader") as reader:
        assert (await reader.subscribe("news/#", qos=1)).reason_codes == [1]
        assert (await reader.subscribe("alerts/#", qos=1)).reason_codes == [1]
        rewrite(tmp_path / "acl.conf", "topic readwrite alerts/#\ntopic write news/#\n")
        await eventually(lambda: [s.topic_filter for s in broker.service.subscriptions("reader")] == ["alerts/#"])
        async with connected(broker, "writer") as writer:
            await writer.publish("news/today", b"revoked", qos=1)
            await writer.publish("alerts/fire", b"kept", qos=1)
        assert (await reader.receive()).payload == b"kept"  # news/today never came


async def test_e2e_revoke_subscriptions_false_leaves_live_subscriptions(tmp_path: Path) -> None:
    async with (
        acl_broker(tmp_path, "topic news/#\n", reload_interval=0.02, revoke_subscriptions=False) as broker,
        connected(broker, "reader") as reader,
    ):
        assert (await reader.subscribe("news/#", qos=1)).reason_codes == [1]
        rewrite(tmp_path / "acl.conf", "topic write news/#\n")
        await eventually(lambda: plugin_of(broker).reloads == 1)
        assert [s.topic_filter for s in broker.service.subscriptions("reader")] == ["news/#"]


async def test_e2e_session_reauthorize_removes_what_the_rules_deny_now(tmp_path: Path) -> None:
    text = "user alice\ntopic read a/#\nuser bob\ntopic read a/#\n"
    async with (
        acl_broker(tmp_path, text, reload_interval=0) as broker,
        connected(broker, "alice-1", username="alice") as alice,
        connected(broker, "bob-1", username="bob") as bob,
    ):
        assert (await alice.subscribe("a/#", qos=1)).reason_codes == [1]
        assert (await bob.subscribe("a/#", qos=1)).reason_codes == [1]
        (tmp_path / "acl.conf").write_text("user alice\ntopic read b/#\nuser bob\ntopic read b/#\n")
        await plugin_of(broker).reload()  # no polling here: the rules change, sessions stay
        assert broker.service.subscriptions("bob-1") != ()
        result = await broker.service.run_command(["session", "reauthorize", "username=alice"])
        assert result.render() == "Removed 1 subscription"
        assert broker.service.subscriptions("alice-1") == ()
        assert [s.topic_filter for s in broker.service.subscriptions("bob-1")] == ["a/#"]
        result = await broker.service.run_command(["session", "reauthorize"])
        assert result.render() == "Removed 1 subscription"
        assert broker.service.subscriptions("bob-1") == ()


async def test_acl_check_answers_and_names_the_deciding_line(tmp_path: Path) -> None:
    text = "# sensors\npattern write sensors/%u/#\ntopic deny sensors/secret\n"
    async with acl_broker(tmp_path, text) as broker:
        run = broker.service.run_command
        table = await run(["acl", "check", "username=s1", "client-id=c1", "topic=sensors/s1/t", "access=write"])
        assert table.to_json()["table"] == [{"Allowed": True, "Decided by": "acl.conf:2 pattern write sensors/%u/#"}]
        table = await run(["acl", "check", "username=s1", "topic=sensors/s2/t", "access=write"])
        assert table.to_json()["table"] == [{"Allowed": False, "Decided by": "no rule"}]
        table = await run(["acl", "check", "topic=sensors/#", "access=read"])
        assert table.to_json()["table"] == [{"Allowed": False, "Decided by": "acl.conf:3 topic deny sensors/secret"}]


async def test_acl_check_refuses_a_bad_access_word_with_its_usage(tmp_path: Path) -> None:
    async with acl_broker(tmp_path, "topic a\n") as broker:
        with pytest.raises(CommandError, match="access must be read or write"):
            await broker.service.run_command(["acl", "check", "topic=a", "access=both"])
        with pytest.raises(CommandError):
            await broker.service.run_command(["acl", "check", "topic=a"])  # access is required


async def test_e2e_plugin_reload_with_a_broken_file_keeps_the_running_rules(tmp_path: Path) -> None:
    path = tmp_path / "acl.conf"
    async with acl_broker(tmp_path, "topic write a\n", reload_interval=0) as broker, connected(broker, "c") as c:
        path.write_text("topic write a\ntopic write b\nuser\n")
        with pytest.raises(CommandError, match=re.escape(f"{path}:3")):
            await broker.service.run_command(["plugin", "reload", f"name={ACL}"])
        assert published(await c.publish("b", b"", qos=1)) == 0x87  # the old instance still decides
        path.write_text("topic write a\ntopic write b\n")
        result = await broker.service.run_command(["plugin", "reload", f"name={ACL}"])
        assert result.render() == f"Done: {ACL} reloaded"
        assert published(await c.publish("b", b"", qos=1)) == 0


class VaultGuard:
    """A plugin asked after the ACL that refuses every vault/... filter."""

    @hookimpl
    def auth_on_subscribe(self, client: ClientInfo, subscriptions: list[TopicSubscription]) -> Allow | None:
        if not any(s.topic_filter.startswith("vault") for s in subscriptions):
            return None
        return allow(
            topics=[(s.topic_filter, 0x87) if s.topic_filter.startswith("vault") else s for s in subscriptions]
        )


async def test_e2e_on_no_rule_next_never_lets_a_filter_past_the_next_plugin(tmp_path: Path) -> None:
    async with (
        acl_broker(tmp_path, "topic read public/#\n", on_no_rule="next") as broker,
        registered(broker, VaultGuard()),
        connected(broker, "c") as c,
    ):
        assert (await c.subscribe("vault/#", qos=1)).reason_codes == [0x87]  # the next plugin decides
        # A granted filter beside it must not carry it through.
        assert (await c.subscribe("public/x", "vault/#", qos=1)).reason_codes == [1, 0x87]


def test_a_dollar_name_is_not_substituted_at_the_first_level() -> None:
    rules = "pattern read %u/#\npattern deny %c/#\n"
    assert allowed(rules, "$SYS", "c", "$SYS/broker/load", "read") is None  # no grant of $SYS/#
    assert allowed(rules, "alice", "$SYS", "$SYS/x", "read") is False  # a denial still holds


def test_lines_end_at_newline_only_and_a_byte_order_mark_is_skipped() -> None:
    rules = parse_acl("\ufeff# comment\ntopic read a\u2028b\n", "acl.conf")
    assert [rule.source for rule in rules.everyone] == ["acl.conf:2 topic read a\u2028b"]


async def test_e2e_the_mountpoint_placeholder_is_the_clients_mountpoint(tmp_path: Path) -> None:
    path = tmp_path / "acl.conf"
    path.write_text("pattern write %m/data\n")
    config = attrs.evolve(acl_config(path), listeners=(ListenerConfig(name="m", port=0, mountpoint="m1"),))
    async with open_broker(config) as broker, connected(broker, "c") as client:
        assert published(await client.publish("m1/data", b"x", qos=1)) == 0
        assert published(await client.publish("m2/data", b"x", qos=1)) == 0x87
