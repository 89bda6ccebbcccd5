"""The banned plugin end to end: a real broker, real MQTT clients (ternmq's test client,
paho), bans added through the admin command tree and kept in a file under tmp_path, or
as records of a store (sqlite_store) loaded before it."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import paho.mqtt.client as paho
import pytest
import trio

from ternmq.kernel import ClientInfo, CommandError, ConfigError, Table, Text, allow, hookimpl
from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Connack, Connect, encode
from ternmq.kernel.manager import KernelSettings
from ternmq.kernel.testing import MQTTTestClient, open_broker, serving, test_config
from ternmq.kernel.values.config import Config, load_config
from ternmq.plugins import _banned_values, banned

from helpers import LEVELS, PAHO, StoreThatCannotCommit, connected, eventually, expect_refused_close, is_online

pytestmark = pytest.mark.usefixtures("no_tracebacks")

COLUMNS = ("as", "who", "by", "reason", "at", "until")
REFUSED = {4: 5, 5: 0x8A}  # what a banned client reads: 3.1.1's return code, MQTT 5's reason code
KICKED = 0x98  # administrative action: MQTT 5 has no 0x8A in DISCONNECT


def in_data_dir(config: Config, tmp_path: Path) -> Config:
    return attrs.evolve(config, broker=attrs.evolve(config.broker, data_dir=str(tmp_path / "data")))


def banned_config(tmp_path: Path, *, allow_anonymous: bool = True, **table: Any) -> Config:
    return in_data_dir(test_config(allow_anonymous=allow_anonymous, plugins={"banned": table}), tmp_path)


def bans_file(tmp_path: Path) -> Path:
    return tmp_path / "data" / "banned.json"


async def run(broker: Broker, *argv: str) -> Table | Text:
    return await broker.service.run_command(["banned", *argv])


async def ban(broker: Broker, kind: str, who: str, *more: str) -> dict[str, Any]:
    table = await run(broker, "add", f"as={kind}", f"who={who}", *more)
    assert isinstance(table, Table) and table.columns == COLUMNS and len(table.rows) == 1
    return dict(table.rows[0])


async def show(broker: Broker) -> list[dict[str, Any]]:
    table = await run(broker, "show")
    assert isinstance(table, Table) and table.columns == COLUMNS
    return [dict(row) for row in table.rows]


async def connack_code(
    broker: Broker, client_id: str, level: int = 5, *, username: str | None = None, source: str = "127.0.0.1"
) -> int:
    """The CONNACK code as the client reads it off the wire (3.1.1's return code raw, not
    as our codec would translate it), connecting from the loopback address ``source``."""
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port(), local_address=source)
    async with stream:
        if level == 5:
            connack = await MQTTTestClient(stream, 5).connect(client_id, username=username)
            assert isinstance(connack, Connack), connack
            return int(connack.reason_code)
        await stream.send_all(encode(Connect(client_id, 4, True, 60, username, None, None, {}, "MQTT"), 4))
        data = b""
        with trio.fail_after(5):
            while len(data) < 4 and (chunk := await stream.receive_some(4 - len(data))):
                data += chunk
        assert data[:2] == b"\x20\x02", data
        return data[3]


def metric(broker: Broker, name: str) -> float:
    return broker.service.metrics()[name]


# -- refusing at CONNECT ------------------------------------------------------------------------------

# (as, who, a client it bans, one it does not): (client id, user name, source address)
KIND_CASES = [
    ("clientid", "evil", ("evil", None, "127.0.0.1"), ("good", None, "127.0.0.1")),
    ("username", "mallory", ("c1", "mallory", "127.0.0.1"), ("c2", "alice", "127.0.0.1")),
    ("peerhost", "127.0.0.2", ("c1", None, "127.0.0.2"), ("c2", None, "127.0.0.1")),
    # re.search, as EMQX's re:run: "robot-7" is banned though the pattern does not match it whole
    ("clientid_re", "bot-[0-9]", ("robot-7", None, "127.0.0.1"), ("bot-x", None, "127.0.0.1")),
    ("username_re", "^temp", ("c1", "temp-42", "127.0.0.1"), ("c2", "not-temp", "127.0.0.1")),
    ("peerhost_net", "127.0.0.2/31", ("c1", None, "127.0.0.3"), ("c2", None, "127.0.0.1")),
]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(("kind", "who", "hit", "miss"), KIND_CASES, ids=[case[0] for case in KIND_CASES])
async def test_each_kind_refuses_the_clients_it_names_and_lets_the_others_in(
    tmp_path: Path, level: int, kind: str, who: str, hit: tuple[str, str | None, str], miss: tuple[str, str | None, str]
) -> None:
    async with open_broker(banned_config(tmp_path)) as broker:
        for client_id, username, source in (hit, miss):
            assert await connack_code(broker, client_id, level, username=username, source=source) == 0
        await ban(broker, kind, who)
        hit_id, hit_user, hit_source = hit
        assert await connack_code(broker, hit_id, level, username=hit_user, source=hit_source) == REFUSED[level]
        miss_id, miss_user, miss_source = miss
        assert await connack_code(broker, miss_id, level, username=miss_user, source=miss_source) == 0
        assert metric(broker, "counter.banned_refused") == 1


@pytest.mark.parametrize("protocol", PAHO)
async def test_paho_reads_the_refusal(tmp_path: Path, paho_client: Any, protocol: int) -> None:
    async with open_broker(banned_config(tmp_path)) as broker:
        await ban(broker, "clientid", "paho-evil")
        _, reason, _ = await paho_client("paho-evil", protocol).connect(broker.port())
        # paho reports 3.1.1's return code 5 as the MQTT 5 code 0x87 not authorized.
        assert reason.value == (0x8A if protocol == paho.MQTTv5 else 0x87)
        _, reason, _ = await paho_client("paho-good", protocol).connect(broker.port())
        assert reason.value == 0


class AllowAll:
    """An authentication plugin that accepts everyone it is asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    @hookimpl
    def auth_on_register(self, client: ClientInfo) -> Any:
        self.asked.append(client.client_id)
        return allow()


async def test_it_is_asked_before_a_plugin_loaded_earlier_and_leaves_the_others_to_it(tmp_path: Path) -> None:
    broker = Broker(banned_config(tmp_path, allow_anonymous=False))
    earlier = AllowAll()
    await broker.plugins.register("allow-all", earlier)  # before the configured plugins load
    async with serving(broker):
        await ban(broker, "clientid", "evil")
        assert await connack_code(broker, "evil") == 0x8A
        assert await connack_code(broker, "good") == 0
    assert earlier.asked == ["good"]


async def test_a_client_not_banned_gets_no_answer_and_allow_anonymous_decides(tmp_path: Path) -> None:
    async with open_broker(banned_config(tmp_path, allow_anonymous=False)) as broker:
        await ban(broker, "clientid", "evil")
        assert await connack_code(broker, "good") == 0x86  # nobody answered: not allowed anonymously


# -- until -------------------------------------------------------------------------------------------


@pytest.fixture
def far_from_utc() -> Iterator[None]:
    """The broker's local time zone 5:30 ahead of UTC: a time without offset read as
    local time would end 5:30 early."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "XYZ-5:30"  # POSIX form: no tz database needed
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


@pytest.mark.usefixtures("far_from_utc")
async def test_until_in_the_future_applies_and_is_shown_in_utc(tmp_path: Path) -> None:
    async with open_broker(banned_config(tmp_path)) as broker:
        row = await ban(broker, "clientid", "a", "until=2099-01-01T02:00:00+02:00")
        assert row["until"] == "2099-01-01T00:00:00Z"
        assert (await ban(broker, "clientid", "b", "until=2099-01-01T00:00:00"))["until"] == "2099-01-01T00:00:00Z"
        assert (await ban(broker, "clientid", "c", "until=4070908800"))["until"] == "2099-01-01T00:00:00Z"
        assert (await ban(broker, "clientid", "d", "until=infinity"))["until"] == "infinity"
        assert (await ban(broker, "clientid", "e"))["until"] == "infinity"
        for client_id in "abcde":
            assert await connack_code(broker, client_id) == 0x8A


async def test_an_expired_ban_stops_applying_and_is_dropped(tmp_path: Path) -> None:
    async with open_broker(banned_config(tmp_path)) as broker:
        until = time.time() + 1
        await ban(broker, "username", "brief", f"until={until:.3f}")
        await ban(broker, "username", "unseen", f"until={until:.3f}")  # dropped by show, as no client meets it
        await ban(broker, "username", "lasting")
        assert await connack_code(broker, "c", username="brief") == 0x8A

        async def admitted() -> bool:
            return await connack_code(broker, "c", username="brief") == 0

        await eventually(admitted, timeout=5, interval=0.1)
        assert time.time() >= until
        assert [row["who"] for row in await show(broker)] == ["lasting"]
        assert metric(broker, "gauge.banned_entries") == 1
        assert await connack_code(broker, "c", username="lasting") == 0x8A


async def test_until_goes_up_to_the_end_of_9999(tmp_path: Path) -> None:
    async with open_broker(banned_config(tmp_path)) as broker:
        assert (await ban(broker, "clientid", "a", "until=253402300799"))["until"] == "9999-12-31T23:59:59Z"
        assert (await ban(broker, "clientid", "b", "until=9999-12-31T23:59:59Z"))["until"] == "9999-12-31T23:59:59Z"
        assert [row["until"] for row in await show(broker)] == ["9999-12-31T23:59:59Z"] * 2


# An until the file keeps (a broker before this check wrote Infinity), as show lists it.
FAR_UNTILS = [
    ("Infinity", "infinity"),
    ("1e32", "infinity"),
    ("253402300800", "infinity"),
    ("4070908800", "2099-01-01T00:00:00Z"),
]


@pytest.mark.parametrize(("stored", "shown"), FAR_UNTILS, ids=[until for until, _ in FAR_UNTILS])
async def test_an_until_from_the_year_10000_on_in_the_file_is_forever(tmp_path: Path, stored: str, shown: str) -> None:
    file = bans_file(tmp_path)
    file.parent.mkdir()
    file.write_text(f'[{{"as": "clientid", "who": "far", "at": 0, "until": {stored}}}]')
    async with open_broker(banned_config(tmp_path)) as broker:
        assert [row["until"] for row in await show(broker)] == [shown]
        assert await connack_code(broker, "far") == 0x8A
        await ban(broker, "clientid", "other")  # the file is written again: JSON, no Infinity
        assert len(await show(broker)) == 2
    entries = json.loads(file.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the file"))
    assert entries[0]["until"] == (None if shown == "infinity" else 4070908800)


# -- kicking ------------------------------------------------------------------------------------------


async def test_a_new_ban_disconnects_the_connected_clients_it_applies_to(tmp_path: Path) -> None:
    async with (
        open_broker(banned_config(tmp_path)) as broker,
        connected(broker, "victim", 5) as victim_v5,
        connected(broker, "other", 4, username="eve") as victim_v311,
        connected(broker, "bystander", 5, username="bob") as bystander,
    ):
        await ban(broker, "clientid", "victim")
        await expect_refused_close(victim_v5, KICKED)  # DISCONNECT 0x98, then closed
        await ban(broker, "username", "eve")
        await expect_refused_close(victim_v311, KICKED)  # 3.1.1: closed without a word
        assert await bystander.nothing_received(0.1)
        assert is_online(broker, "bystander")


async def test_enabled_in_a_running_broker_it_disconnects_the_banned_clients_already_there(tmp_path: Path) -> None:
    bans_file(tmp_path).parent.mkdir()
    bans_file(tmp_path).write_text(json.dumps([{"as": "peerhost", "who": "127.0.0.1", "at": 0, "until": None}]))
    async with open_broker(in_data_dir(test_config(plugins={}), tmp_path)) as broker:
        async with connected(broker, "early", 5) as early:
            await broker.service.load_plugin("banned")
            await expect_refused_close(early, KICKED)
        assert await connack_code(broker, "late") == 0x8A


# -- the file ------------------------------------------------------------------------------------------


async def test_bans_survive_a_restart_in_an_owner_only_file(tmp_path: Path) -> None:
    config = banned_config(tmp_path)
    async with open_broker(config) as broker:
        first = await ban(broker, "clientid_re", "^x", "by=ops", "reason=spam", "until=2099-01-01T00:00:00Z")
        second = await ban(broker, "peerhost_net", "10.1.2.3/8")
    file = bans_file(tmp_path)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert [entry["who"] for entry in json.loads(file.read_text())] == ["^x", "10.0.0.0/8"]
    async with open_broker(config) as broker:
        assert await show(broker) == [first, second]
        assert await connack_code(broker, "x1") == 0x8A
        assert metric(broker, "gauge.banned_entries") == 2


async def test_the_file_key_puts_the_file_relative_to_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "plugins.toml").write_text(
        f'[broker]\ndata_dir = "{tmp_path / "data"}"\ncontrol_socket = "off"\n\n'
        '[[listeners]]\nname = "test"\naddress = "127.0.0.1"\nport = 0\n\n'
        '[plugins.banned]\nfile = "bans/list.json"\n'
    )
    async with open_broker(load_config(tmp_path / "plugins.toml")) as broker:
        await ban(broker, "clientid", "evil")
    assert [entry["who"] for entry in json.loads((tmp_path / "bans" / "list.json").read_text())] == ["evil"]
    assert not bans_file(tmp_path).exists()


async def test_a_change_the_file_cannot_keep_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "bans"
    async with open_broker(banned_config(tmp_path, file=str(folder / "banned.json"))) as broker:
        await ban(broker, "clientid", "kept")
        shutil.rmtree(folder)
        folder.write_text("a file where the folder was")
        for argv in (["add", "as=clientid", "who=new"], ["delete", "as=clientid", "who=kept"], ["clear"]):
            with pytest.raises(CommandError, match=f"{re.escape(str(folder / 'banned.json'))}: cannot be written"):
                await run(broker, *argv)
        assert [row["who"] for row in await show(broker)] == ["kept"]
        assert await connack_code(broker, "kept") == 0x8A
        assert await connack_code(broker, "new") == 0


CORRUPT = [
    ("{not json", "not JSON"),
    ('{"as": "clientid", "who": "x", "at": 0}', "must be a JSON list of bans"),
    ('[{"as": "nick", "who": "x", "at": 0}]', "entry 1: as=nick: unknown kind"),
    ('[{"as": "clientid", "who": "x"}]', "entry 1: at is required"),
    ('[{"as": "clientid", "who": "x", "at": 0, "until": "soon"}]', "entry 1: until must be Unix seconds"),
    ('[{"as": "peerhost_net", "who": "10.0.0.300/8", "at": 0}]', "entry 1: who=10.0.0.300/8: not a CIDR network"),
    ('[{"as": "clientid_re", "who": "(", "at": 0}]', "entry 1: who=\\(: not a regular expression"),
    ('[{"as": "clientid", "who": "x", "at": 0}, {"as": "clientid", "who": "x", "at": 1}]', "entry 2: .* already"),
    # times RFC 3339 cannot show: banned show would fail on them
    ('[{"as": "clientid", "who": "x", "at": Infinity}]', "entry 1: at must be Unix seconds from 1970 to the year 9999"),
    ('[{"as": "clientid", "who": "x", "at": 1e32}]', "entry 1: at must be Unix seconds from 1970"),
    ('[{"as": "clientid", "who": "x", "at": -1}]', "entry 1: at must be Unix seconds from 1970"),
    ('[{"as": "clientid", "who": "x", "at": 0, "until": NaN}]', "entry 1: until must be Unix seconds from 1970"),
    ('[{"as": "clientid", "who": "x", "at": 0, "until": -Infinity}]', "entry 1: until must be Unix seconds from 1970"),
    # patterns a CONNECT must not run, or re.compile cannot take
    ('[{"as": "clientid_re", "who": "^(a+)+$", "at": 0}]', r"entry 1: who=\^\(a\+\)\+\$: a repeated group holds"),
    ('[{"as": "username_re", "who": "a*a*a*b", "at": 0}]', "entry 1: who=a.*: too many quantifiers"),
    ('[{"as": "clientid_re", "who": "a{4294967296}", "at": 0}]', "entry 1: who=.*: not a regular expression"),
    (
        f'[{{"as": "clientid_re", "who": "{"x" * 257}", "at": 0}}]',
        "entry 1: who=x+\\.\\.\\. \\(257 characters\\): a pattern of 257",
    ),
]


@pytest.mark.parametrize(("text", "message"), CORRUPT)
async def test_a_corrupt_file_fails_the_load_naming_it_and_is_left_alone(
    tmp_path: Path, text: str, message: str
) -> None:
    file = bans_file(tmp_path)
    file.parent.mkdir()
    file.write_text(text)
    with pytest.raises(ExceptionGroup) as caught:
        async with open_broker(banned_config(tmp_path)):
            pass
    assert caught.group_contains(ConfigError, match=rf"\[plugins\.banned\].*{re.escape(str(file))}: {message}", depth=2)
    assert file.read_text() == text


async def test_a_bad_configuration_key_names_table_and_key(tmp_path: Path) -> None:
    with pytest.raises(ExceptionGroup) as caught:
        async with open_broker(banned_config(tmp_path, path="x.json")):
            pass
    assert caught.group_contains(ConfigError, match=r"\[plugins\.banned\] path: unknown key", depth=2)


# -- the admin commands ---------------------------------------------------------------------------------


ADMIN_ERRORS = [
    (["add", "as=nick", "who=x"], "as=nick: unknown kind"),
    (["add", "as=clientid_re", "who=(x"], r"who=\(x: not a regular expression"),
    (["add", "as=peerhost_net", "who=10.0.0.0/33"], "not a CIDR network"),
    (["add", "as=peerhost", "who=localhost"], "who=localhost: not an IP address"),
    (["add", "as=clientid", "who="], "who= must not be empty"),
    (["add", "as=clientid", "who=x", "until=2000-01-01T00:00:00Z"], "2000-01-01T00:00:00Z is in the past"),
    (["add", "as=clientid", "who=x", "until=946684800"], "until=946684800: .* is in the past"),
    (["add", "as=clientid", "who=x", "until=tomorrow"], "until=tomorrow: not an ISO 8601 date-time"),
    # after 9999-12-31T23:59:59Z: RFC 3339 cannot show it (banned show would fail for good)
    (["add", "as=clientid", "who=x", "until=253402300800"], "until=253402300800: not before the year 10000"),
    (["add", "as=clientid", "who=x", "until=1" + "0" * 32], "until=10+: not before the year 10000"),
    (["add", "as=clientid", "who=x", "until=" + "9" * 400], r"until=9+\.\.\. \(400 characters\): not before"),
    (["add", "as=clientid", "who=x", "until=9999-12-31T23:59:59-01:00"], "not before the year 10000"),
    (["add", "as=clientid", "who=x", "until=1e32"], "until=1e32: not an ISO 8601 date-time"),
    (["add", "as=clientid", "who=x", "until=0001-01-01T00:00:00+01:00"], r"until=0001.*\+01:00 is in the past"),
    # what re.compile raises besides re.error, and patterns too long for every CONNECT
    (["add", "as=clientid_re", "who=a{4294967296}"], r"who=a\{4294967296\}: not a regular expression"),
    (["add", "as=clientid_re", "who=" + "x" * 257], r"a pattern of 257 characters, more than 256"),
    (["add", "as=clientid_re", "who=^(a+)+$"], r"who=\^\(a\+\)\+\$: a repeated group holds a quantifier"),
    (["add", "as=clientid_re", "who=(a*)*"], "a repeated group holds a quantifier or an alternative"),
    (["add", "as=username_re", "who=(a|aa)+"], "a repeated group holds a quantifier or an alternative"),
    (["add", "as=username_re", r"who=^(\d+\.){3}"], "a repeated group holds a quantifier or an alternative"),
    (["add", "as=clientid_re", "who=a*a*a*b"], "who=a\\*a\\*a\\*b: too many quantifiers"),
    (["add", "as=clientid_re", r"who=(.*)(.*)\1\2"], "too many quantifiers"),
    (["add", "as=clientid"], "missing argument who="),
    (["delete", "as=clientid", "who=nobody"], "no such ban: as=clientid who=nobody"),
    (["delete", "as=nick", "who=x"], "as=nick: unknown kind"),
]


@pytest.mark.parametrize(("argv", "message"), ADMIN_ERRORS)
async def test_bad_admin_commands_are_clear_errors_and_change_nothing(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    async with open_broker(banned_config(tmp_path)) as broker:
        with pytest.raises(CommandError, match=message):
            await run(broker, *argv)
        assert await show(broker) == []
    assert not bans_file(tmp_path).exists()


# Two spellings of one ban, and how it is shown (the same text on every Python version).
SPELLINGS = [
    ("peerhost", "2001:DB8::7", "2001:db8:0:0::7", "2001:db8::7"),
    ("peerhost", "::ffff:7.7.7.7", "7.7.7.7", "7.7.7.7"),  # IPv4-mapped: the IPv4 address
    ("peerhost", "fe80::1%eth0", "fe80::1", "fe80::1"),  # no scope
    ("peerhost_net", "::ffff:10.1.2.3/104", "10.0.0.0/8", "10.0.0.0/8"),
    ("peerhost_net", "fe80::%eth0/64", "FE80::1/64", "fe80::/64"),
]


@pytest.mark.parametrize(("kind", "first", "second", "shown"), SPELLINGS, ids=[case[1] for case in SPELLINGS])
async def test_a_second_ban_of_the_same_client_is_already_banned(
    tmp_path: Path, kind: str, first: str, second: str, shown: str
) -> None:
    async with open_broker(banned_config(tmp_path)) as broker:
        assert (await ban(broker, kind, first))["who"] == shown
        with pytest.raises(CommandError, match=f"{kind} {re.escape(shown)} is already banned"):
            await ban(broker, kind, second)
        assert [row["who"] for row in await show(broker)] == [shown]


async def test_show_delete_and_clear(tmp_path: Path) -> None:
    async with open_broker(banned_config(tmp_path)) as broker:
        before = time.time()
        await ban(broker, "clientid", "a", "by=alice", "reason=flooding")
        await ban(broker, "peerhost_net", "10.9.9.9/8")
        await ban(broker, "username", "u", "until=2099-01-01T00:00:00Z")
        rows = await show(broker)
        assert [{k: v for k, v in row.items() if k != "at"} for row in rows] == [
            {"as": "clientid", "who": "a", "by": "alice", "reason": "flooding", "until": "infinity"},
            {"as": "peerhost_net", "who": "10.0.0.0/8", "by": "ternmq-admin", "reason": "", "until": "infinity"},
            {"as": "username", "who": "u", "by": "ternmq-admin", "reason": "", "until": "2099-01-01T00:00:00Z"},
        ]
        for row in rows:
            at = datetime.strptime(row["at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
            assert int(before) <= at <= time.time()
        assert await run(broker, "delete", "as=peerhost_net", "who=10.1.1.1/8") == Text("Done")  # same network
        assert [row["who"] for row in await show(broker)] == ["a", "u"]
        assert [entry["who"] for entry in json.loads(bans_file(tmp_path).read_text())] == ["a", "u"]
        assert await run(broker, "clear") == Text("Done")
        assert await show(broker) == []
        assert json.loads(bans_file(tmp_path).read_text()) == []
        assert await connack_code(broker, "a") == 0


async def test_metrics_count_bans_in_force_and_refusals(tmp_path: Path) -> None:
    async with open_broker(banned_config(tmp_path)) as broker:
        assert metric(broker, "gauge.banned_entries") == 0 and metric(broker, "counter.banned_refused") == 0
        await ban(broker, "clientid", "a")
        await ban(broker, "clientid", "b")
        for client_id in ("a", "a", "b", "c"):
            await connack_code(broker, client_id)
        assert metric(broker, "gauge.banned_entries") == 2
        assert metric(broker, "counter.banned_refused") == 3
        await run(broker, "delete", "as=clientid", "who=a")
        assert metric(broker, "gauge.banned_entries") == 1


# -- addresses ------------------------------------------------------------------------------------------

# (as, who, the peer addresses of clients it bans, of some it does not)
ADDRESS_CASES = [
    ("peerhost", "10.0.0.1", ["10.0.0.1", "::ffff:10.0.0.1", "::FFFF:a00:1"], ["10.0.0.2", "::ffff:10.0.0.2", "::1"]),
    ("peerhost", "::ffff:10.0.0.1", ["10.0.0.1", "::ffff:10.0.0.1"], ["::10.0.0.1"]),
    ("peerhost_net", "10.0.0.0/8", ["10.2.3.4", "::ffff:10.2.3.4"], ["11.0.0.1", "::ffff:11.0.0.1", "::a02:304"]),
    ("peerhost", "fe80::1", ["fe80::1", "fe80::1%eth0", "FE80:0::1%2"], ["fe80::2%eth0"]),
    ("peerhost_net", "fe80::/64", ["fe80::9%eth0"], ["fe81::9%eth0", "127.0.0.1"]),
    ("peerhost", "2001:db8::1", ["2001:DB8::1"], ["not-an-address", ""]),
]


@pytest.mark.parametrize(("kind", "who", "hits", "misses"), ADDRESS_CASES, ids=[case[1] for case in ADDRESS_CASES])
def test_addresses_are_compared_normalized_the_clients_as_the_bans(
    kind: str, who: str, hits: list[str], misses: list[str]
) -> None:
    plugin = banned.Plugin()
    plugin.bans = banned.BanList([banned.Ban(kind, banned.normalized_who(kind, who))])
    for peer_host in hits:
        assert plugin.auth_on_register(ClientInfo("c", peer_host=peer_host)) is not None, peer_host
    for peer_host in misses:
        assert plugin.auth_on_register(ClientInfo("c", peer_host=peer_host)) is None, peer_host


async def test_a_mapped_address_ban_refuses_the_ipv4_client(tmp_path: Path) -> None:
    async with open_broker(banned_config(tmp_path)) as broker:
        assert (await ban(broker, "peerhost", "::ffff:127.0.0.2"))["who"] == "127.0.0.2"
        assert await connack_code(broker, "c", source="127.0.0.2") == 0x8A
        assert await connack_code(broker, "c", source="127.0.0.1") == 0


# -- patterns, safe to run at every CONNECT -------------------------------------------------------------

# Accepted: character classes, bounded counts, two unbounded quantifiers, three after ^.
SAFE_PATTERNS = [
    "^bot-[0-9]+$",
    "(?:a|b)+",
    "(ab)+",
    ".*x.*",
    r"\w*\w*!",
    r"^\w*\w*\w*!",
    r"^dev-\d+-\d{1,3}-.*$",
    "(a)\\1",
]


@pytest.mark.parametrize("pattern", SAFE_PATTERNS)
def test_a_safe_pattern_is_accepted_and_takes_little_time_on_the_longest_client_id(pattern: str) -> None:
    bans = banned.BanList([banned.Ban("clientid_re", banned.normalized_who("clientid_re", pattern))])
    started = time.perf_counter()
    for client_id in ("a" * 2048, "x" * 2048, "a-" * 1024):  # before the 256 cap: seconds each
        bans.match(client_id, None, None, time.time())
    assert time.perf_counter() - started < 0.5


async def test_a_pattern_is_searched_in_the_first_256_characters_of_the_value(tmp_path: Path) -> None:
    config = banned_config(tmp_path)
    limits = attrs.evolve(config.broker.limits, max_client_id_length=65535)
    async with open_broker(attrs.evolve(config, broker=attrs.evolve(config.broker, limits=limits))) as broker:
        await ban(broker, "clientid_re", "^bot-")
        await ban(broker, "username_re", "evil")
        assert await connack_code(broker, "bot-" + "x" * 5000) == 0x8A
        assert await connack_code(broker, "c", username="x" * 252 + "evil" + "x" * 5000) == 0x8A
        assert await connack_code(broker, "c", username="x" * 253 + "evil") == 0  # beyond the first 256
        assert metric(broker, "counter.banned_refused") == 2
        # searched as if the value ended there: not worth a 0.5 s search of a 64 KiB id
        await ban(broker, "clientid_re", "^.*x")
        started = time.perf_counter()
        assert await connack_code(broker, "a" * 65000) == 0
        assert time.perf_counter() - started < 0.5


def test_a_pattern_re_compile_cannot_take_is_no_regular_expression(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_banned_values, "MAX_PATTERN", 10**6)  # nesting deep enough for RecursionError
    for pattern in ("(" * 5000 + "a" + ")" * 5000, "a{4294967296}", "(?P<x>a)(?P<x>b)", "\\"):
        with pytest.raises(ValueError, match="not a regular expression"):
            banned.normalized_who("clientid_re", pattern)


# -- the file is written from a worker thread ------------------------------------------------------------


async def test_the_file_is_written_from_a_worker_thread_one_change_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    write = banned.write_atomically

    def slow_write(path: Path, text: str, *, mode: int | None = None) -> None:
        threads.append(threading.current_thread())
        time.sleep(0.02)  # the broker goes on meanwhile
        write(path, text, mode=mode)

    monkeypatch.setattr(banned, "write_atomically", slow_write)
    async with open_broker(banned_config(tmp_path)) as broker:
        async with trio.open_nursery() as nursery:
            for client_id in "abcde":
                nursery.start_soon(ban, broker, "clientid", client_id)
            await trio.sleep(0.01)
            assert await connack_code(broker, "z") == 0  # answered while the writes wait
        await run(broker, "delete", "as=clientid", "who=e")
        expected = ["a", "b", "c", "d"]
        assert sorted(row["who"] for row in await show(broker)) == expected
        assert sorted(entry["who"] for entry in json.loads(bans_file(tmp_path).read_text())) == expected
        await run(broker, "clear")
    assert len(threads) == 7 and threading.main_thread() not in threads


# -- kept in the store's records ---------------------------------------------------------------------------


def stored_config(tmp_path: Path, **table: Any) -> Config:
    """The SQLite store (first: plugins load in order), then the banned plugin."""
    plugins = {"sqlite_store": {"file": str(tmp_path / "t.db")}, "banned": table}
    return in_data_dir(test_config(plugins=plugins), tmp_path)


async def records(broker: Broker) -> dict[str, Any]:
    """The store's ban records, key -> the ban as JSON."""
    return {key: json.loads(value) for key, value in (await broker.service.load_records("banned")).items()}


@pytest.mark.parametrize("level", LEVELS)
async def test_with_a_store_bans_survive_a_restart_as_records_and_no_file(tmp_path: Path, level: int) -> None:
    config = stored_config(tmp_path)
    async with open_broker(config) as broker:
        first = await ban(broker, "clientid_re", "^x", "by=ops", "reason=spam", "until=2099-01-01T00:00:00Z")
        second = await ban(broker, "peerhost_net", "10.1.2.3/8")
    assert not bans_file(tmp_path).exists()
    async with open_broker(config) as broker:
        assert await show(broker) == [first, second]
        assert await connack_code(broker, "x1", level) == REFUSED[level]
        assert await connack_code(broker, "y1", level) == 0
        kept = await records(broker)
        assert sorted(kept) == ["clientid_re:^x", "peerhost_net:10.0.0.0/8"]
        assert kept["clientid_re:^x"] | {"at": 0} == {
            "as": "clientid_re",
            "who": "^x",
            "by": "ops",
            "reason": "spam",
            "at": 0,
            "until": 4070908800,
        }
        assert metric(broker, "gauge.banned_entries") == 2
    assert not bans_file(tmp_path).exists()


async def test_with_a_store_delete_and_clear_remove_the_records(tmp_path: Path) -> None:
    config = stored_config(tmp_path)
    async with open_broker(config) as broker:
        for client_id in ("a", "b", "c"):
            await ban(broker, "clientid", client_id)
        await run(broker, "delete", "as=clientid", "who=b")
        assert sorted(await records(broker)) == ["clientid:a", "clientid:c"]
    async with open_broker(config) as broker:
        assert [row["who"] for row in await show(broker)] == ["a", "c"]
        assert await connack_code(broker, "b") == 0
        await run(broker, "clear")
        assert await records(broker) == {}
    async with open_broker(config) as broker:
        assert await show(broker) == []
        assert await connack_code(broker, "a") == 0


async def test_with_a_store_a_ban_that_expired_is_gone_after_a_restart(tmp_path: Path) -> None:
    config = stored_config(tmp_path)
    async with open_broker(config) as broker:
        until = time.time() + 1
        await ban(broker, "clientid", "brief", f"until={until:.3f}")
        await ban(broker, "clientid", "lasting")
    await trio.sleep(max(0.0, until - time.time() + 0.1))
    async with open_broker(config) as broker:
        assert [row["who"] for row in await show(broker)] == ["lasting"]
        assert sorted(await records(broker)) == ["clientid:lasting"]  # deleted at start
        assert await connack_code(broker, "brief") == 0


async def test_with_a_store_a_record_that_cannot_be_read_is_logged_with_its_key_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = stored_config(tmp_path)
    bad = {
        "clientid:garbage": b"\xff{",
        "nick:x": json.dumps({"as": "nick", "who": "x", "at": 0}).encode(),
        "clientid:deep": b"[" * 100_000,
    }
    async with open_broker(config) as broker:
        await ban(broker, "clientid", "evil")
        for key, value in bad.items():
            broker.service.save_record("banned", key, value)
    caplog.set_level(logging.ERROR, logger="ternmq.plugins.banned")
    async with open_broker(config) as broker:
        assert [row["who"] for row in await show(broker)] == ["evil"]
        assert await connack_code(broker, "evil") == 0x8A
        errors = [r.getMessage() for r in caplog.records if r.name == "ternmq.plugins.banned"]
        for key in bad:
            assert any(f"record {key!r} skipped" in text for text in errors), (key, errors)


async def test_with_a_store_a_ban_kept_under_another_key_is_moved_to_its_own(tmp_path: Path) -> None:
    config = stored_config(tmp_path)
    spelled = json.dumps({"as": "peerhost", "who": "2001:DB8::1", "at": 0}).encode()  # not normalized
    async with open_broker(config) as broker:
        broker.service.save_record("banned", "peerhost:2001:DB8::1", spelled)
        broker.service.save_record("banned", "old-key", spelled)  # the same ban twice
    async with open_broker(config) as broker:
        assert [row["who"] for row in await show(broker)] == ["2001:db8::1"]
        assert sorted(await records(broker)) == ["peerhost:2001:db8::1"]
        await run(broker, "delete", "as=peerhost", "who=2001:db8::1")
    async with open_broker(config) as broker:  # lifted for good: no record brings it back
        assert await show(broker) == []
        assert await records(broker) == {}


async def test_with_a_store_banned_json_is_imported_once_then_renamed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = bans_file(tmp_path)
    file.parent.mkdir()
    entries = [
        {"as": "clientid", "who": "evil", "by": "ops", "reason": "spam", "at": 1000, "until": None},
        {"as": "username", "who": "gone", "at": 0, "until": 1},  # expired: not imported
        {"as": "peerhost", "who": "::ffff:127.0.0.2", "at": 2000, "until": 4070908800},
    ]
    text = json.dumps(entries)
    file.write_text(text)
    config = stored_config(tmp_path)
    imported = file.with_name("banned.json.imported")
    caplog.set_level(logging.INFO, logger="ternmq.plugins.banned")
    async with open_broker(config) as broker:
        assert [(row["as"], row["who"], row["by"]) for row in await show(broker)] == [
            ("clientid", "evil", "ops"),
            ("peerhost", "127.0.0.2", "ternmq-admin"),
        ]
        assert sorted(await records(broker)) == ["clientid:evil", "peerhost:127.0.0.2"]
        assert await connack_code(broker, "evil") == 0x8A
        assert await connack_code(broker, "c", source="127.0.0.2") == 0x8A
        assert not file.exists() and imported.read_text() == text
        assert any(f"2 bans imported from {file}" in r.getMessage() for r in caplog.records)
    # Once: a banned.json that turns up later is not read (the store has bans).
    file.write_text(json.dumps([{"as": "clientid", "who": "later", "at": 0}]))
    async with open_broker(config) as broker:
        assert [row["who"] for row in await show(broker)] == ["evil", "127.0.0.2"]
        assert await connack_code(broker, "later") == 0
    assert file.exists() and imported.read_text() == text


async def test_with_a_store_a_corrupt_banned_json_to_import_fails_the_load_and_is_left_alone(tmp_path: Path) -> None:
    file = bans_file(tmp_path)
    file.parent.mkdir()
    file.write_text("{not json")
    with pytest.raises(ExceptionGroup) as caught:
        async with open_broker(stored_config(tmp_path)):
            pass
    assert caught.group_contains(ConfigError, match=rf"\[plugins\.banned\].*{re.escape(str(file))}: not JSON", depth=2)
    assert file.read_text() == "{not json"
    assert not file.with_name("banned.json.imported").exists()


async def test_with_a_store_a_configured_file_is_still_where_bans_are_kept(tmp_path: Path) -> None:
    file = tmp_path / "bans" / "list.json"
    async with open_broker(stored_config(tmp_path, file=str(file))) as broker:
        await ban(broker, "clientid", "evil")
        assert await records(broker) == {}
    assert [entry["who"] for entry in json.loads(file.read_text())] == ["evil"]


async def test_without_a_store_banned_json_is_used_and_not_imported(tmp_path: Path) -> None:
    file = bans_file(tmp_path)
    file.parent.mkdir()
    file.write_text(json.dumps([{"as": "clientid", "who": "evil", "at": 0}]))
    async with open_broker(banned_config(tmp_path)) as broker:
        assert await connack_code(broker, "evil") == 0x8A
        await ban(broker, "clientid", "other")
    assert [entry["who"] for entry in json.loads(file.read_text())] == ["evil", "other"]
    assert not file.with_name("banned.json.imported").exists()


# -- the documentation ----------------------------------------------------------------------------------

DOC_SECTION = "`[plugins.banned]` (built-in)"


def test_configuration_md_documents_every_key() -> None:
    from test_docs import check_keys

    check_keys("configuration.md", DOC_SECTION, banned.Config)


async def test_the_documented_command_lines_run(tmp_path: Path) -> None:
    from test_docs import document

    lines = [line for line in document("configuration.md").section(DOC_SECTION) if line.startswith("ternmq-admin ")]
    assert len(lines) == 5
    async with open_broker(banned_config(tmp_path)) as broker:
        for line in lines:
            answer = await broker.service.run_command(shlex.split(line)[1:])
            if line.endswith("show"):
                assert isinstance(answer, Table) and [row["who"] for row in answer.rows] == ["bot-17", "10.0.0.0/8"]
        assert await show(broker) == []


async def test_a_ban_the_store_failed_to_commit_is_in_force_and_said_to_be_unsaved(tmp_path: Path) -> None:
    broker = Broker(banned_config(tmp_path))
    # Registered before banned loads; its commits time out after 0.1 s.
    await broker.plugins.register("store", StoreThatCannotCommit(hang=True), settings=KernelSettings(hook_timeout=0.1))
    async with serving(broker), connected(broker, "mallory"):
        with pytest.raises(CommandError, match="in force, but the store has not saved it yet"):
            await run(broker, "add", "as=clientid", "who=mallory")
        await eventually(lambda: not is_online(broker, "mallory"))  # kicked all the same
        assert await connack_code(broker, "mallory") == REFUSED[5]


async def test_with_the_store_unloaded_a_change_is_refused(tmp_path: Path) -> None:
    async with open_broker(stored_config(tmp_path)) as broker:
        await ban(broker, "clientid", "kept")
        await broker.service.unload_plugin("sqlite_store")
        with pytest.raises(CommandError, match="no store plugin keeps the bans now"):
            await run(broker, "delete", "as=clientid", "who=kept")
        assert [row["who"] for row in await show(broker)] == ["kept"]  # nothing changed


async def test_a_file_is_never_imported_twice_into_the_store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    file = bans_file(tmp_path)
    file.parent.mkdir(parents=True)
    entry = {"as": "clientid", "who": "old", "by": "ops", "reason": "", "at": time.time(), "until": None}
    file.write_text(json.dumps([entry]))
    async with open_broker(stored_config(tmp_path)) as broker:
        assert [row["who"] for row in await show(broker)] == ["old"]
        await run(broker, "delete", "as=clientid", "who=old")  # the namespace is empty now
    shutil.copy(file.with_name("banned.json.imported"), file)  # the file is back (or never went)
    async with open_broker(stored_config(tmp_path)) as broker:
        assert await show(broker) == []  # not imported again: the store noted the import
    assert file.exists()
    assert f"banned: {file} is not read: the store keeps the bans" in caplog.text
