"""A plugin's files: telling that one changed, writing one so that a crash never
leaves half of it."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomically(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` whole or not at all: a temporary file in the same folder,
    flushed to disk, then renamed over ``path``. The folder is made if needed; ``mode``
    sets the file's permissions (0o600 for secrets) before it takes the name. OSError
    when it cannot be written; ``path`` is then as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    replaced = False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
        replaced = True
    finally:
        if not replaced:
            Path(temporary).unlink(missing_ok=True)


def read_json_list(file: Path, what: str) -> list[Any] | None:
    """The JSON list a plugin keeps in ``file`` (its ``what``: "bans", "endpoints"...);
    None when there is no such file; ValueError naming the file when it cannot be read,
    is not UTF-8 text, not JSON, or not a list."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"{file}: cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{file}: not UTF-8 text") from None
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{file}: not JSON ({exc})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{file}: must be a JSON list of {what}")
    return entries


def set_aside_imported(file: Path, what: str, count: int, log: logging.Logger) -> None:
    """A plugin's file whose entries (``count`` ``what``) a store now keeps and has
    committed: renamed ``<name>.imported``, so that it is neither read nor imported again
    (and the operator sees what happened to it); logged either way. A file that cannot
    be renamed stays (the store's records win over it from now on)."""
    done = file.with_name(file.name + ".imported")
    try:
        file.replace(done)
    except OSError as exc:
        log.warning(
            "%d %s imported from %s into the store; it cannot be renamed %s: %s",
            count,
            what,
            file,
            done.name,
            exc.strerror or exc,
        )
    else:
        log.info("%d %s imported from %s into the store; the file is now %s", count, what, file, done)


def file_stamp(path: Path) -> tuple[int, int, int, int]:
    """What tells a changed file, for plugins that poll one: (mtime, size, inode, ctime).
    The inode: a file replaced by renaming may keep size and (coarse) mtime; the ctime:
    a chmod or chown that makes it readable again changes nothing else. OSError when it
    cannot be stat'ed."""
    status = path.stat()
    return status.st_mtime_ns, status.st_size, status.st_ino, status.st_ctime_ns
