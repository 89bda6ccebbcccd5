"""Users and passwords from a password file (the ``passwd`` built-in plugin).

Implements ``auth_on_register`` against a file of ``username:hash`` lines, the format
of Mosquitto's ``password_file`` and of VerneMQ's ``vmq_passwd``, so files made by
``mosquitto_passwd``, ``vmq-passwd`` or ``ternmq-passwd`` (:mod:`ternmq.plugins.passwd_tool`)
work as they are.

Answers: a client without a username, or with a username the file does not list, gets
no opinion (``None``): the next plugin decides, then ``allow_anonymous``. A listed user
with the right password is accepted; a wrong or missing password is refused with 0x86
(bad user name or password; MQTT 3 clients get return code 4).

Hash formats (after ``username:``):

* ``$6$<salt>$<hash>``: VerneMQ's ``vmq-passwd`` and Mosquitto 1.6's format, one
  SHA-512 over the password followed by the base64-decoded salt. Despite the marker it
  is not crypt(3)'s SHA-512-crypt.
* ``$7$<iterations>$<salt>$<hash>``: Mosquitto 2.0's default, PBKDF2-HMAC-SHA512 with
  the base64-decoded salt and a 64-byte key. ``ternmq-passwd`` writes this format.
* ``$argon2id$...``: Mosquitto 2.1's PHC string, checked with argon2-cffi.

Blank lines and lines starting with ``#`` are skipped; a later line for the same user
replaces an earlier one. A line without ``:``, with an empty username or with an
unknown or malformed hash is an error naming the file and the line: at load the plugin
does not load, at a reload the previous users stay.

Config keys (``[plugins.passwd]``):

* ``password_file`` (required): the file; relative to the configuration file's folder.
  A missing file makes the plugin fail to load.
* ``reload_interval`` (default 10.0 seconds; 0 = never): how often the file's
  modification time, size and inode are checked; when they change the file is read
  again. A file that disappears, or no longer parses, keeps the previous users (logged).
  Connected clients are not checked again. Replace the file by renaming a new one over
  it, as ``ternmq-passwd`` does: a file rewritten in place can be caught half-written,
  and a truncated file that still parses is used until the next poll.

New entries are written by ``ternmq-passwd`` (plugins/passwd_tool.py) as ``$7$`` lines
with 210000 PBKDF2 iterations, or what its ``-I`` sets; verification uses each line's
own count.

Hashes are computed in a worker thread, never in the event loop. Verdicts are cached,
keyed by a SHA-256 of (username, password, stored line), so a reconnect storm with the
same credentials costs one hash; the cache is bounded and emptied at every reload.
Metric: ``passwd_users`` (gauge).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict
from pathlib import Path
from typing import Any

import argon2
import attrs
import trio

from ternmq.kernel import Allow, ClientInfo, Deny, allow, deny, file_stamp, hookimpl

log = logging.getLogger("ternmq.plugins.passwd")

BAD_USERNAME_OR_PASSWORD = 0x86
# Mosquitto 2.0 writes (and its verifier requires) 12-byte salts; 2.1 accepts them too.
SALT_BYTES = 12
# PBKDF2-HMAC-SHA512 key length in Mosquitto's $7$ lines: the size of one SHA-512 digest.
PBKDF2_KEY_BYTES = 64
SHA512_BYTES = 64
# OWASP's figure for PBKDF2-HMAC-SHA512; mosquitto_passwd's 101 is far too few today.
DEFAULT_ITERATIONS = 210_000
CACHE_SIZE = 10_000
HASHED_PREFIXES = ("$6$", "$7$", "$argon2id$")

_argon2 = argon2.PasswordHasher()


class PasswordFileError(ValueError):
    """A password file line that cannot be used; the message starts with ``source:line:``."""


@attrs.frozen
class Config:
    password_file: Path
    reload_interval: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))


# -- the formats ------------------------------------------------------------------------


def _b64(text: str) -> bytes:
    # validate=True: a typo in a hash must be a parse error, not a silently shorter salt.
    return base64.b64decode(text, validate=True)


# hashlib's PBKDF2 takes a C int: a larger count in a line would fail every login.
MAX_ITERATIONS = 2**31 - 1


def check_hash(line_hash: str) -> None:
    """Raise ValueError (with the reason) if ``line_hash`` is not a usable hash."""
    if line_hash.startswith("$argon2id$"):
        try:
            argon2.extract_parameters(line_hash)
        except argon2.exceptions.InvalidHashError as exc:
            raise ValueError("malformed $argon2id$ hash") from exc
        return
    fields = line_hash.split("$")
    try:
        if line_hash.startswith("$6$") and len(fields) == 4:
            if len(_b64(fields[3])) != SHA512_BYTES or not _b64(fields[2]):
                raise ValueError
            return
        if line_hash.startswith("$7$") and len(fields) == 5:
            if (
                not 1 <= int(fields[2]) <= MAX_ITERATIONS
                or len(_b64(fields[4])) != PBKDF2_KEY_BYTES
                or not _b64(fields[3])
            ):
                raise ValueError
            return
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"malformed ${fields[1]}$ hash") from exc
    if line_hash.startswith(("$6$", "$7$")):
        raise ValueError(f"malformed ${fields[1]}$ hash (wrong number of '$' fields)")
    raise ValueError("unknown hash scheme (expected $6$, $7$ or $argon2id$)")


def parse_password_file(text: str, source: str) -> dict[str, str]:
    """The users of a password file: username -> hash. Raises PasswordFileError naming
    ``source`` and the line number of the first bad line."""
    users: dict[str, str] = {}
    # Lines end at "\n" only, as Mosquitto's fgets sees them, so line numbers agree with
    # editors; a byte-order mark some editors put first is not part of the first user.
    for number, raw in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        # Blanks around the name and the hash (CRLF endings, an editor's stray space) are
        # no part of them, as Mosquitto trims them too.
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        username, colon, line_hash = line.partition(":")
        username, line_hash = username.strip(), line_hash.strip()
        if not colon:
            raise PasswordFileError(f"{source}:{number}: no ':' between username and password hash")
        if not username:
            raise PasswordFileError(f"{source}:{number}: empty username")
        if username in users:
            # Mosquitto 2.0 keeps the first line, 2.1 refuses the file: which password
            # counts is ambiguous, so the file is refused here too.
            raise PasswordFileError(f"{source}:{number}: user {username!r} appears a second time")
        try:
            check_hash(line_hash)
        except ValueError as exc:
            raise PasswordFileError(f"{source}:{number}: user {username!r}: {exc}") from None
        users[username] = line_hash
    return users


def verify(line_hash: str, password: bytes | str) -> bool:
    """Whether ``password`` matches ``line_hash`` (a hash as in the file). Slow on
    purpose for $7$ and $argon2id$: call it from a worker thread in async code."""
    secret = password.encode() if isinstance(password, str) else password
    try:
        check_hash(line_hash)
    except ValueError:
        return False
    if line_hash.startswith("$argon2id$"):
        try:
            return _argon2.verify(line_hash, secret)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
    fields = line_hash.split("$")
    if fields[1] == "6":
        expected = _b64(fields[3])
        actual = hashlib.sha512(secret + _b64(fields[2])).digest()
    else:
        expected = _b64(fields[4])
        actual = hashlib.pbkdf2_hmac("sha512", secret, _b64(fields[3]), int(fields[2]), PBKDF2_KEY_BYTES)
    return hmac.compare_digest(expected, actual)


def hash_password(password: bytes | str, iterations: int = DEFAULT_ITERATIONS) -> str:
    """A new ``$7$`` hash (the part after ``username:``), as ``mosquitto_passwd`` writes it."""
    secret = password.encode() if isinstance(password, str) else password
    salt = secrets.token_bytes(SALT_BYTES)
    key = hashlib.pbkdf2_hmac("sha512", secret, salt, iterations, PBKDF2_KEY_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


# -- the plugin -------------------------------------------------------------------------


def _read(path: Path) -> tuple[tuple[int, int, int, int], dict[str, str]] | None:
    """(stamp, users) of the file; None if it changed while being read (read it later)."""
    stamp = file_stamp(path)
    # Decoded bytes: "\r" is stripped per line, never taken for a line break of its own.
    users = parse_password_file(path.read_bytes().decode("utf-8"), str(path))
    return (stamp, users) if file_stamp(path) == stamp else None


class Plugin:
    """Checks CONNECT credentials against a password file, reloaded when it changes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.path = config.password_file
        # A PasswordFileError already names the file and line: it goes out as it is.
        try:
            self.stamp = file_stamp(self.path)
            self.users = parse_password_file(self.path.read_bytes().decode("utf-8"), str(self.path))
        except FileNotFoundError:
            raise ValueError(f"password_file {self.path}: no such file") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"password_file {self.path}: not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise ValueError(f"password_file {self.path}: {exc.strerror or exc}") from None
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._missing = False  # logged once when the file disappears, not at every poll
        # Why the file in force is not the file on disk, for plugin show (None: it is).
        self.last_error: str | None = None

    @hookimpl
    def register_metrics(self, registry: Any) -> None:
        registry.gauge("passwd_users", lambda: len(self.users), "users in the password file")

    @hookimpl
    async def auth_on_register(self, client: ClientInfo, password: bytes | None) -> Allow | Deny | None:
        username = client.username
        if username is None:
            return None
        line_hash = self.users.get(username)
        if line_hash is None:
            return None  # not ours: another plugin, or allow_anonymous, decides
        if password is None:
            return deny(BAD_USERNAME_OR_PASSWORD, "bad user name or password")
        matches = await self._matches(username, password, line_hash)
        if self.users.get(username) != line_hash:
            # Reloaded while the hash was computed (a user removed, a password changed):
            # the users in force now decide.
            return await self.auth_on_register(client, password)
        return allow() if matches else deny(BAD_USERNAME_OR_PASSWORD, "bad user name or password")

    async def _matches(self, username: str, password: bytes, line_hash: str) -> bool:
        # The stored line is part of the key, so a changed password can never hit an old
        # verdict; lengths separate the fields so no two triples share a key.
        key = hashlib.sha256()
        for part in (username.encode(), password, line_hash.encode()):
            key.update(len(part).to_bytes(8, "big") + part)
        digest = key.digest()
        verdict = self._cache.get(digest)
        if verdict is not None:
            self._cache.move_to_end(digest)
            return verdict
        verdict = await trio.to_thread.run_sync(verify, line_hash, password)
        self._cache[digest] = verdict
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return verdict

    async def serve(self, service: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if not self.config.reload_interval:
            return
        while True:
            await trio.sleep(self.config.reload_interval)
            await self.reload_if_changed()

    async def reload_if_changed(self) -> bool:
        """Read the file again if it changed since the last read; True if users changed."""
        try:
            stamp = await trio.to_thread.run_sync(file_stamp, self.path)
        except FileNotFoundError:
            if not self._missing:
                log.error("password file %s has disappeared; keeping its %d users", self.path, len(self.users))
                self._missing = True
                self.last_error = f"{self.path}: no such file (the users last read are kept)"
            return False
        except Exception as exc:
            log.error("password file %s: cannot check it (%s); keeping its %d users", self.path, exc, len(self.users))
            return False
        self._missing = False
        if stamp == self.stamp:
            return False
        try:
            read = await trio.to_thread.run_sync(_read, self.path)
        except Exception as exc:
            # Reported once, read again when it changes: an edit, or a chmod or chown that
            # makes it readable (the ctime in the stamp).
            self.stamp = stamp
            self.last_error = f"{exc} (the users last read are kept)"
            log.error("password file not reloaded, keeping the previous %d users: %s", len(self.users), exc)
            return False
        if read is None:
            return False  # still being written: the next poll reads the finished file
        self.stamp, self.users = read
        self.last_error = None
        self._cache.clear()
        log.info("password file %s reloaded: %d users", self.path, len(self.users))
        return True
