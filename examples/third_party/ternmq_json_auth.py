"""A third-party ternmq authentication plugin in one module.

Users and passwords come from a JSON object ``{"username": "password", ...}``, read
from the file ``users_file`` or, without it, from the environment variable named by
``users_env``. A known user with the right password is allowed, with a wrong password
refused (bad username or password); a user it does not know is left to the next plugin
(or to the broker's default policy).

The users are read when the plugin loads, so that a missing or broken file fails the
load (the broker does not start, or ``plugin enable`` answers the error) instead of
refusing every client later. An edited file is read again at the next CONNECT; if the
new version is broken, the last good one stays in use and a warning is logged.

Enable it in plugins.toml (a relative ``users_file`` is relative to that file's folder)::

    [plugins.json_auth]
    users_file = "/etc/ternmq/users.json"

or at run time: ``ternmq-admin plugin enable name=json_auth --config users_file=/etc/ternmq/users.json``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from pathlib import Path

import attrs

from ternmq.kernel import ClientInfo, allow, deny, hookimpl

__version__ = "1.0.0"
log = logging.getLogger("ternmq_json_auth")


@attrs.frozen
class Config:
    # Typed Path: the broker joins a relative path to its configuration file's folder.
    # (The converter is for code that builds a Config itself, with a string.)
    users_file: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    users_env: str = "TERNMQ_USERS"


def parse_users(text: str, origin: str) -> dict[str, str]:
    """The users of a JSON document; ValueError (naming ``origin``) unless it is an
    object of username: password strings."""
    try:
        users = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{origin} is not valid JSON: {exc}") from None
    if not isinstance(users, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in users.items()):
        raise ValueError(f'{origin} must be a JSON object of "username": "password" strings')
    return users


class Plugin:
    Config = Config

    def __init__(self, config: Config) -> None:
        self.config = config
        # Read now: a missing, unreadable or malformed file raises, and the load fails.
        path = config.users_file
        if path is None:
            self._users = parse_users(os.environ.get(config.users_env, "{}"), f"${config.users_env}")
        else:
            self._stamp = self._stamp_of(path)
            self._users = parse_users(path.read_text(encoding="utf-8"), str(path))

    @staticmethod
    def _stamp_of(path: Path) -> tuple[int, int, int]:
        status = path.stat()
        return status.st_mtime_ns, status.st_size, status.st_ino

    def users(self) -> dict[str, str]:
        """The users, read again when the file changed (a stat per CONNECT is cheap next
        to the messages that follow it)."""
        path = self.config.users_file
        if path is None:
            return self._users
        try:
            stamp = self._stamp_of(path)
            if stamp != self._stamp:
                self._stamp = stamp  # each version is read once: a broken one is reported once
                self._users = parse_users(path.read_text(encoding="utf-8"), str(path))
        except (OSError, ValueError) as exc:
            # Refusing everyone because of a half-saved file would be worse: the last
            # good users stay in use until the file is fixed.
            log.warning("json_auth: keeping the users read before: %s", exc)
        return self._users

    @hookimpl
    def auth_on_register(self, client: ClientInfo, password: bytes | None):
        expected = self.users().get(client.username or "")
        if expected is None:
            return None  # not ours: the next plugin decides
        if password is not None and hmac.compare_digest(password, expected.encode()):
            return allow()
        return deny(0x86, "bad username or password")
