"""The control socket survives anything its clients send or do."""

import json
import os
import socket
import stat

import trio

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
