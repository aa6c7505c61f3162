"""Write the bundled AAPL, FB, IBM and MSFT files from bokeh-sampledata's ``stocks.csv.gz``.

Usage::

    pip download --no-deps -d /tmp/bsd bokeh-sampledata==2026.1
    unzip -q -o /tmp/bsd/bokeh_sampledata-*.whl -d /tmp/bsd
    python scripts/bundle_stocks.py /tmp/bsd/bokeh_sampledata/_data/stocks.csv.gz

The source (Quandl WIKI prices, public domain) has unadjusted OHLCV and an adjusted close.
AAPL (2000, 2005) and MSFT (2003) split inside the window, so the unadjusted prices jump.
Every price here is adjusted by the day's factor ``adj_close / close``, and the volume is
divided by it: a bar reads as the source's adjusted close does, and its dollar volume
(``close * volume``) is the day's as traded, which the liquidity cap reads.
GOOG is not written: the bundled ``GOOG.csv`` (unadjusted, no split in its window) stays.
"""

from __future__ import annotations

import csv
import gzip
import sys
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "trading_agents" / "market" / "data"
TICKERS = ("AAPL", "FB", "IBM", "MSFT")


def _price(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".")


def main(source: Path) -> None:
    rows: dict[str, list[list[str]]] = {t: [] for t in TICKERS}
    with gzip.open(source, "rt", newline="") as fh:
        for rec in csv.DictReader(fh):
            ticker = rec["Ticker"]
            if ticker not in rows:
                continue
            close = float(rec["Close"])
            factor = float(rec["Adj Close"]) / close
            ohlc = [_price(float(rec[k]) * factor) for k in ("Open", "High", "Low", "Close")]
            volume = round(float(rec["Volume"]) / factor)
            rows[ticker].append([rec["Date"], *ohlc, ohlc[3], str(volume)])
    for ticker, body in rows.items():
        body.sort(key=lambda r: r[0])
        out = DATA_DIR / f"{ticker}.csv"
        with out.open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"])
            writer.writerows(body)
        print(f"{out.name}: {len(body)} rows, {body[0][0]} .. {body[-1][0]}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/bundle_stocks.py PATH/TO/stocks.csv.gz")
    main(Path(sys.argv[1]))
