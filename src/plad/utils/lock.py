"""One process per output folder: an exclusive lock on FOLDER/.plad.lock, held while a command works there.

The lock is `fcntl.flock`, which the kernel drops when the holder dies, so a lock left by a killed process never
blocks. The holder writes its pid, host, command and start time into the lock file, so a refused process can name
it. The file is removed when the lock is released (checking, after locking, that the locked file is still the one
at the path, so that a process that opened the old file just before it was removed cannot lock it too); a folder
the lock itself created is removed again when nothing else was written into it, so a command refused for bad input
leaves nothing behind. Re-entrant within a process (a command that locks a folder it already holds goes on).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from plad.utils.errors import ConfigError

LOCK_FILE = ".plad.lock"

_held: dict[str, int] = {}  # realpath of a locked folder -> how many nested holds of this process


class FolderBusy(ConfigError):
    """Another process works in the folder; the message names it."""


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process (it has not written its name yet)"
    return f"pid {info['pid']} on {info.get('host', '?')} since {info.get('since', '?')}: {info.get('command', '?')}"


def _acquire(folder: Path, what: str) -> int:
    path = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:  # the folder was removed meanwhile (by a holder that created it): again
            folder.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderBusy(
                f"{what} {folder} is in use by {holder}; wait for it to finish or stop it (a lock left by a killed "
                "process does not block)"
            ) from None
        except OSError:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # locked a file its holder removed on release: lock the one at the path now


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "output_dir", command: str = "") -> Iterator[None]:
    """Hold the exclusive lock of `folder` (created when missing) for the body; FolderBusy when another process
    holds it. `what` names the folder in messages (the setting it comes from); `command` is written into the lock
    file for a refused process to show (default: this process's arguments)."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    created = None  # the topmost folder this lock created, removed again if nothing else is written into it
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        created = parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(folder, what)
    except OSError as e:
        raise ConfigError(f"{what} {folder} is not writable: {e.strerror or e}") from None
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": command or " ".join(sys.argv),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("ascii"), 0)
    except OSError:
        pass  # a full disk: the lock holds all the same, only the holder's name is missing
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            (folder / LOCK_FILE).unlink()  # still locked: nobody else can have taken this file meanwhile
        os.close(fd)
        if created is not None:
            for d in [folder, *folder.parents]:
                try:
                    d.rmdir()  # only an empty folder goes
                except OSError:
                    break
                if d == created:
                    break
