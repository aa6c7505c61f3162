#!/usr/bin/env python3
"""Load the configured primary (Mixtral) and run the whole desk for one decision.

Prints the llama.cpp backend, how many layers are offloaded to the GPU, and the tokens per
second of that decision. When the Mixtral file is not downloaded the embedded model serves,
and the script says so. The decision is a one-bar agents backtest on the bundled GOOG bars
(`trading-agents backtest -s agents`), with no response cache, in a temporary folder.

Exit codes are the CLI's (0 ok, 2 bad input or model file, 3 model failure).

Example: python scripts/test_mixtral_integration.py
Example: TRADING_AGENTS_LLM__N_GPU_LAYERS=-1 python scripts/test_mixtral_integration.py --json
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

from trading_agents.cli.app import main as cli
from trading_agents.config.settings import load_settings
from trading_agents.market import load_bars
from trading_agents.model_files.registry import resolve_or_embedded
from trading_agents.model_files.verify import verify_model

PRIMARY = "mixtral-8x7b-instruct"


def run(as_json: bool) -> int:
    settings = load_settings()
    model, note = resolve_or_embedded(PRIMARY, settings)
    if note:
        print(f"note: {note}; testing the integration with it instead", file=sys.stderr)
    report = verify_model(model.name if model.entry is not None else str(model.path), settings)
    offload = report.offload
    dates = load_bars(tickers=["GOOG"])["GOOG"].index[-2:]  # one decision, filled on the next bar
    with tempfile.TemporaryDirectory() as out:
        args = ["backtest", "-s", "agents", "--no-cache", "--no-baselines", "--json"]
        args += ["--start", str(dates[0].date()), "--end", str(dates[-1].date())]
        args += ["--out", str(Path(out) / "r")]
        buffer = io.StringIO()
        try:
            with redirect_stdout(buffer):
                cli(args)
        except SystemExit as exc:
            if exc.code:
                sys.stdout.write(buffer.getvalue())
                return int(exc.code)
    meta = json.loads(buffer.getvalue())["meta"]
    llm = meta["llm"]
    elapsed = float(meta["elapsed_s"])
    tokens = llm["prompt_tokens"] + llm["completion_tokens"]
    result = {
        "model": model.name,
        "mixtral": model.name == PRIMARY,
        "backend": report.backend,
        "offloaded_layers": offload.offloaded_layers if offload else 0,
        "total_layers": offload.total_layers if offload else None,
        "llm_calls": llm["calls"],
        "prompt_tokens": llm["prompt_tokens"],
        "completion_tokens": llm["completion_tokens"],
        "decision_s": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1) if elapsed else None,
        "completion_tokens_per_s": round(llm["completion_tokens"] / elapsed, 1) if elapsed else None,
        "failed_steps": llm["failed_steps"],
    }
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        layers = f"{result['offloaded_layers']}/{result['total_layers']}"
        print(f"model: {result['model']}{'' if result['mixtral'] else ' (Mixtral not downloaded)'}")
        print(f"backend: {result['backend']}, layers on the GPU: {layers}")
        print(
            f"one decision: {result['llm_calls']} LLM calls, {result['prompt_tokens']} prompt +"
            f" {result['completion_tokens']} completion tokens in {result['decision_s']} s"
            f" ({result['tokens_per_s']} tokens/s, {result['completion_tokens_per_s']} completion tokens/s)"
        )
    return 0 if llm["calls"] and not llm["failed_steps"] else 3


if __name__ == "__main__":
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    unknown = [a for a in sys.argv[1:] if a != "--json"]
    if unknown:
        print(f"error: unknown argument {unknown[0]}; the only option is --json", file=sys.stderr)
        sys.exit(2)
    sys.exit(run("--json" in sys.argv[1:]))
