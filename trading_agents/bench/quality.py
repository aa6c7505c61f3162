"""``trading-agents bench quality``: is the desk worth its cost? Decision quality per model.

For each instrument the data picks three fixed windows of ``bars`` bars (:func:`choose_windows`):
the *up* window (largest close-to-close return), the *down* window (smallest) and the *mixed*
window (the smallest absolute return of the rest), among back-to-back windows over the last two
years of bars that have 60 bars of history before them (so SMA50 and MACD are defined). Each
model's desk runs on every window through the grid (:func:`~trading_agents.grid.run.run_grid`,
one grid per instrument, beside buy-and-hold, SMA cross, MACD and RSI on the same cells); the
leaderboard is the grid's own (:func:`trading_agents.grid.leaderboard.build`) over all cells.

From the agent cells' ``decisions.jsonl`` per model:

``actions``
    The analyst's actions (``INVALID``: no analyst reply).
``rule_agreement``
    The share of analyst actions whose effect agrees with the desk's stated rule on the
    snapshot's ``Signals:`` line: BUY when trend and momentum are up, SELL when both are down,
    HOLD otherwise; a SELL with no shares held counts as HOLD (:func:`rule_action`).
``trend_following_gap``
    The share of BUY on ``trend up`` days minus the share on ``trend down`` days (reported only:
    it mixes the trend with the position).
``hit_rate``, ``per_action``
    The track record's hit rate and mean realised move per action
    (:func:`~trading_agents.agents.track_record.action_stats`).
``invalid_decisions``, ``failed_steps``
    Decisions without a complete analyst, risk and executor reply; agent steps that failed.
``malformed_text_share``, ``degenerate_reply_share``
    :mod:`trading_agents.agents.replies` over every reply.
``evaluated_prompt_tokens_per_decision``
    Prompt tokens not found in the KV cache, per decision, each cell's first decision left out
    (it evaluates the static desk rules once); ``..._first`` is that first decision.
``decision_median_s``, ``role_median_s``
    Median wall time of a decision and of each agent's turn.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

INSTRUMENTS = ("GOOG", "AAPL", "IBM", "MSFT", "FB")
QUICK_INSTRUMENTS = ("GOOG",)
BARS, QUICK_BARS = 20, 5
HISTORY_BARS = 60  # before a window: SMA50 and MACD defined on its first decision
LOOKBACK_BARS = 504  # windows are chosen among the last two years of bars
BASELINES = ("sma-cross", "macd", "rsi", "buy-hold")
DEFAULT_MODELS = ("embedded",)
_SIGNALS = re.compile(r"Signals: trend (up|down|mixed), momentum (up|down)")
_HELD = re.compile(r"shares held (\d+)")


@dataclass(frozen=True)
class Window:
    """A window of an instrument picked by :func:`choose_windows`."""

    ticker: str
    kind: str  # up | down | mixed
    start: str
    end: str
    bars: int
    return_pct: float

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__}


def choose_windows(
    ticker: str, closes: pd.Series, bars: int, *, history: int = HISTORY_BARS, lookback: int = LOOKBACK_BARS
) -> list[Window]:
    """The up, down and mixed windows of ``bars`` bars of ``closes`` (a date-indexed series).

    Candidates are back-to-back windows ending at the last bar, over the last ``lookback`` bars
    that have ``history`` bars before them. The return of a window is from its first close to
    its last. Raises ``ValueError`` when fewer than three candidates fit.
    """
    closes = closes.dropna()
    first = max(history, len(closes) - lookback)
    ends = list(range(len(closes) - 1, first + bars - 2, -bars))
    candidates = []
    for end in ends:
        start = end - bars + 1
        ret = (float(closes.iloc[end]) / float(closes.iloc[start]) - 1.0) * 100.0
        candidates.append((start, end, round(ret, 4)))
    if len(candidates) < 3:
        raise ValueError(
            f"{ticker}: {len(closes)} bars give {len(candidates)} windows of {bars} bars after "
            f"{history} bars of history; need 3"
        )
    up = max(candidates, key=lambda c: (c[2], c[0]))
    down = min(candidates, key=lambda c: (c[2], -c[0]))
    rest = [c for c in candidates if c not in (up, down)]
    mixed = min(rest, key=lambda c: (abs(c[2]), -c[0]))

    def window(kind: str, c: tuple[int, int, float]) -> Window:
        day = closes.index
        return Window(ticker, kind, day[c[0]].date().isoformat(), day[c[1]].date().isoformat(), bars, c[2])

    return [window("up", up), window("down", down), window("mixed", mixed)]


def read_signals(task: str) -> tuple[str, str] | None:
    """``(trend, momentum)`` from a task's ``Signals:`` line, or None without one."""
    match = _SIGNALS.search(task or "")
    return (match.group(1), match.group(2)) if match else None


def shares_held(task: str) -> int:
    match = _HELD.search(task or "")
    return int(match.group(1)) if match else 0


def effective_action(action: str, held: int) -> str:
    """What an action does: a SELL with no shares held is a HOLD (long-only desk)."""
    return "HOLD" if action == "SELL" and held <= 0 else action


def rule_action(trend: str, momentum: str, held: int) -> str:
    """The desk rule's action: BUY when trend and momentum are up, SELL when both are down
    (HOLD with no shares held), HOLD when they disagree (a mixed trend disagrees)."""
    if trend == "up" and momentum == "up":
        return "BUY"
    if trend == "down" and momentum == "down":
        return effective_action("SELL", held)
    return "HOLD"


@dataclass(frozen=True)
class Decision:
    """One desk decision read back from a cell's ``decisions.jsonl``."""

    date: str
    ticker: str
    task: str
    steps: tuple[Mapping[str, Any], ...]
    wall_s: float
    error: str | None
    first_of_cell: bool = False
    kind: str = ""  # the window's kind: up, down or mixed

    def output(self, role: str) -> Mapping[str, Any] | None:
        return next((s.get("output") for s in self.steps if s.get("role") == role), None)

    @property
    def action(self) -> str | None:
        out = self.output("analyst")
        return str(out["action"]) if out and out.get("action") else None

    @property
    def valid(self) -> bool:
        """No error, an analyst reply, and a valid reply from every agent that ran: risk runs only
        when the analyst proposes a trade and the executor only when risk lets it through, so a
        HOLD has the analyst's reply alone and is valid."""
        return (
            self.error is None
            and self.output("analyst") is not None
            and all(s.get("output") is not None for s in self.steps)
        )


def read_decisions(path: Path) -> tuple[list[Decision], list[dict[str, Any]]]:
    """The decisions of one agent cell and its raw rows (for the track record)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    out: list[Decision] = []
    for row in rows:
        for ticker, rec in ((row.get("record") or {}).get("tickers") or {}).items():
            if "agents" not in rec:
                continue
            out.append(
                Decision(
                    date=str(row.get("date"))[:10],
                    ticker=ticker,
                    task=rec.get("task") or "",
                    steps=tuple(rec.get("agents") or ()),
                    wall_s=float(rec.get("wall_s") or 0.0),
                    error=rec.get("error"),
                    first_of_cell=not out,
                )
            )
    return out, rows


def rule_agreement(decisions: Iterable[Decision]) -> float | None:
    """The share of analyst actions whose effect matches :func:`rule_action` (decisions with an
    analyst action and a ``Signals:`` line with a trend and a momentum)."""
    agree = total = 0
    for d in decisions:
        signals = read_signals(d.task)
        if d.action is None or signals is None:
            continue
        held = shares_held(d.task)
        total += 1
        agree += effective_action(d.action, held) == rule_action(*signals, held)
    return round(agree / total, 4) if total else None


def trend_following_gap(decisions: Iterable[Decision]) -> float | None:
    """Share of BUY on ``trend up`` days minus share of BUY on ``trend down`` days."""
    buys: dict[str, list[bool]] = {"up": [], "down": []}
    for d in decisions:
        signals = read_signals(d.task)
        if d.action is None or signals is None or signals[0] not in buys:
            continue
        buys[signals[0]].append(d.action == "BUY")
    if not buys["up"] or not buys["down"]:
        return None
    return round(sum(buys["up"]) / len(buys["up"]) - sum(buys["down"]) / len(buys["down"]), 4)


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def model_quality(decisions: list[Decision], rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Every per-model figure (see the module docstring) from its cells' decisions."""
    from trading_agents.agents.replies import degenerate_reasons, malformed_reasons
    from trading_agents.agents.track_record import action_stats

    steps = [s for d in decisions for s in d.steps]
    outputs = [s["output"] for s in steps if s.get("output") is not None]
    malformed = [
        (s["role"], why) for s in steps if s.get("output") and (why := malformed_reasons(s["output"]))
    ]
    degenerate = [s for s in outputs if degenerate_reasons(s)]
    actions = Counter(d.action or "INVALID" for d in decisions)

    def evaluated(d: Decision) -> int:
        return sum(int(s.get("prompt_tokens", 0)) - int(s.get("cached_prompt_tokens", 0)) for s in d.steps)

    steady = [evaluated(d) for d in decisions if not d.first_of_cell]
    first = [evaluated(d) for d in decisions if d.first_of_cell]
    per_action = action_stats(rows)
    realised = sum(v["realised"] for v in per_action.values())
    hits = sum(v["hits"] for v in per_action.values())
    roles: dict[str, list[float]] = {}
    for s in steps:
        if not s.get("from_response_cache"):
            roles.setdefault(str(s.get("role")), []).append(float(s.get("latency_s") or 0.0))
    n = len(decisions)
    return {
        "decisions": n,
        "actions": {a: actions.get(a, 0) for a in ("BUY", "SELL", "HOLD", "INVALID") if actions.get(a)},
        "rule_agreement": rule_agreement(decisions),
        "trend_following_gap": trend_following_gap(decisions),
        "hit_rate": round(hits / realised, 4) if realised else None,
        "per_action": per_action,
        "invalid_decisions": sum(1 for d in decisions if not d.valid),
        "failed_steps": sum(1 for s in steps if s.get("error")),
        "malformed_text_share": round(len(malformed) / len(outputs), 4) if outputs else None,
        "malformed_examples": [f"{role}: {'; '.join(why)}" for role, why in malformed[:5]],
        "degenerate_reply_share": round(len(degenerate) / len(outputs), 4) if outputs else None,
        "evaluated_prompt_tokens_per_decision": _mean(steady),
        "evaluated_prompt_tokens_first_decision": _mean(first),
        "prompt_tokens_per_decision": _mean(
            [sum(int(s.get("prompt_tokens", 0)) for s in d.steps) for d in decisions]
        ),
        "completion_tokens_per_decision": _mean(
            [sum(int(s.get("completion_tokens", 0)) for s in d.steps) for d in decisions]
        ),
        "decision_median_s": _median([d.wall_s for d in decisions]),
        "wall_s_per_decision": round(sum(d.wall_s for d in decisions) / n, 3) if n else None,
        "role_median_s": {role: _median(v) for role, v in sorted(roles.items())},
    }


GRID_SPEC = """
data: {{tickers: [{ticker}]}}
windows: [{windows}]
strategies:
  - {{name: agents, model: {model}, label: {label}}}
  - {{name: sma-cross}}
  - {{name: macd}}
  - {{name: rsi}}
  - {{name: buy-hold}}
seed: 1
"""


def model_label(model: str) -> str:
    """The agent cells' label: ``agents-`` and the model's name (a path's file stem)."""
    tail = Path(model).name.removesuffix(".gguf") if model.endswith(".gguf") else model
    return re.sub(r"[^\w.+-]", "-", f"agents-{tail}")[:60]


def _spec(ticker: str, windows: Sequence[Window], model: str) -> Any:
    from trading_agents.grid.spec import spec_from_text

    text = GRID_SPEC.format(
        ticker=ticker,
        windows=", ".join(f"{{start: {w.start}, end: {w.end}}}" for w in windows),
        model=json.dumps(model),
        label=model_label(model),
    )
    return spec_from_text(text, "bench quality spec")


def pick_windows(tickers: Sequence[str], bars: int) -> list[Window]:
    from trading_agents.market.loader import load_bars

    loaded = load_bars(tickers=list(tickers))
    return [w for t in tickers for w in choose_windows(t, loaded[t]["Close"], bars)]


def run(
    out_dir: Path,
    quick: bool = False,
    models: Sequence[str] | None = None,
    on_progress: Any = None,
) -> dict[str, Any]:
    """Run every model on the chosen windows; JSON-safe (the CLI writes it to quality.json)."""
    from trading_agents.core.risk import caps_in_force
    from trading_agents.grid import leaderboard
    from trading_agents.grid.run import base_settings, physical_cores, run_grid
    from trading_agents.grid.store import GridStore

    models = list(models or DEFAULT_MODELS)
    tickers = QUICK_INSTRUMENTS if quick else INSTRUMENTS
    bars = QUICK_BARS if quick else BARS
    windows = pick_windows(tickers, bars)
    kind_of = {(w.ticker, w.start, w.end): w.kind for w in windows}
    root = Path(out_dir) / "quality-bench"
    shutil.rmtree(root, ignore_errors=True)  # no cached replies: every decision is computed
    root.mkdir(parents=True)
    threads = physical_cores()
    results: dict[str, Any] = {}
    for model in models:
        label = model_label(model)
        began = time.perf_counter()
        all_rows = []
        decisions: list[Decision] = []
        raw: list[Mapping[str, Any]] = []
        spec = None
        for ticker in tickers:
            mine = [w for w in windows if w.ticker == ticker]
            spec = _spec(ticker, mine, model)
            folder = root / label / ticker
            run_grid(spec, folder, workers=1, threads=threads)
            with GridStore.open(folder, create=False) as store:
                rows = store.rows()
            all_rows.extend(rows)
            for r in rows:
                if r.cell.is_agents and r.status == "done" and r.out_dir:
                    found, lines = read_decisions(Path(r.out_dir) / "decisions.jsonl")
                    kind = kind_of.get((ticker, r.cell.start, r.cell.end), "")
                    decisions.extend(replace(d, kind=kind) for d in found)
                    raw.extend(lines)
            if on_progress is not None:
                on_progress(f"{label}: {ticker} done ({len(decisions)} decisions)")
        combined = _spec(",".join(tickers), windows, model) if len(tickers) > 1 else spec
        base = base_settings(combined, None)
        board = leaderboard.build(all_rows, combined, caps=caps_in_force(base.risk), cash=base.broker.cash)
        figures = model_quality(decisions, raw)
        figures["actions_by_window"] = _actions_by_window(decisions)
        figures["leaderboard"] = board["strategies"]
        figures["costs_and_caps"] = {
            k: board["grid"][k] for k in ("cash", "broker", "risk_caps", "bootstrap")
        }
        figures["costs_and_caps"]["broker_settings"] = base.broker.model_dump(mode="json")
        figures["wall_s"] = round(time.perf_counter() - began, 1)
        figures["grid_dirs"] = [str(root / label / t) for t in tickers]
        results[model] = figures
    return {
        "instruments": list(tickers),
        "bars_per_window": bars,
        "windows": [w.as_dict() for w in windows],
        "threads": threads,
        "models": results,
    }


def _actions_by_window(decisions: Iterable[Decision]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for d in decisions:
        out.setdefault(d.kind or "unknown", Counter())[d.action or "INVALID"] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}
