"""``bench contention``: what sessions running at the same time on one machine cost each other.

The same paper session (the desk on the embedded model over the last bundled GOOG bars, 6 of
them, or 2 with ``--quick``) runs alone, then as 2 and as 3 concurrent processes. Each
process loads its model and warms it up, then waits for the others; all are started together
and each times its own session. ``slowdown_2`` and ``slowdown_3`` are the mean session wall time
among 2 (3) concurrent ones over the wall time of one alone. ``threads`` is each session's
llama.cpp thread count (``llm.n_threads``, ``auto`` unless ``threads`` is given) and
``wait_policy`` the OpenMP wait policy the processes ran with (set by the LLM layer unless the
environment says otherwise). Sessions decide greedily, so every process makes the same decisions.
``before`` repeats 1 and 2 sessions the way they ran before (one thread per physical core,
libgomp's default spin-wait) in the same run, as the baseline; ``one_thread`` repeats them
with every batch on one thread. A lone session evaluates long prompts on two threads, which
two sessions on two cores cannot both do, so ``slowdown_2`` also measures what the lone
session gains from the second core; ``one_thread`` separates the two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

READY = "ready"


def _child(days: int, home: str, threads: str) -> None:
    """One session process: load, warm up, say ready, wait for go, run, print the figures."""
    from trading_agents.agents.desk_strategy import build_agent_strategy
    from trading_agents.config.settings import load_settings
    from trading_agents.journal import MemoryJournal
    from trading_agents.market import load_bars
    from trading_agents.session import run_session
    from utils.llm_integration.runtime import wait_policy_state
    from utils.llm_integration.spec import SamplingParams

    overrides: dict[str, Any] = {
        "paths.home": home,
        "llm.fallback": None,
        "llm.n_threads": threads if threads == "auto" else int(threads),
    }
    settings = load_settings(overrides=overrides)
    bars = load_bars(tickers=["GOOG"])
    dates = bars["GOOG"].index[-days:]
    strategy = build_agent_strategy(settings, use_cache=False, stream=False)
    strategy.desk.preload()
    llm = strategy.desk.clients["analyst"].llm  # type: ignore[attr-defined]
    llm.complete([{"role": "user", "content": "Reply OK."}], sampling=SamplingParams(max_tokens=4))
    print(READY, flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    run_session(settings, bars, dates[0], dates[-1], journal=MemoryJournal(), strategy=strategy)
    wall = time.perf_counter() - started
    actions = [o.analyst.action if o.analyst is not None else None for o in strategy.outcomes]
    strategy.close()
    print(
        json.dumps(
            {
                "wall_s": round(wall, 3),
                "threads": llm.n_threads,
                "decisions": len(actions),
                "actions": actions,
                **wait_policy_state(),
            }
        ),
        flush=True,
    )


def run_concurrent(
    n: int, days: int, home: Path, threads: str = "auto", env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Start ``n`` session processes, release them together, and return each one's figures."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "trading_agents.bench.contention", str(days), str(home), threads],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(n)
    ]
    try:
        for p in procs:
            line = p.stdout.readline() if p.stdout else ""
            if line.strip() != READY:
                raise RuntimeError(f"a session process did not start: {p.stderr.read() if p.stderr else ''}")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=1800)
            if p.returncode != 0:
                raise RuntimeError(f"a session process failed ({p.returncode}): {err.strip()[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    from utils.llm_integration.loaded_model import physical_cores

    days = 2 if quick else 6
    with tempfile.TemporaryDirectory() as home:
        # the thread count is measured once (n_threads: auto) before anything is timed
        run_concurrent(1, 1, Path(home))
        levels = {n: run_concurrent(n, days, Path(home)) for n in (1, 2, 3)}
        # the baseline in the same run: what a session did before, one thread per physical core
        # and libgomp's default spin-wait (an empty OMP_WAIT_POLICY is the library default)
        spin = {"OMP_WAIT_POLICY": ""}
        cores = str(physical_cores())
        before = {n: run_concurrent(n, days, Path(home), cores, spin) for n in (1, 2)}
        # every batch on one thread: what a session alone gives up for not sharing its cores
        single = {n: run_concurrent(n, days, Path(home), "1") for n in (1, 2)}

    def mean_wall(rs: list[dict[str, Any]]) -> float:
        return sum(r["wall_s"] for r in rs) / len(rs)

    alone = levels[1][0]["wall_s"]
    same = all(r["actions"] == levels[1][0]["actions"] for rs in levels.values() for r in rs)
    return {
        "model": "smollm2-135m-instruct",
        "days": days,
        "threads": [r["threads"] for r in levels[1]],
        "threads_by_level": {str(n): [r["threads"] for r in rs] for n, rs in levels.items()},
        "wait_policy": levels[1][0].get("omp_wait_policy"),
        "session_wall_s": {str(n): [r["wall_s"] for r in rs] for n, rs in levels.items()},
        "slowdown_2": round(mean_wall(levels[2]) / alone, 3),
        "slowdown_3": round(mean_wall(levels[3]) / alone, 3),
        "slowdown_2_target": 1.3,
        # throughput: sessions finished per second with n at once, over one alone
        "throughput_ratio_2": round(2 * alone / max(r["wall_s"] for r in levels[2]), 3),
        "throughput_ratio_3": round(3 * alone / max(r["wall_s"] for r in levels[3]), 3),
        "same_decisions": same,
        "before": {
            "threads": int(cores),
            "wait_policy": "libgomp default (spin)",
            "session_wall_s": {str(n): [r["wall_s"] for r in rs] for n, rs in before.items()},
            "slowdown_2": round(mean_wall(before[2]) / before[1][0]["wall_s"], 3),
            "mean_wall_2_over_new_alone": round(mean_wall(before[2]) / alone, 3),
        },
        "one_thread": {
            "session_wall_s": {str(n): [r["wall_s"] for r in rs] for n, rs in single.items()},
            "slowdown_2": round(mean_wall(single[2]) / single[1][0]["wall_s"], 3),
            # a session among 2 (auto threads) over one alone on one thread: what sharing costs
            # once the lone session's second core for prompts is set aside
            "auto_2_over_one_thread_alone": round(mean_wall(levels[2]) / single[1][0]["wall_s"], 3),
        },
        "cpu_count": os.cpu_count(),
    }


if __name__ == "__main__":
    _child(int(sys.argv[1]), sys.argv[2], sys.argv[3])
