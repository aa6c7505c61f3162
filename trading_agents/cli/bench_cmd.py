"""``trading-agents bench``: measured speed and memory figures, written as JSON.

Each benchmark writes ``<out>/<name>.json``; ``bench all`` also writes ``<out>/summary.json``
with the machine's description. Figures, not asserts: the tests never time anything.
"""

from __future__ import annotations

import importlib
import json
import platform
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from trading_agents.cli.common import console, emit_json, err_console
from trading_agents.errors import UserInputError
from trading_agents.fsutil import atomic_write_json

BENCHES = {
    "llm": "trading_agents.bench.llm",
    "session": "trading_agents.bench.session",
    "selector": "trading_agents.bench.selector",
    "backtest": "trading_agents.bench.backtest",
    "grid": "trading_agents.bench.grid",
    "serve": "trading_agents.bench.serve",
    "contention": "trading_agents.bench.contention",
    "dashboard": "trading_agents.bench.dashboard",
    "engines": "trading_agents.bench.engines",
    "quality": "trading_agents.bench.quality",
}

app = typer.Typer(
    no_args_is_help=True,
    help=(
        "Benchmarks: llm, session, selector, backtest, grid, serve, contention, dashboard, engines,"
        " quality, or all"
        " (JSON files under --out)."
    ),
)

OutOption = Annotated[Path, typer.Option("--out", "-o", help="Folder for the JSON results.")]
QuickOption = Annotated[
    bool, typer.Option("--quick", help="Fewer repetitions and bars (about a minute each).")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Also print the results as JSON on stdout.")]


def machine() -> dict[str, Any]:
    import psutil

    from utils.llm_integration.loaded_model import physical_cores

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "physical_cores": physical_cores(),
        "logical_cores": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
    }


def _run_one(name: str, out: Path, quick: bool, **options: Any) -> dict[str, Any]:
    err_console.print(f"[cyan]bench {name}[/] ...")
    module = importlib.import_module(BENCHES[name])
    started = time.perf_counter()
    result = module.run(out, quick=quick, **options)
    result = {"bench": name, "quick": quick, "wall_s": round(time.perf_counter() - started, 2), **result}
    atomic_write_json(out / f"{name}.json", result)
    err_console.print(f"[green]bench {name}[/] -> {out / f'{name}.json'} ({result['wall_s']} s)")
    return result


def _command(name: str) -> Any:
    def command(
        out: OutOption = Path("bench-results"), quick: QuickOption = False, json_out: JsonFlag = False
    ) -> None:
        result = _run_one(name, out, quick)
        if json_out:
            emit_json(result)
        else:
            console.print_json(json.dumps(result, default=str))

    command.__doc__ = (
        f"Run the {name} benchmark.\n\nExample: trading-agents bench {name} --quick --out bench-results"
    )
    return command


for _name in BENCHES:
    if _name not in ("llm", "quality"):
        app.command(_name)(_command(_name))


@app.command("llm")
def bench_llm(
    out: OutOption = Path("bench-results"),
    quick: QuickOption = False,
    json_out: JsonFlag = False,
    model: Annotated[
        Path | None, typer.Option("--model", help="A GGUF file to measure instead of the embedded model.")
    ] = None,
) -> None:
    """Run the llm benchmark: prompt and generation speed against memory bandwidth.

    Threads and GPU offload come from the llm settings.

    Example: trading-agents bench llm --quick --out bench-results
    Example: TRADING_AGENTS_LLM__N_GPU_LAYERS=-1 trading-agents bench llm --model big.gguf
    """
    if model is not None and not model.is_file():
        raise UserInputError(f"--model {model} is not a file; give a .gguf model file")
    result = _run_one("llm", out, quick, **({"model": model} if model is not None else {}))
    if json_out:
        emit_json(result)
    else:
        console.print_json(json.dumps(result, default=str))


@app.command("quality")
def bench_quality(
    out: OutOption = Path("bench-results"),
    quick: QuickOption = False,
    json_out: JsonFlag = False,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models",
            help="Registry names or GGUF files in the models folder, repeated or comma-separated"
            " (default: embedded).",
        ),
    ] = None,
) -> None:
    """Run the quality benchmark: what each model's desk decides on fixed up, down and mixed
    windows per instrument, against the desk's own rule, the track record and the grid's
    leaderboard (buy-and-hold, SMA, MACD, RSI). Writes quality.json.

    --quick: GOOG, 3 windows of 5 bars. Full: GOOG, AAPL, IBM, MSFT, FB x 3 windows x 20 bars.

    Example: trading-agents bench quality --quick --json

    Example: trading-agents bench quality --models embedded,qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
    """
    names = [m.strip() for item in models or () for m in item.split(",") if m.strip()]
    options = {"models": names, "on_progress": lambda line: err_console.print(f"  {line}")}
    result = _run_one("quality", out, quick, **options)
    if json_out:
        emit_json(result)
    else:
        console.print_json(json.dumps(result, default=str))


@app.command("all")
def bench_all(
    out: OutOption = Path("bench-results"), quick: QuickOption = False, json_out: JsonFlag = False
) -> None:
    """Run every benchmark and write summary.json.

    Example: trading-agents bench all --out bench-results
    """
    results = {"machine": machine()}
    for name in BENCHES:
        results[name] = _run_one(name, out, quick)
    atomic_write_json(out / "summary.json", results)
    if json_out:
        emit_json(results)
    else:
        console.print(f"wrote {out / 'summary.json'}")
