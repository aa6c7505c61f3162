"""What one decision reads besides the indicators: point-in-time news and the desk's track record.

:class:`DeskInputs` is the one place the desk gets them from. For a ticker on a decision bar it
builds the snapshot (which makes the news cut itself, see
:func:`~trading_agents.market.snapshot.build_snapshot`), renders the snapshot with its news and
the track record as text, and returns what the decision record keeps of them: the ``news``
items seen (id, time, headline) and the ``track_record`` shown. After the team has decided,
:meth:`DeskInputs.settle` adds the decision's own ``call`` and the ``outcomes`` that became
known at this bar.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from trading_agents.agents.track_record import Review, TrackRecord, make_call, render_track_record
from trading_agents.config.settings import Settings
from trading_agents.market.news import NewsSource
from trading_agents.market.snapshot import MarketSnapshot, build_snapshot, snapshot_to_prompt


@dataclass
class PreparedInputs:
    snapshot: MarketSnapshot
    snapshot_text: str
    track_text: str
    review: Review
    record: dict[str, Any] = field(default_factory=dict)


class DeskInputs:
    """News source, track record and the settings that shape them, for one run."""

    def __init__(self, settings: Settings, news: NewsSource | None = None, *, blind: bool = False) -> None:
        self.settings = settings
        self.news = news
        self.blind = blind
        self.track = TrackRecord(
            max_items=settings.memory.max_items, horizon_days=settings.memory.horizon_days
        )

    def remember(self, decisions: Iterable[Mapping[str, Any]]) -> None:
        """Earlier decision rows of the same run (see :meth:`TrackRecord.remember`)."""
        self.track.remember(decisions)

    def prepare(self, ticker: str, bars: pd.DataFrame, as_of: pd.Timestamp, label: str) -> PreparedInputs:
        cfg = self.settings.news
        snapshot = build_snapshot(
            ticker, bars, as_of, news=self.news, max_news=cfg.max_items, exchange=cfg.exchange
        )
        text = snapshot_to_prompt(
            snapshot, blind=self.blind, names=cfg.names.get(ticker, ()), max_news_chars=cfg.max_chars
        )
        review = self.track.review(ticker, bars)
        record: dict[str, Any] = {}
        if snapshot.news is not None:
            record["news"] = [item.to_record() for item in snapshot.news]
        track_text = ""
        if self.settings.memory.enabled:
            track_text = render_track_record(review, label, bars)
            record["track_record"] = review.to_record()
        return PreparedInputs(snapshot, text, track_text, review, record)

    def settle(
        self, ticker: str, as_of: pd.Timestamp, analyst: Any, prepared: PreparedInputs
    ) -> dict[str, Any]:
        """The decision's ``call`` and this bar's ``outcomes``, for its record; remembers the call."""
        call = make_call(
            pd.Timestamp(as_of).date().isoformat(), ticker, analyst, self.settings.memory.horizon_days
        )
        if call is not None:
            self.track.add(call)
        return {
            "call": call.to_record() if call is not None else None,
            "outcomes": [o.to_record() for o in prepared.review.changes],
        }
