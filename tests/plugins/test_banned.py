"""The banned plugin end to end: a real broker, real MQTT clients (ternmq's test client,
paho), bans added through the admin command tree and kept in a file under tmp_path."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
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
from ternmq.kernel.testing import MQTTTestClient, open_broker, serving, test_config
from ternmq.kernel.values.config import Config, load_config
from ternmq.plugins import banned

from helpers import LEVELS, PAHO, connected, eventually, expect_refused_close, is_online

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


async def test_a_second_ban_of_the_same_client_is_already_banned(tmp_path: Path) -> None:
    async with open_broker(banned_config(tmp_path)) as broker:
        await ban(broker, "peerhost", "::ffff:7.7.7.7")
        with pytest.raises(CommandError, match="peerhost ::ffff:707:707 is already banned"):
            await ban(broker, "peerhost", "::FFFF:7.7.7.7")  # the same address, spelt otherwise
        assert len(await show(broker)) == 1


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
