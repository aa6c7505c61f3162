"""Where the dashboard's data comes from: the session ledger and the results folders.

Everything is read through the journal (:meth:`~trading_agents.journal.Ledger.open_reader`,
read-only, never blocking the writer), the backtest results reader
(:func:`~trading_agents.backtest.results_folder.read_results`) and the grid's
``leaderboard.json``. A source that cannot be read becomes a :class:`Unavailable` with a
message for its page; the other pages keep working.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trading_agents.backtest.results_folder import is_results_folder
from trading_agents.errors import TradingAgentsError
from trading_agents.grid.report import LEADERBOARD
from trading_agents.grid.store import STORE_NAME
from trading_agents.journal import LEDGER_FILENAME, Ledger, default_ledger_path

#: How deep under a results root folders are looked for (grid cells sit two levels down).
SCAN_DEPTH = 4


class Unavailable(Exception):
    """A source that cannot be shown, with the message its page shows instead."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FolderRef:
    """A folder under one of the results roots: ``root`` is the root's index, ``rel`` the
    path inside it (what the page URLs carry: no absolute path ever reaches a URL)."""

    root: int
    rel: str
    path: Path
    kind: str  # "backtest" or "grid"
    running: bool = False  # a backtest still journalling into its ledger (no summary.json yet)


@dataclass
class Sources:
    """The ledger and the results roots the app serves."""

    home: Path
    roots: list[Path] = field(default_factory=list)

    @property
    def ledger_path(self) -> Path:
        return default_ledger_path(self.home)

    @contextmanager
    def ledger(self, path: Path | None = None) -> Iterator[Ledger]:
        """The session ledger (or the ledger at ``path``, such as a running backtest's),
        read-only; :class:`Unavailable` when it cannot be read."""
        try:
            led = Ledger.open_reader(path or self.ledger_path)
        except TradingAgentsError as exc:
            raise Unavailable(exc.message) from None
        try:
            yield led
        finally:
            led.close()

    def folders(self) -> list[FolderRef]:
        """Every backtest results folder and grid folder under the roots, sorted by path."""
        found: list[FolderRef] = []
        for i, root in enumerate(self.roots):
            if root.is_dir():
                found.extend(self._scan(i, root, root, 0))
        return sorted(found, key=lambda f: (f.kind, str(f.path)))

    def _scan(self, index: int, root: Path, folder: Path, depth: int) -> Iterator[FolderRef]:
        kind, running = None, False
        if (folder / STORE_NAME).is_file() or (folder / LEADERBOARD).is_file():
            kind = "grid"
        elif is_results_folder(folder) or (folder / "equity.csv").is_file():
            kind = "backtest"
        elif (folder / LEDGER_FILENAME).is_file():
            kind, running = "backtest", True
        if kind is not None:
            yield FolderRef(index, folder.relative_to(root).as_posix(), folder, kind, running)
        if depth >= SCAN_DEPTH:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            yield from self._scan(index, root, child, depth + 1)

    def resolve(self, root: int, rel: str) -> Path:
        """The folder a URL names, which must lie inside that root."""
        if not 0 <= root < len(self.roots):
            raise Unavailable(f"no results root #{root}; the dashboard serves {len(self.roots)}")
        base = self.roots[root].resolve()
        path = (base / rel).resolve()
        if path != base and base not in path.parents:
            raise Unavailable(f"{rel} is outside the results root {base}")
        if not path.is_dir():
            raise Unavailable(f"{path} does not exist (moved or deleted?); see the list of results")
        return path

    def ref_of(self, path: str | Path | None) -> tuple[int, str] | None:
        """``(root, rel)`` for a folder under one of the roots, else None."""
        if not path:
            return None
        target = Path(path).resolve()
        for i, root in enumerate(self.roots):
            base = root.resolve()
            if target == base or base in target.parents:
                return i, target.relative_to(base).as_posix()
        return None


def read_leaderboard(folder: Path) -> dict[str, Any]:
    """A grid folder's ``leaderboard.json``; :class:`Unavailable` when missing or unreadable."""
    path = folder / LEADERBOARD
    if not path.is_file():
        raise Unavailable(
            f"{folder} has no {LEADERBOARD} yet; run `trading-agents grid report --out {folder}` to write it"
        )
    try:
        board = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Unavailable(
            f"{path} is not readable JSON ({exc}); run `trading-agents grid report` again"
        ) from None
    if not isinstance(board, dict) or not all(k in board for k in ("grid", "strategies", "cells")):
        raise Unavailable(
            f"{path} lacks grid, strategies or cells: written by another trading-agents version;"
            " run `trading-agents grid report` again"
        )
    return board
