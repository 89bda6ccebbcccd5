"""``ternmq-passwd``: manage the password file of the ``passwd`` plugin.

Modelled on ``mosquitto_passwd`` and ``vmq-passwd``, and writing Mosquitto 2.0's
``$7$`` (PBKDF2-HMAC-SHA512) lines, so the same file serves Mosquitto too::

    ternmq-passwd [-c] [-I ITERATIONS] FILE USER             # asks for the password twice
    ternmq-passwd [-c] [-I ITERATIONS] -b FILE USER PASSWORD  # batch: password given
    ternmq-passwd -D FILE USER                               # delete USER
    ternmq-passwd -U [-I ITERATIONS] FILE                    # hash plain user:password lines

``-c`` creates the file, overwriting an existing one (as ``mosquitto_passwd -c``);
without it the file must exist. Adding a user that is listed replaces its line in place;
other lines (comments, other users, their line endings) are kept byte for byte. ``-U``
leaves lines already hashed (``$6$``, ``$7$``, ``$argon2id$``) untouched, so running it
twice is harmless (``vmq-passwd -U`` would hash the hashes).

Every change is written to a temporary file in the same folder, then renamed over the
file, so the broker never reads a half-written file; the file's permissions are kept
(a new file is made readable by its owner only). Errors: a message on stderr and exit
status 1; a wrong command line: exit status 2.
"""

from __future__ import annotations

import argparse
import getpass
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ternmq.plugins.passwd import DEFAULT_ITERATIONS, HASHED_PREFIXES, MAX_ITERATIONS, hash_password

PROG = "ternmq-passwd"


class ToolError(Exception):
    """A failure reported to the user as ``ternmq-passwd: error: MESSAGE`` (exit 1)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Add, update or delete users of a ternmq (and Mosquitto) password file.",
        usage=(
            f"{PROG} [-c] [-I ITERATIONS] FILE USER\n"
            f"       {PROG} [-c] [-I ITERATIONS] -b FILE USER PASSWORD\n"
            f"       {PROG} -D FILE USER\n"
            f"       {PROG} -U [-I ITERATIONS] FILE"
        ),
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-D", dest="delete", action="store_true", help="delete USER")
    mode.add_argument("-U", dest="upgrade", action="store_true", help="hash the plain-text passwords of FILE")
    parser.add_argument("-c", dest="create", action="store_true", help="create FILE (overwrites an existing one)")
    parser.add_argument("-b", dest="batch", action="store_true", help="take the password from the command line")
    parser.add_argument(
        "-I",
        dest="iterations",
        type=int,
        default=DEFAULT_ITERATIONS,
        metavar="ITERATIONS",
        help=f"PBKDF2 iterations of new hashes (default {DEFAULT_ITERATIONS})",
    )
    parser.add_argument("file", metavar="FILE", type=Path)
    parser.add_argument("words", metavar="USER [PASSWORD]", nargs="*")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    expected = 0 if args.upgrade else 2 if args.batch else 1
    if len(args.words) != expected:
        parser.error(f"expected {expected} argument(s) after FILE, got {len(args.words)}")
    if args.create and (args.delete or args.upgrade):
        parser.error("-c cannot be combined with -D or -U")
    if args.batch and (args.delete or args.upgrade):
        parser.error("-b cannot be combined with -D or -U")
    if not 1 <= args.iterations <= MAX_ITERATIONS:
        parser.error(f"-I must be between 1 and {MAX_ITERATIONS}")
    try:
        run(args)
    except ToolError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> None:
    path: Path = args.file
    if args.upgrade:
        write_atomically(path, upgrade(read_lines(path), path, args.iterations))
        return
    username: str = args.words[0]
    if (
        not username
        or ":" in username
        or username.startswith("#")
        or username != username.strip()
        or any(not character.isprintable() for character in username)
    ):
        # A newline would write a second line (another user's), a leading "#" a comment,
        # blanks a name nobody can log in with (readers trim them).
        raise ToolError(
            f"invalid username {username!r}: it must be non-empty, printable, without ':', "
            "blanks at either end or a leading '#'"
        )
    lines = [] if args.create else read_lines(path)
    if args.delete:
        kept = [line for line in lines if _username(line) != username]
        if len(kept) == len(lines):
            raise ToolError(f"user {username} not found in {path}")
        write_atomically(path, kept)
        return
    password = args.words[1] if args.batch else ask_password()
    if not password:
        raise ToolError("empty password")
    write_atomically(path, set_user(lines, username, hash_password(password, args.iterations)))


def ask_password() -> str:
    try:
        password = getpass.getpass("Password: ")
        again = getpass.getpass("Reenter password: ")
    except (EOFError, KeyboardInterrupt):
        raise ToolError("no password given") from None
    if password != again:
        raise ToolError("passwords do not match")
    return password


def read_lines(path: Path) -> list[str]:
    """The file's lines with their line endings (so untouched lines stay identical)."""
    try:
        # Bytes, not read_text: universal newlines would turn CRLF endings into LF.
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ToolError(f"{path}: no such file (-c creates it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolError(f"{path}: cannot read it: {exc}") from None
    # Split at "\n" only (as Mosquitto's fgets does), each line keeping its ending.
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def _username(line: str) -> str | None:
    if not line.strip() or line.startswith("#") or ":" not in line:
        return None
    return line.partition(":")[0]


def _ending(line: str) -> str:
    return line[len(line.rstrip("\r\n")) :] or "\n"


def set_user(lines: list[str], username: str, line_hash: str) -> list[str]:
    """``lines`` with ``username``'s entry replaced (its first line; later ones dropped)
    or appended."""
    result: list[str] = []
    found = False
    for line in lines:
        if _username(line) != username:
            result.append(line)
        elif not found:
            result.append(f"{username}:{line_hash}{_ending(line)}")
            found = True
    if not found:
        if result and not result[-1].endswith("\n"):
            result[-1] += "\n"
        result.append(f"{username}:{line_hash}\n")
    return result


def upgrade(lines: list[str], path: Path, iterations: int) -> list[str]:
    """Plain ``user:password`` lines hashed; everything else as it was."""
    result: list[str] = []
    for number, line in enumerate(lines, start=1):
        body = line.rstrip("\r\n")
        if not body.strip() or body.startswith("#"):
            result.append(line)
            continue
        username, colon, password = body.partition(":")
        if not colon or not username:
            raise ToolError(f"{path}:{number}: not a 'username:password' line; file left unchanged")
        if password.startswith(HASHED_PREFIXES):
            result.append(line)
        else:
            result.append(f"{username}:{hash_password(password, iterations)}{line[len(body) :]}")
    return result


def write_atomically(path: Path, lines: list[str]) -> None:
    """Replace ``path`` by ``lines`` through a temporary file in the same folder, keeping
    its mode, owner and group; through a symbolic link, the file it points to."""
    path = path.resolve()
    owner: tuple[int, int] | None = None
    try:
        status = path.stat()
        mode, owner = stat.S_IMODE(status.st_mode), (status.st_uid, status.st_gid)
    except FileNotFoundError:
        mode = 0o600  # password hashes are nobody else's business
    except OSError as exc:
        raise ToolError(f"{path}: {exc.strerror or exc}") from None
    folder = path.parent
    try:
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ToolError(f"cannot write in {folder}: {exc.strerror or exc}") from None
    replaced = False
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as file:
            file.writelines(lines)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            # The broker may run as another user: root editing its file must not take
            # the file away from it.
            os.chown(temporary, *owner)
        os.replace(temporary, path)
        replaced = True
    except OSError as exc:
        raise ToolError(f"{path}: cannot write it: {exc.strerror or exc}") from None
    finally:
        if not replaced:  # whatever stopped us, no half-written temporary file stays behind
            Path(temporary).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
