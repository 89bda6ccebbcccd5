"""The control socket survives anything its clients send or do."""

import json
import logging
import os
import socket
import stat

import pytest
import trio

from ternmq.kernel.broker import Broker
from ternmq.kernel.testing import MQTTTestClient, open_broker, test_config


def _request(path: str, payload: bytes, hang_up: bool) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(payload)
        if hang_up:
            return b""
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


async def test_bad_requests_get_an_error_and_the_broker_keeps_serving(tmp_path):
    path = str(tmp_path / "ctl.sock")
    async with open_broker(test_config(control_socket=path)) as broker:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        for payload in (b"", b"garbage\n", b'{"argv": 5}\n', b'{"nope": []}\n', b"\xff\xfe\n"):
            # One client hangs up at once, the next waits for the answer.
            await trio.to_thread.run_sync(_request, path, payload, True)
            answer = await trio.to_thread.run_sync(_request, path, payload, False)
            assert json.loads(answer)["ok"] is False
        answer = await trio.to_thread.run_sync(_request, path, b'{"argv": ["node", "status"]}\n', False)
        assert json.loads(answer)["result"]["type"] == "table"
        async with MQTTTestClient.open(broker.port()) as client:
            assert (await client.connect("still-here")).reason_code == 0
    assert not os.path.exists(path), "the socket file is removed when the broker stops"


async def test_a_second_broker_on_a_live_socket_is_refused_naming_node_name_and_control_socket(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ternmq.control")
    path = str(tmp_path / "ctl.sock")
    async with open_broker(test_config(control_socket=path)):
        assert ("ternmq.control", logging.INFO, f"control socket for ternmq-admin: {path}") in caplog.record_tuples
        second = Broker(test_config(control_socket=path))
        with pytest.raises(BaseExceptionGroup) as caught:
            async with trio.open_nursery() as nursery:
                await nursery.start(second.serve)
        error = caught.value
        while isinstance(error, BaseExceptionGroup):
            (error,) = error.exceptions
        assert isinstance(error, OSError)
        assert str(error) == (
            f"another broker already owns the control socket {path}; to run one more broker on "
            'this machine, give it another node_name or another control_socket ("off": none) '
            "in the [broker] table of <test>"
        )
        # The first broker keeps its socket.
        answer = await trio.to_thread.run_sync(_request, path, b'{"argv": ["node", "status"]}\n', False)
        assert json.loads(answer)["ok"] is True
