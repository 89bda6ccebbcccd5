"""The shortcuts of the connect+disconnect path give what the general code gives.

The accepting CONNACK of MQTT 3.1/3.1.1 is four cached bytes (kernel/connect.py), and
a close with nothing to await skips the shielded teardown (SessionLifecycle.detach_at_once);
bench/ says why. The end-to-end tests cover the behaviour; these pin the shortcuts.
"""

from __future__ import annotations

import pytest

from ternmq.kernel import connect
from ternmq.kernel.codec import Connack, encode


@pytest.mark.parametrize("level", [3, 4])
@pytest.mark.parametrize("session_present", [False, True])
def test_cached_connack_is_the_encoded_one(level: int, session_present: bool) -> None:
    cached = (connect._CONNACK_ACCEPTED_V4 if level == 4 else connect._CONNACK_ACCEPTED_V3)[session_present]
    assert cached == encode(Connack(session_present, 0, {}), level)
