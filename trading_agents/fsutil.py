"""File-system helpers shared by every writer: atomic writes, exclusive run locks, free space.

Every file the project writes goes through :func:`atomic_write_bytes` (temporary file in the
same directory, fsync, rename; the one implementation is ``utils.llm_integration.files``'s),
so a crash or a full disk never leaves a half-written file behind: readers see the old file
or the new one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trading_agents.errors import LockBusyError, ResourceError
from utils.llm_integration import files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; raise :class:`ResourceError` on a read-only or full disk.

    The writer itself is :func:`utils.llm_integration.files.atomic_write_bytes` (the LLM layer,
    which cannot import this package, writes through it too); here its ``OSError`` becomes one
    clear error.
    """
    try:
        files.atomic_write_bytes(Path(path), data)
    except OSError as exc:
        hint = "free some disk space" if exc.errno == errno.ENOSPC else "choose a writable folder"
        raise ResourceError(f"cannot write {path}: {exc.strerror or exc}; {hint}") from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def check_free_space(folder: Path, needed: int) -> None:
    """Raise :class:`ResourceError` unless ``folder``'s file system has ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise ResourceError(
            f"not enough disk space in {folder}: need {needed / 1e9:.2f} GB more, {free / 1e9:.2f} GB free"
        )


@contextmanager
def exclusive_lock(path: Path, what: str = "another run") -> Iterator[None]:
    """Hold an exclusive, non-blocking ``flock`` on ``path`` for the block.

    Raises :class:`LockBusyError` at once when another process holds it (cron overlap).
    The kernel releases the lock if the holder dies, so a crash never leaves a stale lock.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ResourceError(f"cannot create lock file {path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            who = f" (pid {holder})" if holder else ""
            raise LockBusyError(f"{what}{who} holds {path}; wait for it to finish, then retry") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 32, 0).decode().strip()
        return int(raw) if raw else None
    except (OSError, ValueError):
        return None
