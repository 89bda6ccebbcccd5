"""Tests of the json_auth plugin, written with ternmq's testing kit."""

import json

import pytest
from ternmq_json_auth import Config, Plugin

from ternmq.kernel import MQTTTestClient, open_broker, registered, test_config


async def test_known_user_with_right_password_is_allowed(tmp_path):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"alice": "secret"}))
    async with open_broker(test_config(allow_anonymous=False)) as broker:
        async with registered(broker, Plugin(Config(users_file=users))):
            async with MQTTTestClient.open(broker.port()) as client:
                connack = await client.connect("c1", username="alice", password=b"secret")
                assert connack.reason_code == 0


async def test_wrong_password_is_refused(tmp_path):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"alice": "secret"}))
    async with open_broker(test_config(allow_anonymous=False)) as broker:
        async with registered(broker, Plugin(Config(users_file=users))):
            async with MQTTTestClient.open(broker.port()) as client:
                connack = await client.connect("c1", username="alice", password=b"wrong")
                assert connack.reason_code == 0x86


async def test_unknown_user_is_left_to_the_default_policy(monkeypatch):
    monkeypatch.setenv("TERNMQ_USERS", json.dumps({"bob": "pw"}))
    async with open_broker(test_config(allow_anonymous=True)) as broker:
        async with registered(broker, Plugin(Config())):
            async with MQTTTestClient.open(broker.port()) as client:
                connack = await client.connect("c2", username="mallory", password=b"x")
                assert connack.reason_code == 0  # anonymous allowed: the plugin passed


async def test_ternmq_broker_fixture_and_env_users(ternmq_broker, monkeypatch):
    monkeypatch.setenv("TERNMQ_USERS", json.dumps({"bob": "pw"}))
    async with registered(ternmq_broker, Plugin(Config())):
        async with MQTTTestClient.open(ternmq_broker.port(), 4) as client:
            connack = await client.connect("c3", username="bob", password=b"nope")
            assert connack.reason_code == 0x86  # v3 clients see return code 4


def test_a_missing_or_malformed_users_file_fails_at_load(tmp_path):
    with pytest.raises(FileNotFoundError):
        Plugin(Config(users_file=tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"alice": ')
    with pytest.raises(ValueError, match="is not valid JSON"):
        Plugin(Config(users_file=broken))
    broken.write_text('["alice", "secret"]')
    with pytest.raises(ValueError, match="must be a JSON object"):
        Plugin(Config(users_file=broken))


def test_malformed_users_in_the_environment_fail_at_load(monkeypatch):
    monkeypatch.setenv("TERNMQ_USERS", '{"bob": 5}')
    with pytest.raises(ValueError, match=r"\$TERNMQ_USERS must be a JSON object"):
        Plugin(Config())


async def test_an_edited_file_applies_at_the_next_connect_and_a_broken_edit_is_ignored(tmp_path, caplog):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"alice": "secret"}))
    async with open_broker(test_config(allow_anonymous=False)) as broker:
        async with registered(broker, Plugin(Config(users_file=users))):
            async with MQTTTestClient.open(broker.port()) as client:
                assert (await client.connect("c1", username="alice", password=b"secret")).reason_code == 0
            users.write_text(json.dumps({"alice": "new secret"}))
            async with MQTTTestClient.open(broker.port()) as client:
                assert (await client.connect("c2", username="alice", password=b"new secret")).reason_code == 0
            users.write_text('{"alice": "half')  # saved half-way
            async with MQTTTestClient.open(broker.port()) as client:
                assert (await client.connect("c3", username="alice", password=b"new secret")).reason_code == 0
    assert "keeping the users read before" in caplog.text


async def test_loaded_from_a_plugins_table_with_a_relative_users_file(tmp_path, monkeypatch):
    # A configuration that comes from no file resolves relative paths against the
    # broker's working directory; from a file, against the file's folder.
    (tmp_path / "users.json").write_text(json.dumps({"alice": "secret"}))
    monkeypatch.chdir(tmp_path)
    config = test_config(allow_anonymous=False, plugins={"ternmq_json_auth:Plugin": {"users_file": "users.json"}})
    async with open_broker(config) as broker:
        async with MQTTTestClient.open(broker.port()) as client:
            assert (await client.connect("c1", username="alice", password=b"secret")).reason_code == 0
