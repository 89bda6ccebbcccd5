"""A third-party ternmq authentication plugin in one module.

Users and passwords come from a JSON object ``{"username": "password", ...}``, read
from the file ``users_file`` or, when that is empty, from the environment variable
named by ``users_env``. A known user with the right password is allowed, with a wrong
password refused (bad username or password); a user it does not know is left to the
next plugin (or to the broker's default policy).

Enable it in plugins.toml::

    [plugins.json_auth]
    users_file = "/etc/ternmq/users.json"

or at run time: ``ternmq-admin plugin enable name=json_auth --config users_file=/etc/ternmq/users.json``.
"""

from __future__ import annotations

import hmac
import json
import os

import attrs

from ternmq.kernel import hookimpl
from ternmq.kernel.types import ClientInfo, allow, deny

__version__ = "1.0.0"


@attrs.frozen
class Config:
    users_file: str = ""
    users_env: str = "TERNMQ_USERS"


class Plugin:
    Config = Config

    def __init__(self, config: Config) -> None:
        self.config = config

    def users(self) -> dict[str, str]:
        # Read on every CONNECT so edits apply without a reload; a CONNECT is rare
        # next to the messages that follow it.
        if self.config.users_file:
            with open(self.config.users_file, encoding="utf-8") as handle:
                return json.load(handle)
        return json.loads(os.environ.get(self.config.users_env, "{}"))

    @hookimpl
    def auth_on_register(self, client: ClientInfo, password: bytes | None):
        expected = self.users().get(client.username or "")
        if expected is None:
            return None  # not ours: the next plugin decides
        if password is not None and hmac.compare_digest(password, expected.encode()):
            return allow()
        return deny(0x86, "bad username or password")
