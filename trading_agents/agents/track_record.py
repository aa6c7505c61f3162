"""The desk's own track record: what became of each BUY or SELL call, once it is known.

A call is the analyst's BUY or SELL on the close of bar D, with its conviction and a horizon
of h bars (``memory.horizon_days``; null: the analyst's own ``horizon_days``). Its outcome is
the price move from the fill, the open of bar D+1 where the desk's orders fill, to the close
of bar D+h: *realised* from the decision on bar D+h on; before that, from bar D+1 on, the move
to the latest close is reported *partial*. A call *hits* when the move went its way (up for
BUY, down for SELL; the fill price is the open before costs, so a call can be judged even when
the risk engine vetoed its order).

Outcomes are computed from the bars a decision is given, which the engine has cut at the
decision's date, so an outcome cannot reach a prompt before the bar where it became known:
point-in-time by construction, like the bars themselves.

Records: each decision record keeps its ``call``, the ``track_record`` its prompt showed, and
``outcomes``, the outcomes that became known (partial first, then realised) at that bar.
:meth:`TrackRecord.remember` rebuilds the state from such records (a resumed paper session
reads them back from the ledger), and :func:`action_stats` folds them into hit rate and mean
realised return per action for ``ledger --json`` and the backtest report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

ACTIONS = ("BUY", "SELL")
Status = Literal["partial", "realised"]


@dataclass(frozen=True)
class Call:
    """A BUY or SELL decided on the close of ``date`` (ISO) for ``ticker``."""

    date: str
    ticker: str
    action: str
    conviction: float
    horizon: int

    def to_record(self) -> dict[str, Any]:
        return {"action": self.action, "conviction": self.conviction, "horizon": self.horizon}


@dataclass(frozen=True)
class Outcome:
    """What a call's price did from its fill to the close of ``known_at`` (``bars`` after it)."""

    call: Call
    status: Status
    fill_price: float
    close: float
    bars: int
    known_at: str

    @property
    def return_pct(self) -> float:
        return round((self.close / self.fill_price - 1.0) * 100.0, 2)

    @property
    def hit(self) -> bool:
        return self.return_pct > 0 if self.call.action == "BUY" else self.return_pct < 0

    def to_record(self) -> dict[str, Any]:
        return {
            "date": self.call.date,
            **self.call.to_record(),
            "status": self.status,
            "return_pct": self.return_pct,
            "bars": self.bars,
            "hit": self.hit,
            "known_at": self.known_at,
        }


def outcome_of(call: Call, bars: pd.DataFrame) -> Outcome | None:
    """The outcome of ``call`` as far as ``bars`` (cut at the current decision) tell, or ``None``
    while its fill bar has not happened yet (or its date is not a bar of ``bars``)."""
    index = bars.index
    stamp = pd.Timestamp(call.date)
    pos = int(index.searchsorted(stamp, side="left"))
    if pos >= len(index) or index[pos] != stamp or pos + 1 >= len(index):
        return None
    last = len(index) - 1
    exit_pos = min(pos + call.horizon, last)
    fill = float(bars["Open"].iloc[pos + 1])
    if not fill > 0:
        return None
    return Outcome(
        call=call,
        status="realised" if pos + call.horizon <= last else "partial",
        fill_price=fill,
        close=float(bars["Close"].iloc[exit_pos]),
        bars=exit_pos - pos,
        known_at=index[exit_pos].date().isoformat(),
    )


def call_from_record(date: str, ticker: str, rec: Mapping[str, Any], horizon_days: int | None) -> Call | None:
    """The call a per-ticker decision record holds: its ``call`` entry, or for records written
    without one, the analyst's reply (BUY/SELL only)."""
    stored = rec.get("call")
    if isinstance(stored, Mapping) and stored.get("action") in ACTIONS:
        return Call(date, ticker, str(stored["action"]), float(stored["conviction"]), int(stored["horizon"]))
    for agent in rec.get("agents") or ():
        if agent.get("role") == "analyst":
            out = agent.get("output") or {}
            if out.get("action") in ACTIONS:
                horizon = horizon_days or int(out.get("horizon_days") or 1)
                return Call(date, ticker, str(out["action"]), float(out.get("conviction") or 0.0), horizon)
    return None


def make_call(date: str, ticker: str, report: Any, horizon_days: int | None) -> Call | None:
    """The call of an analyst reply (``AnalystReport``), or ``None`` for HOLD or no reply."""
    if report is None or getattr(report, "action", None) not in ACTIONS:
        return None
    horizon = horizon_days or int(report.horizon_days)
    return Call(date, ticker, str(report.action), round(float(report.conviction), 4), horizon)


@dataclass
class Review:
    """The track record one decision sees for its ticker."""

    shown: list[Outcome]
    realised: int
    hits: int
    changes: list[Outcome]

    def to_record(self) -> dict[str, Any]:
        return {
            "outcomes": [o.to_record() for o in self.shown],
            "realised": self.realised,
            "hits": self.hits,
            "hit_rate": round(self.hits / self.realised, 4) if self.realised else None,
        }


class TrackRecord:
    """Calls per ticker and the outcome status last written to a record, for one run."""

    def __init__(self, *, max_items: int = 5, horizon_days: int | None = 5) -> None:
        self.max_items = max_items
        self.horizon_days = horizon_days
        self._calls: dict[str, dict[str, Call]] = {}
        self._recorded: dict[tuple[str, str], tuple[str, float]] = {}

    def remember(self, decisions: Iterable[Mapping[str, Any]]) -> None:
        """Take in earlier decision rows (``{"bar_date", "record"}`` as the ledger returns them, or
        ``{"date", "record"}`` as decisions.jsonl has them) of the same run."""
        for row in decisions:
            date = str(row.get("bar_date", row.get("date")))[:10]
            tickers = (row.get("record") or {}).get("tickers") or {}
            for ticker, rec in tickers.items():
                if not isinstance(rec, Mapping):
                    continue
                call = call_from_record(date, ticker, rec, self.horizon_days)
                if call is not None:
                    self.add(call)
                for seen in rec.get("outcomes") or ():
                    self._recorded[(ticker, str(seen["date"]))] = (seen["status"], float(seen["return_pct"]))

    def add(self, call: Call) -> None:
        self._calls.setdefault(call.ticker, {})[call.date] = call

    def review(self, ticker: str, bars: pd.DataFrame) -> Review:
        """What is known at the last bar of ``bars`` about the ticker's earlier calls."""
        outcomes = []
        for call in sorted(self._calls.get(ticker, {}).values(), key=lambda c: c.date):
            out = outcome_of(call, bars)
            if out is not None:
                outcomes.append(out)
        realised = [o for o in outcomes if o.status == "realised"]
        changes = []
        for o in outcomes:
            key = (ticker, o.call.date)
            before = self._recorded.get(key)
            if before is None or before[0] != o.status:
                changes.append(o)
                self._recorded[key] = (o.status, o.return_pct)
        shown = outcomes[-self.max_items :] if self.max_items > 0 else []
        return Review(shown, len(realised), sum(o.hit for o in realised), changes)


TRACK_RECORD_LEGEND = (
    "Each line of the desk's track record is one of its calls: how many bars ago it was made, action and"
    " conviction, then its move (the price from the fill at the next open to the latest close, or to the"
    " close at its horizon once realised) and whether it is a hit (it moved the call's way); 'so far'"
    " while its horizon has not passed."
)


def render_track_record(review: Review, ticker_label: str, bars: pd.DataFrame) -> str:
    """The TRACK RECORD section of the task ("" when there is nothing to show).

    Calls are placed by how many bars before the last of ``bars`` they were made (no dates:
    the text is the same with and without ``--blind``). Lines are terse, one decimal: the
    section is evaluated again on every later decision, each digit a token on most tokenizers;
    how to read them is :data:`TRACK_RECORD_LEGEND`, in the static desk rules.
    """
    if not review.shown:
        return ""
    lines = [f"TRACK RECORD on {ticker_label}, oldest first:"]
    for o in review.shown:
        ago = len(bars) - 1 - int(bars.index.searchsorted(pd.Timestamp(o.call.date)))
        verdict = "hit" if o.hit else "miss"
        state = "realised" if o.status == "realised" else "so far"
        lines.append(
            f"- {ago} ago: {o.call.action} {o.call.conviction:.1f}, {o.return_pct:+.1f}% {state}, {verdict}"
        )
    if review.realised:
        lines.append(
            f"Hit rate: {review.hits} of {review.realised} realised ({review.hits / review.realised:.0%})."
        )
    return "\n".join(lines)


def action_stats(decisions: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per action (BUY, SELL): calls, realised and partial outcomes, hit rate and mean realised
    return (percent), from decision rows whose records carry ``call`` and ``outcomes``.

    The latest outcome recorded for each call counts; calls whose outcome no later decision
    recorded are ``pending``.
    """
    calls: dict[tuple[str, str], str] = {}
    latest: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in decisions:
        date = str(row.get("bar_date", row.get("date")))[:10]
        tickers = (row.get("record") or {}).get("tickers") or {}
        for ticker, rec in tickers.items():
            if not isinstance(rec, Mapping):
                continue
            call = rec.get("call")
            if isinstance(call, Mapping) and call.get("action") in ACTIONS:
                calls[(ticker, date)] = str(call["action"])
            for seen in rec.get("outcomes") or ():
                latest[(ticker, str(seen["date"]))] = seen
    stats: dict[str, dict[str, Any]] = {}
    for action in ACTIONS:
        keys = [k for k, a in calls.items() if a == action]
        realised = [latest[k] for k in keys if k in latest and latest[k]["status"] == "realised"]
        partial = sum(1 for k in keys if k in latest and latest[k]["status"] == "partial")
        returns = [float(o["return_pct"]) for o in realised]
        hits = sum(1 for o in realised if o.get("hit"))
        stats[action] = {
            "calls": len(keys),
            "realised": len(realised),
            "partial": partial,
            "pending": len(keys) - len(realised) - partial,
            "hits": hits,
            "hit_rate": round(hits / len(realised), 4) if realised else None,
            "mean_return_pct": round(sum(returns) / len(returns), 3) if returns else None,
        }
    return stats
