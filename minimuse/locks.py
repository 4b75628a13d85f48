"""One writer per output folder: an advisory lock (fcntl.flock) on OUT/.minimuse.lock, which holds the writer's PID.

Two `minimuse train-tokenizer --out X` (or two `pretokenize --out X`) started together would both pass every check on
an empty X and then interleave their writes into one mixed run. The lock is taken before anything in X is deleted or
written and held for the whole run; a second writer is refused in one line naming the holder's PID.
- flock belongs to the open file: a killed holder's lock dies with it, so a stale lock file never blocks a new run;
- the lock file exists only while it is held: released, it is unlinked (a refused or failed run leaves nothing behind,
  and a folder the lock created, still empty, is removed). The holder checks, once locked, that the file it locked is
  still the one at the path, so a lock unlinked under a waiting process is never taken twice;
- a process may take the lock of a folder it already holds (a notebook resuming its own run), and `releasing` scopes
  the locks a call takes to that call.
"""
from __future__ import annotations

import atexit
import fcntl
import functools
import os
import time
from pathlib import Path

from .checkpoint import CheckpointError

LOCK_NAME = ".minimuse.lock"
_HELD: dict[str, tuple[int, list[Path], int]] = {}  # lock path -> (fd, folders created for it, the PID that locked)


class FolderLockedError(CheckpointError):
    """Another live process is writing the folder."""


def _holder(fd: int, wait_s: float = 2.0) -> str:
    """The PID written in a lock another process holds; it writes it just after locking, so wait for it briefly."""
    deadline = time.monotonic() + wait_s
    while True:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if pid or time.monotonic() > deadline:
            return pid or "unknown"
        time.sleep(0.02)


def acquire(folder, flag: str = "--out") -> Path:
    """Lock `folder` (created if absent) for this process, or raise FolderLockedError naming the holder's PID."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()][::-1]  # outermost first
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    key = os.path.realpath(path)
    if key in _HELD:
        return path
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            _remove_empty(created)
            raise FolderLockedError(f"{flag} {folder} is being written by another minimuse process (PID {pid}, lock "
                                    f"{path}); wait for it to finish or stop it, or choose another {flag}") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder we waited on released and unlinked it: lock the file now at the path instead
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = (fd, created, os.getpid())
    return path


def acquire_output(folder, flag: str) -> None:
    """The lock of an output folder a command fills (None: no folder, nothing to lock), held until the command returns
    (`@releasing`). A path that is not a folder is refused by name first, before `acquire` would create a folder."""
    if folder is None:
        return
    folder = Path(folder)
    if folder.is_symlink():
        raise ValueError(f"{flag} {folder} is a symlink; give the real path of a folder to write into")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} is a file, not a directory; give the path of a folder to write into")
    acquire(folder, flag)


def release(folder) -> None:
    """Unlock `folder` if this process holds it: unlink the lock file, and remove the folders `acquire` created if
    they are still empty."""
    path = Path(folder) / LOCK_NAME
    held = _HELD.pop(os.path.realpath(path), None)
    if held is None:
        return
    fd, created, pid = held
    if pid != os.getpid():  # a forked child (a data-loader worker) shares the parent's lock: never unlink the parent's
        return
    try:
        if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
            os.unlink(path)  # still locked here, so no one else can hold this file
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)
    _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    for p in reversed(created):  # innermost first; stop at the first that holds something
        try:
            p.rmdir()
        except OSError:
            return


def holds(folder) -> bool:
    """Whether this process holds the lock of `folder`."""
    return os.path.realpath(Path(folder) / LOCK_NAME) in _HELD


def releasing(fn):
    """Decorate a function that takes locks: the ones it took are released when it returns or raises."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = set(_HELD)
        try:
            return fn(*args, **kwargs)
        finally:
            for key in [k for k in _HELD if k not in before]:
                release(Path(key).parent)
    return wrapper


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        release(Path(key).parent)
