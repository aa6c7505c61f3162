"""The one atomic file writer (``trading_agents.fsutil`` builds on it) and model-file hashing.

Every write goes to a temporary file in the same folder, is fsynced, then renamed over the
target, so a crash or a full disk never leaves a half-written file: readers see the old file or
the new one. Errors are the ``OSError`` that happened (callers turn it into their own message).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path


def _read_umask() -> int:
    # os.umask can only be read by setting it; do that once, at import, not from worker threads
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK = _read_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (parents created); raises ``OSError``, leaving no temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


_SHA_LOCK = threading.Lock()
_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """sha256 of a (possibly 26 GB) file, remembered by path, size and mtime.

    With ``cache_dir`` the digest is also kept in ``cache_dir/sha256.json`` across processes.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        if key in _SHA_MEMO:
            return _SHA_MEMO[key]
        store = cache_dir / "sha256.json" if cache_dir else None
        saved: dict[str, str] = {}
        if store and store.is_file():
            with contextlib.suppress(OSError, ValueError):
                saved = json.loads(store.read_text())
        skey = "|".join(map(str, key))
        digest = saved.get(skey)
        if digest is None:
            h = hashlib.sha256()
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
            digest = h.hexdigest()
            if store:
                saved[skey] = digest
                with contextlib.suppress(OSError):
                    atomic_write_text(store, json.dumps(saved))
        _SHA_MEMO[key] = digest
        return digest
