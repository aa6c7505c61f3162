"""Grid cells: (data item, window, strategy), each with its own seed and its own request.

A cell is plain data (:class:`Cell`, a frozen dataclass of strings and numbers) so that it
crosses process boundaries as is. Its key ``DATA|START..END|LABEL`` names it in the store
and in reports; its seed is derived from the grid seed and the key alone, so a cell's
result does not depend on which worker runs it or when.

The seed drives the ``random`` strategy. Agent cells keep the grid seed for the LLM: a
loaded llama.cpp model is identified by its seed, and one model per worker serves every
agent cell of that model (sampling is greedy at the default temperature 0).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trading_agents.backtest.runner import BacktestRequest
from trading_agents.grid.spec import GridSpec, StrategySpec


@dataclass(frozen=True)
class Cell:
    """One backtest of the grid. ``strategy`` is the spec's strategy as a plain dict."""

    key: str
    data: str
    ticker: str | None
    data_file: str | None
    start: str
    end: str
    label: str
    strategy: dict[str, Any]
    seed: int
    news: str | None = None  # the news the data item's agent cells read (data.news)
    universe: tuple[str, ...] = ()  # a universe item: its tickers, traded as one book

    @property
    def name(self) -> str:
        return str(self.strategy["name"])

    @property
    def is_agents(self) -> bool:
        return self.name == "agents"

    @property
    def folder(self) -> str:
        """The cell's results folder under ``DIR/cells/`` (a file-system-safe form of the key)."""
        return re.sub(r"[^\w.+-]+", "_", f"{self.data}_{self.start}_{self.end}_{self.label}")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.universe:  # cells of single instruments keep the form (and hash) they had
            out.pop("universe")
        return out

    def request(self, grid_dir: Path, grid_seed: int) -> BacktestRequest:
        """The :class:`BacktestRequest` this cell is (costs and risk come from the settings)."""
        strategy = StrategySpec.model_validate(self.strategy)
        return BacktestRequest(
            strategy=self.name,
            tickers=list(self.universe) if self.universe else [self.ticker] if self.ticker else None,
            data_file=Path(self.data_file) if self.data_file else None,
            start=dt.date.fromisoformat(self.start),
            end=dt.date.fromisoformat(self.end),
            fast=strategy.fast or 10,
            slow=strategy.slow or 20,
            seed=grid_seed if self.is_agents else self.seed,
            use_cache=True,
            response_cache=Path(grid_dir) / "llm_cache.sqlite",
            blind=strategy.blind,
            news=self.news if self.is_agents else None,
            portfolio=strategy.portfolio,
            baselines=False,
            out=Path(grid_dir) / "cells" / self.folder,
        )


def cell_seed(grid_seed: int, key: str) -> int:
    """A seed in ``[0, 2**31)`` from the grid seed and the cell key (sha256: stable everywhere)."""
    digest = hashlib.sha256(f"{grid_seed}|{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def data_items(spec: GridSpec) -> list[tuple[str, str | None, str | None]]:
    """``(label, ticker, file)`` for each data item: tickers first, then files (label: the
    stem), then the universe (label: its tickers joined by ``+``; ticker and file ``None``)."""
    items: list[tuple[str, str | None, str | None]] = [(t, t, None) for t in spec.data.tickers]
    items += [(Path(f).stem, None, str(f)) for f in spec.data.files]
    if spec.data.universe_label:
        items.append((spec.data.universe_label, None, None))
    return items


def expand(spec: GridSpec) -> list[Cell]:
    """Every cell of ``spec``, in a fixed order: data items x windows x strategies."""
    cells = []
    for data, ticker, file in data_items(spec):
        for window in spec.window_list():
            for strategy in spec.with_reference():
                label = strategy.default_label()
                key = f"{data}|{window.start}..{window.end}|{label}"
                cells.append(
                    Cell(
                        key=key,
                        data=data,
                        ticker=ticker,
                        data_file=file,
                        start=window.start.isoformat(),
                        end=window.end.isoformat(),
                        label=label,
                        strategy=strategy.model_dump(mode="json", exclude_defaults=True),
                        seed=cell_seed(spec.seed, key),
                        news=spec.data.news.get(data),
                        universe=tuple(spec.data.universe) if data == spec.data.universe_label else (),
                    )
                )
    return cells


def cell_hash(cell: Cell, shared: dict[str, Any]) -> str:
    """What decides a cell's result (the cell and the grid's costs, risk, llm and config)."""
    blob = json.dumps({"cell": cell.as_dict(), "shared": shared}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
