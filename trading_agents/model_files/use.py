"""Point ``llm.primary`` (or ``llm.fallback``) of a YAML config file at another model.

The edit is a minimal change of that one line, so comments and layout survive; only when
the ``llm`` section is written in YAML flow style (``llm: {primary: x}``) is the file
re-serialised. The new file is written atomically.

Example::

    change = use_model("tinyllama", settings, config=None, fallback=False)
    print(f"{change.key}: {change.old} -> {change.new}")
    # llm.primary: mixtral-8x7b-instruct -> tinyllama-1.1b-chat
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trading_agents.config.settings import Settings, read_yaml_config, resolve_config_path
from trading_agents.errors import ConfigError, ModelFileError
from trading_agents.fsutil import atomic_write_text
from trading_agents.model_files.gguf_info import read_gguf_info
from trading_agents.model_files.registry import load_registry, looks_like_path, resolve_path_in_models_dir

_TOP_KEY = re.compile(r"^(?P<key>[A-Za-z_][\w-]*)\s*:(?P<rest>.*)$")
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./@+-]*")
_YAML_SPECIAL = {"null", "~", "true", "false", "yes", "no", "on", "off", "none"}


@dataclass(frozen=True)
class ModelChange:
    """What :func:`use_model` changed."""

    config: Path
    key: str
    old: str | None
    new: str


def use_model(name: str, settings: Settings, config: Path | None, fallback: bool = False) -> ModelChange:
    """Set ``llm.primary`` (``fallback=True``: ``llm.fallback``) in the config file in use.

    ``name`` must be a registry name or alias (written as the canonical name) or an existing
    GGUF file inside the models folder (written as given). The config file is ``config``,
    else ``$TRADING_AGENTS_CONFIG``, else ``configs/default.yaml``; it must exist.
    """
    value = _validate(name, settings)
    path = resolve_config_path(config)
    if path is None:
        raise ConfigError("no config file to edit; pass one with --config FILE")
    key = "fallback" if fallback else "primary"
    if path.is_file():
        data = read_yaml_config(path)
        text = path.read_text(encoding="utf-8")
    else:
        raise ConfigError(f"config file {path} does not exist; pass an existing file with --config")
    llm = data.get("llm")
    if llm is not None and not isinstance(llm, dict):
        raise ConfigError(f"{path}: llm: expected a mapping of settings")
    old = (llm or {}).get(key)
    new_text = _edit_lines(text, key, value)
    if new_text is None or _llm_value(new_text, key) != value:
        data.setdefault("llm", {})
        data["llm"] = {**(data["llm"] or {}), key: value}
        new_text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    atomic_write_text(path, new_text)
    return ModelChange(config=path, key=f"llm.{key}", old=None if old is None else str(old), new=value)


def _validate(name: str, settings: Settings) -> str:
    if looks_like_path(name):
        path = resolve_path_in_models_dir(name, settings)
        if not path.is_file():
            raise ModelFileError(
                f"model file {path} does not exist; "
                "put the GGUF there or run `trading-agents models download NAME`"
            )
        read_gguf_info(path)  # raises a one-line ModelFileError when it is not a usable GGUF
        return name
    return load_registry(settings).get(name).name


def _scalar(value: str) -> str:
    if _PLAIN.fullmatch(value) and value.lower() not in _YAML_SPECIAL and not _is_number(value):
        return value
    return json.dumps(value)  # a JSON string is a valid double-quoted YAML scalar


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _edit_lines(text: str, key: str, value: str) -> str | None:
    """Replace or insert ``key`` under the top-level ``llm:`` block; None when the layout is unusual."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start = next((i for i, line in enumerate(lines) if _is_top(line, "llm")), None)
    scalar = _scalar(value)
    if start is None:
        return "".join(lines) + f"llm:\n  {key}: {scalar}\n"
    rest = _TOP_KEY.match(lines[start].rstrip("\n"))
    if rest and rest.group("rest").split("#")[0].strip():
        return None  # flow style or inline value
    end = next((i for i in range(start + 1, len(lines)) if _is_top_level(lines[i])), len(lines))
    indent = None
    pattern = re.compile(
        rf"^(?P<indent>[ \t]+){re.escape(key)}\s*:(?P<value>[^#\n]*?)(?P<comment>\s+#.*)?\n?$"
    )
    for i in range(start + 1, end):
        match = pattern.match(lines[i])
        if match:
            comment = match.group("comment") or ""
            lines[i] = f"{match.group('indent')}{key}: {scalar}{comment}\n"
            return "".join(lines)
        if indent is None and lines[i].strip() and not lines[i].lstrip().startswith("#"):
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines.insert(start + 1, f"{indent or '  '}{key}: {scalar}\n")
    return "".join(lines)


def _is_top(line: str, key: str) -> bool:
    match = _TOP_KEY.match(line.rstrip("\n"))
    return bool(match and match.group("key") == key)


def _is_top_level(line: str) -> bool:
    return bool(line.strip()) and not line[0].isspace() and not line.startswith("#")


def _llm_value(text: str, key: str) -> Any:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return None
    llm = data.get("llm") if isinstance(data, dict) else None
    return llm.get(key) if isinstance(llm, dict) else None
