"""The passwd plugin and ternmq-passwd end to end: real password files (from VerneMQ's
formula, the real mosquitto_passwd, argon2-cffi and the tool), a real broker, real clients."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import argon2
import paho.mqtt.client as paho
import pytest
import trio

from ternmq.kernel import ClientInfo, CommandError, allow, build_attrs, hookimpl
from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Connack
from ternmq.kernel.testing import MQTTTestClient, open_broker, registered, test_config
from ternmq.plugins import passwd, passwd_tool

from helpers import LEVELS, eventually, free_port, plugin_samples

pytestmark = pytest.mark.usefixtures("no_tracebacks")  # e.g. a reload that kills serve()

PLUGIN = "ternmq.plugins.passwd"
FAST = "1000"  # PBKDF2 iterations for tool-made test lines: the default takes ~0.2 s each


# -- password lines, made as each program makes them -----------------------------------------


def vernemq_line(username: str, password: str) -> str:
    """A line as vmq-passwd writes it: $6$ b64(salt) $ b64(sha512(password + salt))."""
    salt = os.urandom(12)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return f"{username}:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def mosquitto_line(tmp_path: Path, username: str, password: str) -> str:
    """A line made by the real mosquitto_passwd (Mosquitto 2.0: $7$, 101 iterations)."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd not installed: apt-get install mosquitto (bash .ci/run does it)")
    scratch = tmp_path / f"mosquitto-{username}.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(scratch), username, password], check=True, timeout=10)
    line = scratch.read_text().strip()
    scratch.unlink()
    return line


def argon2_line(username: str, password: str) -> str:
    """A Mosquitto 2.1 style $argon2id$ line (cheap parameters to keep the test fast)."""
    return f"{username}:{argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(password)}"


def tool_line(tmp_path: Path, username: str, password: str) -> str:
    scratch = tmp_path / f"tool-{username}.passwd"
    assert passwd_tool.main(["-c", "-b", "-I", FAST, str(scratch), username, password]) == 0
    line = scratch.read_text().strip()
    scratch.unlink()
    return line


MAKERS: dict[str, Callable[[Path, str, str], str]] = {
    "vernemq-6": lambda tmp_path, user, password: vernemq_line(user, password),
    "mosquitto-7": mosquitto_line,
    "argon2id": lambda tmp_path, user, password: argon2_line(user, password),
    "ternmq-passwd": tool_line,
}


def write_users(path: Path, lines: list[str]) -> Path:
    """Write a password file by renaming a new one over it (as the plugin's docs ask), so
    the running broker's poll never sees it half-written."""
    scratch = path.with_name(path.name + ".new")
    scratch.write_text("".join(line + "\n" for line in lines))
    os.replace(scratch, path)
    return path


@asynccontextmanager
async def passwd_broker(
    path: Path, *, allow_anonymous: bool = True, reload_interval: float = 0.02
) -> AsyncIterator[Broker]:
    table = {"password_file": str(path), "reload_interval": reload_interval}
    config = test_config(allow_anonymous=allow_anonymous, plugins={"retainer": {}, PLUGIN: table})
    async with open_broker(config) as broker:
        yield broker


async def connack_code(broker: Broker, level: int, username: str | None, password: bytes | None) -> int:
    """The CONNACK code as the client sees it: the v5 reason code, or the 3.1.1 return
    code read from the wire."""
    if level == 4:
        code: int = await plugin_samples().v311_connack_return_code(broker.port(), "c", username, password)
        return code
    async with MQTTTestClient.open(broker.port(), level) as client:
        connack = await client.connect("c", username=username, password=password)
        assert isinstance(connack, Connack), connack
        return connack.reason_code


REFUSED = {4: 4, 5: 0x86}  # bad user name or password, per protocol level


# -- the answers of auth_on_register ------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("maker", list(MAKERS))
async def test_right_password_is_accepted_and_wrong_one_refused_for_each_format(
    tmp_path: Path, maker: str, level: int
) -> None:
    path = write_users(tmp_path / "passwd", [MAKERS[maker](tmp_path, "alice", "s3cret")])
    # allow_anonymous off: an acceptance is passwd's allow(); on: a refusal is passwd's deny().
    async with passwd_broker(path, allow_anonymous=False) as broker:
        assert await connack_code(broker, level, "alice", b"s3cret") == 0
    async with passwd_broker(path, allow_anonymous=True) as broker:
        assert await connack_code(broker, level, "alice", b"S3cret") == REFUSED[level]
        assert await connack_code(broker, level, "alice", b"s3cret") == 0


@pytest.mark.parametrize("level", LEVELS)
async def test_known_user_without_password_is_refused_even_with_allow_anonymous(tmp_path: Path, level: int) -> None:
    path = write_users(tmp_path / "passwd", [vernemq_line("alice", "s3cret")])
    async with passwd_broker(path, allow_anonymous=True) as broker:
        assert await connack_code(broker, level, "alice", None) == REFUSED[level]


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5])
async def test_paho_client_connects_with_the_right_password_only(
    tmp_path: Path, paho_client: Any, protocol: int
) -> None:
    path = write_users(tmp_path / "passwd", [mosquitto_line(tmp_path, "bob", "pw")])
    async with passwd_broker(path, allow_anonymous=True) as broker:
        good = paho_client("good", protocol)
        good.client.username_pw_set("bob", "pw")
        _, reason, _ = await good.connect(broker.port())
        assert reason.value == 0
        bad = paho_client("bad", protocol)
        bad.client.username_pw_set("bob", "nope")
        _, reason, _ = await bad.connect(broker.port())
        # paho reports 3.1.1's return code 4 as the MQTT 5 code 0x86 (5 would be 0x87).
        assert reason.value == 0x86


@pytest.mark.parametrize("level", LEVELS)
async def test_unknown_user_and_no_username_are_left_to_allow_anonymous(tmp_path: Path, level: int) -> None:
    path = write_users(tmp_path / "passwd", [vernemq_line("alice", "s3cret")])
    async with passwd_broker(path, allow_anonymous=True) as broker:
        assert await connack_code(broker, level, "mallory", b"whatever") == 0
        assert await connack_code(broker, level, None, None) == 0
    async with passwd_broker(path, allow_anonymous=False) as broker:
        # The default policy refuses as "not authorized" for 3.1.1 (5), not as a bad password (4).
        assert await connack_code(broker, level, "mallory", b"whatever") == {4: 5, 5: 0x86}[level]
        assert await connack_code(broker, level, None, None) == {4: 5, 5: 0x86}[level]


class AllowCarol:
    """A plugin after passwd: accepts carol (whatever her password) and records who it was asked about."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []

    @hookimpl
    def auth_on_register(self, client: ClientInfo) -> Any:
        self.asked.append(client.username)
        return allow() if client.username == "carol" else None


async def test_the_next_plugin_decides_for_unknown_users_but_not_for_known_ones(tmp_path: Path) -> None:
    path = write_users(tmp_path / "passwd", [vernemq_line("alice", "s3cret")])
    async with passwd_broker(path, allow_anonymous=False) as broker:
        after = AllowCarol()
        async with registered(broker, after):
            assert await connack_code(broker, 5, "carol", b"anything") == 0
            assert await connack_code(broker, 5, "alice", b"wrong") == 0x86
            assert await connack_code(broker, 5, "alice", b"s3cret") == 0
        assert after.asked == ["carol"]  # passwd answered for alice: the next plugin was not asked


# -- loading -----------------------------------------------------------------------------------


def _messages(group: BaseException) -> str:
    if isinstance(group, BaseExceptionGroup):
        return " ".join(_messages(exc) for exc in group.exceptions)
    return str(group)


async def test_a_missing_file_at_load_is_a_load_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(BaseException) as raised:
        async with passwd_broker(tmp_path / "absent"):
            pass
    message = _messages(raised.value)
    assert "password_file" in message and str(tmp_path / "absent") in message and "no such file" in message


async def test_an_unparseable_file_at_load_is_a_load_error_naming_file_and_line(tmp_path: Path) -> None:
    path = write_users(tmp_path / "passwd", ["# users", vernemq_line("alice", "x"), "bob:plain-text"])
    with pytest.raises(BaseException) as raised:
        async with passwd_broker(path):
            pass
    assert f"{path}:3: user 'bob': unknown hash scheme" in _messages(raised.value)


def test_a_relative_password_file_is_joined_to_the_config_folder(tmp_path: Path) -> None:
    config = build_attrs(
        passwd.Config, {"password_file": "users.passwd"}, "plugins.toml", "plugins.passwd", base=tmp_path
    )
    assert config.password_file == tmp_path / "users.passwd"


# -- reload --------------------------------------------------------------------------------------


async def test_reload_picks_up_a_changed_password_and_a_removed_user(tmp_path: Path) -> None:
    path = write_users(tmp_path / "passwd", [vernemq_line("alice", "old"), vernemq_line("bob", "bobpw")])
    async with passwd_broker(path, allow_anonymous=False) as broker:
        assert await connack_code(broker, 5, "alice", b"old") == 0
        assert await connack_code(broker, 5, "bob", b"bobpw") == 0
        write_users(path, [vernemq_line("alice", "new-and-longer")])

        async def reloaded() -> bool:
            return await connack_code(broker, 5, "alice", b"new-and-longer") == 0

        await eventually(reloaded)
        assert await connack_code(broker, 5, "alice", b"old") == 0x86
        # bob is no longer passwd's user: the default policy (allow_anonymous off) refuses him.
        assert await connack_code(broker, 5, "bob", b"bobpw") == 0x86
        # Polling goes on after a reload: a second change is seen too.
        write_users(path, [vernemq_line("alice", "third")])

        async def reloaded_again() -> bool:
            return await connack_code(broker, 5, "alice", b"third") == 0

        await eventually(reloaded_again)
    async with passwd_broker(path, allow_anonymous=True) as broker:
        assert await connack_code(broker, 5, "bob", b"bobpw") == 0  # not denied by passwd any more


async def last_error_shown(broker: Broker) -> str | None:
    """The passwd plugin's "last error" column of ``plugin show``."""
    shown = await broker.service.run_command(["plugin", "show", f"--plugin={PLUGIN}"])
    [row] = shown.to_json()["table"]
    error = row["last error"]
    assert error is None or isinstance(error, str)
    return error


async def test_a_broken_file_at_reload_keeps_the_old_users_and_logs_file_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ternmq.plugins.passwd")
    path = write_users(tmp_path / "passwd", [vernemq_line("alice", "pw")])
    async with passwd_broker(path, allow_anonymous=False) as broker:
        write_users(path, [vernemq_line("alice", "other"), "no colon on this line"])

        def logged() -> bool:
            return any(r.levelno == logging.ERROR and f"{path}:2: no ':'" in r.getMessage() for r in caplog.records)

        await eventually(logged)
        assert await connack_code(broker, 5, "alice", b"pw") == 0
        assert await connack_code(broker, 5, "alice", b"other") == 0x86
        assert f"{path}:2: no ':'" in (await last_error_shown(broker) or "")  # plugin show says why
        # Fixed again: the next poll reads it.
        write_users(path, [vernemq_line("alice", "other")])

        async def fixed() -> bool:
            return await connack_code(broker, 5, "alice", b"other") == 0

        await eventually(fixed)
        assert await last_error_shown(broker) is None


async def test_a_file_that_disappears_keeps_the_users_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ternmq.plugins.passwd")
    path = write_users(tmp_path / "passwd", [vernemq_line("alice", "pw")])
    async with passwd_broker(path, allow_anonymous=False) as broker:
        path.unlink()

        def gone() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "has disappeared" in r.getMessage() and str(path) in r.getMessage()]

        await eventually(gone)
        await trio.sleep(0.1)  # several more polls
        assert len(gone()) == 1
        assert await connack_code(broker, 5, "alice", b"pw") == 0


async def test_reload_interval_zero_never_reloads(tmp_path: Path) -> None:
    path = write_users(tmp_path / "passwd", [vernemq_line("alice", "old")])
    async with passwd_broker(path, allow_anonymous=False, reload_interval=0) as broker:
        write_users(path, [vernemq_line("alice", "new")])
        await trio.sleep(0.2)
        assert await connack_code(broker, 5, "alice", b"old") == 0
        assert await connack_code(broker, 5, "alice", b"new") == 0x86


# -- the verdict cache -----------------------------------------------------------------------------


async def test_reconnecting_with_the_same_credentials_does_not_hash_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, bytes | str]] = []
    real_verify = passwd.verify

    def counting_verify(line_hash: str, password: bytes | str) -> bool:
        calls.append((line_hash, password))
        return real_verify(line_hash, password)

    monkeypatch.setattr(passwd, "verify", counting_verify)
    path = write_users(tmp_path / "passwd", [mosquitto_line(tmp_path, "alice", "pw")])
    async with passwd_broker(path, allow_anonymous=False) as broker:
        for _ in range(3):
            assert await connack_code(broker, 5, "alice", b"pw") == 0
        assert len(calls) == 1
        for _ in range(2):
            assert await connack_code(broker, 5, "alice", b"bad") == 0x86
        assert len(calls) == 2  # a wrong password is cached too
        write_users(path, [vernemq_line("alice", "pw")])

        async def rehashed() -> bool:
            assert await connack_code(broker, 5, "alice", b"pw") == 0
            return any(line.startswith("$6$") for line, _ in calls)

        await eventually(rehashed)  # the reloaded line is a new key: hashed once more
        before = len(calls)
        assert await connack_code(broker, 5, "alice", b"pw") == 0
        assert len(calls) == before


# -- the formats, without a broker -------------------------------------------------------------------


def test_parse_skips_comments_and_blank_lines_and_names_the_bad_line() -> None:
    alice = vernemq_line("alice", "a")
    users = passwd.parse_password_file(f"# comment\n\n{alice}\r\n", "users.txt")
    assert users == {"alice": alice.partition(":")[2]}
    with pytest.raises(passwd.PasswordFileError, match=r"^users\.txt:2: no ':'"):
        passwd.parse_password_file(f"{alice}\njustaname\n", "users.txt")
    with pytest.raises(ValueError, match=r"^users\.txt:1: user 'bob': unknown hash scheme"):
        passwd.parse_password_file("bob:$5$abc$def\n", "users.txt")
    with pytest.raises(ValueError, match=r"^users\.txt:1: user 'bob': malformed \$7\$ hash"):
        passwd.parse_password_file("bob:$7$many$c2FsdA==$aGFzaA==\n", "users.txt")


def test_mosquitto_7_line_verifies_with_the_decoded_salt_and_a_64_byte_key(tmp_path: Path) -> None:
    line_hash = mosquitto_line(tmp_path, "u", "pass").partition(":")[2]
    _, _, iterations, salt, digest = line_hash.split("$")
    assert iterations == "101" and len(base64.b64decode(salt)) == 12 and len(base64.b64decode(digest)) == 64
    assert passwd.verify(line_hash, b"pass") and passwd.verify(line_hash, "pass")
    assert not passwd.verify(line_hash, b"pasS")


def test_hash_password_writes_a_7_line_with_the_given_iterations() -> None:
    line_hash = passwd.hash_password("pw", 1234)
    assert line_hash.startswith("$7$1234$")
    assert passwd.verify(line_hash, "pw") and not passwd.verify(line_hash, "pW")
    assert passwd.hash_password("pw", 1234) != line_hash  # a fresh salt each time


# -- ternmq-passwd -------------------------------------------------------------------------------------


def users_of(path: Path) -> dict[str, str]:
    return passwd.parse_password_file(path.read_text(), str(path))


def test_tool_c_creates_an_owner_only_file_that_verifies(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    assert passwd_tool.main(["-c", "-b", "-I", FAST, str(path), "alice", "pw"]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = users_of(path)
    assert list(users) == ["alice"] and users["alice"].startswith(f"$7${FAST}$")
    assert passwd.verify(users["alice"], "pw")


def test_tool_c_overwrites_an_existing_file(tmp_path: Path) -> None:
    path = write_users(tmp_path / "passwd", [vernemq_line("old", "x")])
    assert passwd_tool.main(["-c", "-b", "-I", FAST, str(path), "alice", "pw"]) == 0
    assert list(users_of(path)) == ["alice"]


def test_tool_without_c_needs_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "passwd"
    assert passwd_tool.main(["-b", str(path), "alice", "pw"]) == 1
    assert f"{path}: no such file" in capsys.readouterr().err
    assert not path.exists()


def test_tool_b_updates_a_user_in_place_and_keeps_the_other_lines(tmp_path: Path) -> None:
    bob = vernemq_line("bob", "b")
    path = tmp_path / "passwd"
    path.write_text(f"# team\r\n{vernemq_line('alice', 'old')}\r\n{bob}\n")
    assert passwd_tool.main(["-b", "-I", FAST, str(path), "alice", "new"]) == 0
    lines = path.read_bytes().decode().splitlines(keepends=True)
    assert lines[0] == "# team\r\n" and lines[2] == f"{bob}\n" and lines[1].endswith("\r\n")
    assert passwd.verify(users_of(path)["alice"], "new")
    assert passwd_tool.main(["-b", "-I", FAST, str(path), "carol", "c"]) == 0
    assert list(users_of(path)) == ["alice", "bob", "carol"]


def test_tool_d_deletes_a_user_and_reports_an_absent_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_users(tmp_path / "passwd", [vernemq_line("alice", "a"), vernemq_line("bob", "b")])
    assert passwd_tool.main(["-D", str(path), "alice"]) == 0
    assert list(users_of(path)) == ["bob"]
    before = path.read_bytes()
    assert passwd_tool.main(["-D", str(path), "alice"]) == 1
    assert "user alice not found" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_tool_u_hashes_plain_lines_and_leaves_hashed_ones_byte_identical(tmp_path: Path) -> None:
    hashed = [vernemq_line("v", "1"), mosquitto_line(tmp_path, "m", "2"), argon2_line("a", "3")]
    path = tmp_path / "passwd"
    path.write_text("# plain ones follow\nplain:pa:ss\n" + "".join(line + "\n" for line in hashed) + "other:pw2\n")
    assert passwd_tool.main(["-U", "-I", FAST, str(path)]) == 0
    text = path.read_text()
    for line in hashed:
        assert f"{line}\n" in text
    assert text.startswith("# plain ones follow\n")
    users = users_of(path)
    assert passwd.verify(users["plain"], "pa:ss") and passwd.verify(users["other"], "pw2")
    once = path.read_bytes()
    assert passwd_tool.main(["-U", "-I", FAST, str(path)]) == 0
    assert path.read_bytes() == once  # running it again changes nothing


def test_tool_u_refuses_a_line_without_colon_and_leaves_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "passwd"
    path.write_text("alice:pw\ngarbage\n")
    assert passwd_tool.main(["-U", "-I", FAST, str(path)]) == 1
    assert f"{path}:2:" in capsys.readouterr().err
    assert path.read_text() == "alice:pw\ngarbage\n"


def test_tool_writes_atomically_keeping_the_mode_and_leaving_no_temporary_file(tmp_path: Path) -> None:
    path = write_users(tmp_path / "passwd", [vernemq_line("alice", "a")])
    path.chmod(0o640)
    inode = path.stat().st_ino
    assert passwd_tool.main(["-b", "-I", FAST, str(path), "bob", "b"]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd"]


def test_tool_prompts_twice_and_refuses_a_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "passwd"
    answers = iter(["typed", "typed", "one", "other"])
    monkeypatch.setattr(passwd_tool.getpass, "getpass", lambda prompt="": next(answers))
    assert passwd_tool.main(["-c", "-I", FAST, str(path), "alice"]) == 0
    assert passwd.verify(users_of(path)["alice"], "typed")
    before = path.read_bytes()
    assert passwd_tool.main(["-I", FAST, str(path), "alice"]) == 1
    assert "passwords do not match" in capsys.readouterr().err
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "argv",
    [
        ["FILE"],  # no user
        ["-b", "FILE", "user"],  # no password
        ["-D", "-U", "FILE"],
        ["-c", "-D", "FILE", "user"],
        ["-I", "0", "-b", "FILE", "u", "p"],
        ["-U", "FILE", "user"],
    ],
)
def test_tool_usage_errors_exit_2(tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "passwd"
    with pytest.raises(SystemExit) as raised:
        passwd_tool.main([str(path) if word == "FILE" else word for word in argv])
    assert raised.value.code == 2
    assert "usage:" in capsys.readouterr().err
    assert not path.exists()


async def test_mosquitto_itself_accepts_a_file_made_by_the_tool(tmp_path: Path) -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto not installed: apt-get install mosquitto (bash .ci/run does it)")
    path = tmp_path / "passwd"
    assert passwd_tool.main(["-c", "-b", "-I", FAST, str(path), "alice", "pw"]) == 0
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous false", f"password_file {path}", "persistence false"]
    if os.geteuid() == 0:
        lines.append("user root")  # otherwise mosquitto drops to a user that cannot read tmp_path
    conf.write_text("\n".join(lines) + "\n")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

    async def publish(password: str) -> int:
        result = await trio.run_process(
            ["mosquitto_pub", "-p", str(port), "-u", "alice", "-P", password, "-t", "t", "-m", "m"],
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )
        return result.returncode

    async with trio.open_nursery() as nursery:
        command = [mosquitto, "-c", str(conf)]
        process = await nursery.start(partial(trio.run_process, command, check=False, capture_stderr=True))
        try:

            async def listening() -> bool:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    return False
                await stream.aclose()
                return True

            await eventually(listening)
            assert await publish("pw") == 0
            assert await publish("wrong") != 0
        finally:
            process.terminate()


async def test_plugin_reload_with_a_broken_file_keeps_the_running_users(tmp_path: Path) -> None:
    path = write_users(tmp_path / "passwd", [vernemq_line("alice", "pw")])
    async with passwd_broker(path, allow_anonymous=False, reload_interval=0) as broker:
        write_users(path, [vernemq_line("alice", "new"), "no colon on this line"])
        with pytest.raises(CommandError, match=re.escape(f"{path}:2")):
            await broker.service.run_command(["plugin", "reload", f"name={PLUGIN}"])
        assert await connack_code(broker, 5, "alice", b"pw") == 0
        write_users(path, [vernemq_line("alice", "new")])
        await broker.service.run_command(["plugin", "reload", f"name={PLUGIN}"])
        assert await connack_code(broker, 5, "alice", b"new") == 0
        assert await connack_code(broker, 5, "alice", b"pw") == 0x86


# -- what a review found: the file as Mosquitto reads it, the tool's guards ------------------


def test_parse_trims_blanks_and_a_byte_order_mark_and_refuses_a_second_line_for_a_user() -> None:
    line = vernemq_line("alice", "pw").split(":", 1)[1]
    users = passwd.parse_password_file(f"\ufeff alice : {line} \r\n", "pw.txt")
    assert users == {"alice": line}
    with pytest.raises(passwd.PasswordFileError, match=r"^pw.txt:2: user 'alice' appears a second time"):
        passwd.parse_password_file(f"alice:{line}\nalice:{line}\n", "pw.txt")


def test_an_iteration_count_hashlib_cannot_take_is_a_malformed_line() -> None:
    line = passwd.hash_password("pw", 1).replace("$7$1$", f"$7${2**31}$", 1)
    with pytest.raises(passwd.PasswordFileError, match="malformed"):
        passwd.parse_password_file(f"alice:{line}\n", "pw.txt")
    assert passwd.verify(line, "pw") is False


@pytest.mark.parametrize("username", ["#alice", " alice", "alice ", "a\nroot", "a:b", ""])
def test_tool_refuses_a_username_that_would_not_read_back_as_itself(
    tmp_path: Path, username: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "passwd"
    assert passwd_tool.main(["-c", "-b", "-I", FAST, str(path), username, "pw"]) == 1
    assert "invalid username" in capsys.readouterr().err
    assert not path.exists()


def test_tool_refuses_an_empty_password_and_an_iteration_count_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "passwd"
    assert passwd_tool.main(["-c", "-b", str(path), "alice", ""]) == 1
    assert "empty password" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        passwd_tool.main(["-c", "-b", "-I", str(2**31), str(path), "alice", "pw"])
    assert usage.value.code == 2


def test_tool_writes_through_a_symbolic_link_and_keeps_the_owner(tmp_path: Path) -> None:
    real = tmp_path / "real.passwd"
    assert passwd_tool.main(["-c", "-b", "-I", FAST, str(real), "alice", "pw"]) == 0
    link = tmp_path / "link.passwd"
    link.symlink_to(real)
    if os.geteuid() == 0:
        os.chown(real, 65534, 65534)  # root edits a file the broker's user owns
    assert passwd_tool.main(["-b", "-I", FAST, str(link), "bob", "pw2"]) == 0
    assert link.is_symlink()
    assert set(passwd.parse_password_file(real.read_text(), str(real))) == {"alice", "bob"}
    if os.geteuid() == 0:
        assert (real.stat().st_uid, real.stat().st_gid) == (65534, 65534)
