"""Tests of the json_auth plugin, written with ternmq's testing kit."""

import json

from ternmq.kernel.testing import MQTTTestClient, open_broker, registered, test_config

from ternmq_json_auth import Config, Plugin


async def test_known_user_with_right_password_is_allowed(tmp_path):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"alice": "secret"}))
    async with open_broker(test_config(allow_anonymous=False)) as broker:
        async with registered(broker, Plugin(Config(users_file=str(users)))):
            async with MQTTTestClient.open(broker.port()) as client:
                connack = await client.connect("c1", username="alice", password=b"secret")
                assert connack.reason_code == 0


async def test_wrong_password_is_refused(tmp_path):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"alice": "secret"}))
    async with open_broker(test_config(allow_anonymous=False)) as broker:
        async with registered(broker, Plugin(Config(users_file=str(users)))):
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
