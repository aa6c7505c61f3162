#!/usr/bin/env python3
"""Soak the agent desk: a long paper session on the embedded model, watched for leaks.

Runs ``--decisions N`` consecutive bars of bundled GOOG through the real session engine (file
ledger, analyst -> risk -> executor on llama.cpp) and prints one JSON report:

* ``invalid_decisions``: bars where the desk failed closed (truncated or invalid reply, model
  error); the target is zero;
* ``rss_growth_pct``: resident memory growth from the end of the warm-up to the end (psutil);
  the target is under 5%;
* ``fd_growth``: open file descriptors at the end minus after the warm-up; the target is zero;
* ``reconcile``: ``Ledger.reconcile`` problems of the session (target: none).

Example::

    python scripts/soak.py --decisions 1000 --out soak.json    # about 2.2 hours on a 2-core CPU
    python scripts/soak.py --decisions 30                      # a few minutes
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _usage() -> tuple[int, int]:
    import psutil

    gc.collect()
    proc = psutil.Process()
    return proc.memory_info().rss, proc.num_fds()


def run_soak(
    decisions: int,
    *,
    workdir: Path,
    warmup: int | None = None,
    max_tokens: int = 512,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run ``decisions`` session bars and return the report (see the module docstring)."""

    from trading_agents.config.settings import load_settings
    from trading_agents.market import load_bars
    from trading_agents.session import run_session

    if decisions < 2:
        raise SystemExit("--decisions must be at least 2")
    warmup = warmup if warmup is not None else max(3, min(50, decisions // 10))
    warmup = min(warmup, decisions - 1)
    os.environ["TRADING_AGENTS_HOME"] = str(workdir)
    settings = load_settings(
        None,
        {
            "llm.primary": "smollm2-135m-instruct",
            "llm.max_tokens": max_tokens,
            "llm.n_threads": threads,
        },
    )
    settings.llm.fallback = None
    bars = load_bars(tickers=["GOOG"])
    dates = bars["GOOG"].index
    if decisions > len(dates) - 60:
        raise SystemExit(f"--decisions at most {len(dates) - 60} (bundled GOOG bars after 60 of history)")
    start, end = dates[-decisions], dates[-1]

    samples: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    state = {"n": 0, "began": time.monotonic()}
    baseline: dict[str, int] = {}

    def on_step(event: Any) -> None:
        state["n"] += 1
        record = (event.decision.record or {}).get("tickers", {}) if event.decision else {}
        for ticker, rec in record.items():
            errors = [a.get("error") for a in rec.get("agents", []) if a.get("error")]
            if rec.get("error") or errors:
                invalid.append(
                    {
                        "date": str(event.bar_date)[:10],
                        "ticker": ticker,
                        "error": rec.get("error") or errors[0],
                    }
                )
        if state["n"] == warmup or state["n"] == decisions or state["n"] % 25 == 0:
            rss, fds = _usage()
            if state["n"] == warmup:
                baseline.update(rss=rss, fds=fds)
            samples.append({"decision": state["n"], "rss_mb": round(rss / 2**20, 2), "fds": fds,
                            "elapsed_s": round(time.monotonic() - state["began"], 1)})  # fmt: skip

    outcome = run_session(settings, bars, start, end, account="soak", on_step=on_step)  # <home>/ledger.sqlite
    result, problems, stats = outcome.result, outcome.problems, outcome.strategy.llm_stats()
    rss, fds = _usage()
    wall = time.monotonic() - state["began"]
    return {
        "decisions": state["n"],
        "warmup": warmup,
        "invalid_decisions": len(invalid),
        "invalid_examples": invalid[:5],
        "rss_after_warmup_mb": round(baseline["rss"] / 2**20, 2),
        "rss_end_mb": round(rss / 2**20, 2),
        "rss_growth_pct": round(100 * (rss - baseline["rss"]) / baseline["rss"], 2),
        "fds_after_warmup": baseline["fds"],
        "fds_end": fds,
        "fd_growth": fds - baseline["fds"],
        "orders": len(result.orders),
        "fills": len(result.fills),
        "reconcile": problems,
        "llm_calls": stats["calls"],
        "completion_tokens": stats["completion_tokens"],
        "wall_s": round(wall, 1),
        "s_per_decision": round(wall / max(1, state["n"]), 2),
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=1000, help="session bars to decide (default 1000)")
    parser.add_argument("--warmup", type=int, default=None, help="decisions before the baseline sample")
    parser.add_argument("--max-tokens", type=int, default=512, help="llm.max_tokens (default 512)")
    parser.add_argument("--threads", type=int, default=None, help="llm.n_threads (default: auto, measured)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        report = run_soak(
            args.decisions,
            workdir=Path(tmp),
            warmup=args.warmup,
            max_tokens=args.max_tokens,
            threads=args.threads,
        )
    text = json.dumps(report, indent=2)
    if args.out:
        from trading_agents.fsutil import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)
    ok = (
        report["invalid_decisions"] == 0
        and report["rss_growth_pct"] < 5.0
        and report["fd_growth"] <= 0
        and not report["reconcile"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
