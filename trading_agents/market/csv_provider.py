"""Daily bars from a CSV file: Yahoo Finance's export format and its close relatives.

Accepted layouts (column names are matched case-insensitively):

* ``Date,Open,High,Low,Close,Adj Close,Volume`` -- Yahoo's download format;
* the same without ``Adj Close``;
* an unnamed first column holding the dates (``,Open,High,Low,Close,Volume``), as written
  by ``DataFrame.to_csv`` and shipped with backtesting.py.

Dates are ISO ``YYYY-MM-DD`` (a time or UTC offset after the date is ignored) or US
``M/D/YYYY``; the format is detected once per file from the first row, and every row must
then follow it. Day-first dates (``31/01/2020``) are refused rather than guessed.
``Adj Close`` is read but not returned: bars are as traded (see :mod:`trading_agents.market.base`).
"""

from __future__ import annotations

import re
import warnings
from datetime import date
from pathlib import Path

import pandas as pd

from trading_agents.errors import DataValidationError, UserInputError
from trading_agents.market.base import normalize_ticker, slice_window
from trading_agents.market.validate import validate_bars

_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[ T].*)?$")
_US = re.compile(r"^(\d{1,2})/(\d{1,2})/\d{4}$")
_MISSING = {"", "nan", "null", "none", "n/a", "na"}


def read_yahoo_csv(path: Path) -> pd.DataFrame:
    """Read and validate one instrument's daily bars from ``path``.

    Returns bars in the canonical shape; raises :class:`DataValidationError` with one line
    naming the file and the offending rows or dates (missing/empty file, missing columns,
    bad dates, non-numeric or missing values, duplicates, unsorted dates, inconsistent
    OHLC, suspected unadjusted splits -- see :mod:`trading_agents.market.validate`).
    """
    path = Path(path).expanduser()
    source = str(path)
    if not path.exists():
        raise DataValidationError(f"data file {source} does not exist; check the path")
    if path.is_dir():
        raise DataValidationError(f"data file {source} is a directory; pass a CSV file")
    try:
        with path.open("rb") as fh:
            text_head = fh.read(4096)
    except OSError as exc:
        raise DataValidationError(f"cannot read {source}: {exc.strerror or exc}") from None
    if not text_head.strip():
        raise DataValidationError(f"data file {source} is empty; export daily bars as CSV with a Date column")
    if b"\x00" in text_head:
        raise DataValidationError(f"{source} is not a UTF-8 text CSV file (it holds binary data)")
    try:
        with warnings.catch_warnings():
            # A row longer than the header would otherwise be cut short silently.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, index_col=False)
    except UnicodeDecodeError:
        raise DataValidationError(f"{source} is not a UTF-8 text CSV file") from None
    except pd.errors.ParserWarning:
        raise DataValidationError(
            f"{source}: some rows have more fields than the header; fix those rows"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataValidationError(f"{source}: not a valid CSV ({detail})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    date_col = _date_column(raw, source)
    if raw.empty:
        raise DataValidationError(f"{source} has a header but no rows of bars")
    frame = raw.drop(columns=date_col)
    frame.index = _parse_dates(raw[date_col], source)
    for col in frame.columns:
        frame[col] = frame[col].str.strip()
    frame = frame.mask(frame.apply(lambda s: s.str.lower().isin(_MISSING)))
    return validate_bars(frame, source)


def _date_column(raw: pd.DataFrame, source: str) -> str:
    for col in raw.columns:
        if col.lower() in ("date", "datetime"):
            return col
    first = raw.columns[0] if len(raw.columns) else ""
    if first == "" or first.startswith("Unnamed: "):
        return first
    raise DataValidationError(
        f"{source}: no Date column (header is {','.join(raw.columns)}); "
        "expected Date,Open,High,Low,Close,Adj Close,Volume"
    )


def _parse_dates(values: pd.Series, source: str) -> pd.DatetimeIndex:
    text = values.fillna("").astype(str).str.strip()
    empty = text == ""
    if empty.any():
        row = int(empty.to_numpy().argmax()) + 1
        raise DataValidationError(f"{source}: data row {row} has no date; every row needs a date")
    first = text.iloc[0]
    if _ISO.match(first):
        fmt, name = "%Y-%m-%d", "YYYY-MM-DD"
        iso = text.str.slice(0, 10).where(text.str.match(_ISO))
        parsed = pd.to_datetime(iso, format=fmt, errors="coerce")
    elif _US.match(first):
        fmt, name = "%m/%d/%Y", "M/D/YYYY"
        parts = text.str.extract(_US).astype(float)
        if (parts[0] > 12).any() and not (parts[1] > 12).any():
            row = int((parts[0] > 12).to_numpy().argmax()) + 1
            raise DataValidationError(
                f"{source}: dates look day-first (data row {row}: {text.iloc[row - 1]}); "
                "convert them to YYYY-MM-DD"
            )
        parsed = pd.to_datetime(text.where(text.str.match(_US)), format=fmt, errors="coerce")
    else:
        raise DataValidationError(
            f"{source}: cannot read the date {first!r} in data row 1; use YYYY-MM-DD or M/D/YYYY dates"
        )
    bad = parsed.isna()
    if bad.any():
        row = int(bad.to_numpy().argmax()) + 1
        raise DataValidationError(
            f"{source}: data row {row} has the date {text.iloc[row - 1]!r}, but the file uses {name} dates; "
            "use one date format for the whole file"
        )
    return pd.DatetimeIndex(parsed, name="Date")


class CSVProvider:
    """One CSV file = one instrument. ``ticker`` defaults to the file name without extension.

    >>> bars = CSVProvider(Path("my_goog.csv"), ticker="GOOG").history("GOOG")  # doctest: +SKIP
    """

    name = "csv"

    def __init__(self, path: Path, ticker: str | None = None) -> None:
        self.path = Path(path).expanduser()
        self.ticker = normalize_ticker(ticker if ticker else self.path.stem)
        self._bars: pd.DataFrame | None = None

    def tickers(self) -> list[str]:
        return [self.ticker]

    def bars(self) -> pd.DataFrame:
        """All bars in the file (read and validated once, then kept)."""
        if self._bars is None:
            self._bars = read_yahoo_csv(self.path)
        return self._bars.copy()

    def history(self, ticker: str, start: date | None = None, end: date | None = None) -> pd.DataFrame:
        """Bars in ``[start, end]``; ``ticker`` must be this file's instrument."""
        if normalize_ticker(ticker) != self.ticker:
            raise UserInputError(
                f"{self.path} holds {self.ticker} only, not {normalize_ticker(ticker)}; "
                "pass one ticker per --data file"
            )
        return slice_window(self.bars(), self.ticker, start, end)
