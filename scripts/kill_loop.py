#!/usr/bin/env python3
"""Crash a paper session and a backtest with SIGKILL at random moments, restart them, and check
that nothing was lost or doubled.

Session loop: the session engine (``kind="session"``, decide on the last bar, no closing at the
end) runs in a child process on a file ledger with the seeded ``random`` strategy over bundled
GOOG bars, sleeping a few milliseconds per decision to widen the window between commits. The
child is killed at a random time, restarted, killed again... until it finishes. Then: client
order ids are unique, every filled order has exactly one fill, ``Ledger.reconcile`` is clean,
and orders, fills, steps, cash and positions equal those of an uninterrupted reference run.

Backtest loop: ``trading-agents backtest --strategy random`` is killed at random moments while
writing into one results folder; after each kill every visible file in the folder must be
complete and the run lock free; a final rerun must equal an uninterrupted run (summary metrics
and trades.csv). A kill between a temporary file's creation and its rename can leave that
hidden ``.<name>.<random>.tmp`` file behind (SIGKILL allows no cleanup); results never read
dot-files, so it is counted and reported, not hidden.

Run ``python scripts/kill_loop.py --kills 50`` for a JSON report; ``tests/test_kill_loops.py``
calls :func:`session_kill_loop` and :func:`backtest_kill_loop`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SESSION_START, SESSION_END = "2012-03-01", "2013-02-28"
RESULT_FILES = (
    "summary.json",
    "trades.csv",
    "equity.csv",
    "decisions.jsonl",
    "rejected_orders.csv",
    "report.html",
    "ledger.sqlite",
)


# -- the session child ------------------------------------------------------------------------------


def session_child(ledger_path: str, seed: int, sleep_ms: float, start: str, end: str) -> None:
    """Run (or resume) the paper session engine to the end of the window; exit 0 when done."""
    import pandas as pd

    from trading_agents.backtest.baselines import make_baseline
    from trading_agents.core import EngineConfig, run_engine
    from trading_agents.journal import Ledger
    from trading_agents.market import load_bars

    inner = make_baseline("random", seed=seed, p_trade=0.3)

    class Slow:
        name = inner.name  # type: ignore[attr-defined]

        def decide(self, ctx: Any) -> Any:
            time.sleep(sleep_ms / 1000)
            return inner.decide(ctx)

    bars = load_bars(tickers=["GOOG"])
    config = EngineConfig(decide_on_last_bar=True, close_at_end=False)
    with Ledger.open(ledger_path) as ledger:
        run_engine(
            bars,
            Slow(),  # type: ignore[arg-type]
            config,
            ledger,
            "paper",
            kind="session",
            start=pd.Timestamp(start),
            end=pd.Timestamp(end),
        )


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _session_cmd(ledger: Path, seed: int, sleep_ms: float, start: str, end: str) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "session-child",
        str(ledger),
        str(seed),
        str(sleep_ms),
        start,
        end,
    ]


def ledger_snapshot(path: Path, run_id: str = "paper") -> dict[str, Any]:
    """Orders, fills, steps, cash and positions of ``run_id``, without wall-clock fields."""
    from trading_agents.journal import Ledger

    with Ledger.open(path) as ledger:
        orders = [
            {k: v for k, v in o.as_dict().items() if k not in ("updated_at",)} for o in ledger.orders(run_id)
        ]
        fills = [f.as_dict() for f in ledger.fills(run_id)]
        steps = [
            {"bar_date": str(s["bar_date"])[:10], "equity": s["equity"], "cash": s["cash"]}
            for s in ledger.steps(run_id)
        ]
        acct = ledger.account(run_id)
        positions = {t: (p.quantity, p.avg_price) for t, p in ledger.positions(run_id).items()}
        problems = ledger.reconcile(run_id)
    return {
        "orders": orders,
        "fills": fills,
        "steps": steps,
        "cash": acct.cash if acct else None,
        "risk_state": acct.risk_state if acct else None,
        "positions": positions,
        "reconcile": problems,
    }


def check_session_invariants(snap: dict[str, Any]) -> list[str]:
    """Problems that must never exist in a ledger, killed or not."""
    problems = list(snap["reconcile"])
    ids = [o["client_order_id"] for o in snap["orders"]]
    if len(ids) != len(set(ids)):
        problems.append(f"duplicated client order ids: {len(ids) - len(set(ids))}")
    fills_per_order: dict[str, int] = {}
    for f in snap["fills"]:
        fills_per_order[f["order_id"]] = fills_per_order.get(f["order_id"], 0) + 1
    for o in snap["orders"]:
        n = fills_per_order.get(o["client_order_id"], 0)
        if o["status"] == "filled" and n != 1:
            problems.append(f"order {o['client_order_id']} is filled with {n} fills")
        if o["status"] != "filled" and n:
            problems.append(f"order {o['client_order_id']} is {o['status']} but has {n} fills")
    orphans = set(fills_per_order) - set(ids)
    if orphans:
        problems.append(f"fills without an order: {sorted(orphans)[:3]}")
    dates = [s["bar_date"] for s in snap["steps"]]
    if len(dates) != len(set(dates)):
        problems.append("a bar was committed twice")
    return problems


def session_kill_loop(
    workdir: Path,
    kills: int,
    *,
    seed: int = 11,
    rng_seed: int = 1,
    sleep_ms: float = 4.0,
    start: str = SESSION_START,
    end: str = SESSION_END,
) -> dict[str, Any]:
    """Kill the session ``kills`` times at random moments; return counts and what differs."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = _child_env()
    reference = workdir / "reference.sqlite"
    began = time.monotonic()
    subprocess.run(_session_cmd(reference, seed, sleep_ms, start, end), env=env, check=True, timeout=600)
    full_s = time.monotonic() - began
    expected = ledger_snapshot(reference)

    rng = random.Random(rng_seed)
    totals = {"kills": 0, "starts": 0, "kills_after_progress": 0, "rounds": 0}
    reports: list[dict[str, Any]] = []
    while totals["kills"] < kills:  # a round ends when the session finishes; the next starts afresh
        totals["rounds"] += 1
        ledger = workdir / f"killed-{totals['rounds']}.sqlite"
        last_steps = 0
        while True:
            proc = subprocess.Popen(
                _session_cmd(ledger, seed, sleep_ms, start, end),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            totals["starts"] += 1
            if totals["kills"] < kills and _alive_after(proc, rng.uniform(0.05, full_s)):
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
                totals["kills"] += 1
                steps = _step_count(ledger)
                totals["kills_after_progress"] += steps > last_steps
                last_steps = steps
                if ledger.exists():
                    bad = check_session_invariants(ledger_snapshot(ledger))
                    if bad:
                        return _session_report(totals, expected, ledger_snapshot(ledger), bad)
                continue
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"session child failed ({proc.returncode}): {err.decode()[-2000:]}")
            break
        final = ledger_snapshot(ledger)
        reports.append(_session_report(totals, expected, final, check_session_invariants(final)))
    merged = dict(reports[-1])
    merged["problems"] = [p for r in reports for p in r["problems"]]
    merged["differences"] = sorted({d for r in reports for d in r["differences"]})
    merged["lost_fills"] = sum(r["lost_fills"] for r in reports)
    merged["duplicated_orders"] = sum(r["duplicated_orders"] for r in reports)
    return merged


def _alive_after(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``proc``; True when it is still running then."""
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


def _step_count(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    try:
        with closing(sqlite3.connect(ledger, timeout=10)) as db:
            return int(db.execute("SELECT COUNT(*) FROM steps").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _session_report(
    totals: dict[str, int], expected: dict[str, Any], got: dict[str, Any], bad: list[str]
) -> dict[str, Any]:
    differences = [
        key
        for key in ("orders", "fills", "steps", "cash", "positions", "risk_state")
        if expected[key] != got[key]
    ]
    return {
        **totals,
        "orders": len(got["orders"]),
        "fills": len(got["fills"]),
        "steps": len(got["steps"]),
        "expected_steps": len(expected["steps"]),
        "problems": bad,
        "differences": differences,
        "lost_fills": max(0, len(expected["fills"]) - len(got["fills"])),
        "duplicated_orders": len(got["orders"]) - len({o["client_order_id"] for o in got["orders"]}),
    }


# -- the backtest loop ------------------------------------------------------------------------------


def _backtest_cmd(out: Path, seed: int, home: Path, start: str | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trading_agents.cli.app",
        "backtest",
        "--strategy",
        "random",
        "--seed",
        str(seed),
        "--ticker",
        "GOOG",
        "--out",
        str(out),
        "--lock-file",
        str(home / "backtest.lock"),
        "--json",
        *(["--start", start] if start else []),
    ]


def check_results_folder(out: Path) -> tuple[list[str], list[str]]:
    """(problems with visible files, hidden temporary files left behind) in a results folder."""
    problems: list[str] = []
    if not out.exists():
        return problems, []
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    for path in out.iterdir():
        if path.name.startswith("."):
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".jsonl":
                for line in path.read_text().splitlines():
                    json.loads(line)
            elif path.suffix == ".csv":
                import pandas as pd

                pd.read_csv(path)
            elif path.suffix == ".html":
                if not path.read_text().rstrip().endswith("</html>"):
                    problems.append(f"{path.name} is cut short")
            elif path.suffix == ".sqlite":
                with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                    if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                        problems.append(f"{path.name} fails its integrity check")
            else:
                problems.append(f"unexpected file {path.name}")
        except Exception as exc:  # a partial file is exactly what this looks for
            problems.append(f"{path.name}: {type(exc).__name__}: {exc}")
    return problems, leftovers


def _lock_is_free(lock: Path) -> bool:
    from trading_agents.errors import LockBusyError
    from trading_agents.fsutil import exclusive_lock

    try:
        with exclusive_lock(lock):
            return True
    except LockBusyError:
        return False


def _comparable(out: Path) -> tuple[dict[str, Any], str]:
    summary = json.loads((out / "summary.json").read_text())
    metrics = {k: v for k, v in summary["metrics"].items() if "time" not in k.lower()}
    return metrics, (out / "trades.csv").read_text()


def backtest_kill_loop(
    workdir: Path, kills: int, *, seed: int = 5, rng_seed: int = 2, start: str | None = None
) -> dict[str, Any]:
    """Kill ``trading-agents backtest`` ``kills`` times at random moments; then finish it."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    env = _child_env() | {"TRADING_AGENTS_HOME": str(home)}
    reference = workdir / "reference"
    began = time.monotonic()
    subprocess.run(
        _backtest_cmd(reference, seed, home, start), env=env, check=True, timeout=600, capture_output=True
    )
    full_s = time.monotonic() - began
    expected = _comparable(reference)

    out = workdir / "killed"
    rng = random.Random(rng_seed)
    killed = 0
    problems: list[str] = []
    leftovers: set[str] = set()
    while killed < kills:
        proc = subprocess.Popen(
            _backtest_cmd(out, seed, home, start),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()
        if _alive_after(proc, rng.uniform(0.05, full_s * 1.1)):
            proc.send_signal(signal.SIGKILL)
            killed += 1
        elif proc.returncode == 0:  # finished first: aim the next kills inside the real duration
            full_s = min(full_s, time.monotonic() - started)
        proc.wait(timeout=120)
        bad, left = check_results_folder(out)
        problems += [f"after kill {killed}: {b}" for b in bad]
        leftovers.update(left)
        if not _lock_is_free(home / "backtest.lock"):
            problems.append(f"after kill {killed}: the lock is still held")
    done = subprocess.run(_backtest_cmd(out, seed, home, start), env=env, capture_output=True, timeout=600)
    if done.returncode != 0:
        problems.append(f"rerun failed ({done.returncode}): {done.stderr.decode()[-500:]}")
        return {
            "kills": killed,
            "problems": problems,
            "identical": False,
            "hidden_tmp_files": sorted(leftovers),
        }
    bad, left = check_results_folder(out)
    problems += bad
    leftovers.update(left)
    missing = [name for name in RESULT_FILES if not (out / name).is_file()]
    problems += [f"missing {name} after the rerun" for name in missing]
    return {
        "kills": killed,
        "problems": problems,
        "identical": _comparable(out) == expected,
        "hidden_tmp_files": sorted(leftovers),
        "hidden_tmp_files_now": left,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    child = sub.add_parser("session-child")
    child.add_argument("ledger")
    child.add_argument("seed", type=int)
    child.add_argument("sleep_ms", type=float)
    child.add_argument("start")
    child.add_argument("end")
    parser.add_argument("--kills", type=int, default=50, help="kills per loop (default 50)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    if args.cmd == "session-child":
        session_child(args.ledger, args.seed, args.sleep_ms, args.start, args.end)
        return 0
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kill-loop-") as tmp:
        work = args.workdir or Path(tmp)
        report = {
            "session": session_kill_loop(work / "session", args.kills),
            "backtest": backtest_kill_loop(work / "backtest", args.kills),
        }
    print(json.dumps(report, indent=2))
    ok = not report["session"]["problems"] and not report["session"]["differences"]
    ok = ok and not report["backtest"]["problems"] and report["backtest"]["identical"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
