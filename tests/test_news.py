"""Point-in-time news: the cut at the exchange close, the date-only rule, the budget, blind
masking, bad files, and the yfinance provider's cache and offline note (Yahoo is unreachable
here: canned answers stand in for it, and the real yfinance call goes to a dead proxy)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from trading_agents.cli.app import main
from trading_agents.errors import DataValidationError
from trading_agents.market import load_bars
from trading_agents.market.news import (
    FileNewsProvider,
    YahooNewsProvider,
    news_at,
    news_to_prompt,
    open_news,
    session_close,
)
from trading_agents.market.snapshot import build_snapshot, snapshot_to_prompt

# Wednesday 2013-02-27: the New York close is 16:00 EST = 21:00 UTC
CUT_ITEMS = [
    ("before-ny", "2013-02-27T15:59:59-05:00", True),
    ("at-utc", "2013-02-27T21:00:00Z", True),
    ("at-tokyo", "2013-02-28T06:00:00+09:00", True),
    ("before-kolkata", "2013-02-28T02:29:00+05:30", True),
    ("after-berlin", "2013-02-27T22:00:01+01:00", False),
    ("after-ny", "2013-02-27T16:00:01-05:00", False),
    ("day-after-ny", "2013-02-28T09:00:00-05:00", False),
    ("dateonly-same-day", "2013-02-27", False),  # a date without a time counts after that close
    ("dateonly-day-before", "2013-02-26", True),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def cut_file(tmp_path: Path) -> Path:
    rows = [{"published_at": when, "ticker": "GOOG", "headline": f"item {tag}"} for tag, when, _ in CUT_ITEMS]
    return write_jsonl(tmp_path / "news.jsonl", rows)


def test_an_item_counts_only_from_the_exchange_close_in_any_time_zone(tmp_path: Path) -> None:
    source = FileNewsProvider(cut_file(tmp_path))
    seen = {i.headline for i in news_at(source, "GOOG", "2013-02-27", max_items=50)}
    assert seen == {f"item {tag}" for tag, _, allowed in CUT_ITEMS if allowed}
    next_day = {i.headline for i in news_at(source, "GOOG", "2013-02-28", max_items=50)}
    assert next_day == {f"item {tag}" for tag, _, _ in CUT_ITEMS}  # everything has happened by then
    assert news_at(source, "AAPL", "2013-02-28") == ()


def test_the_close_follows_the_exchange_calendar() -> None:
    assert session_close(datetime(2013, 2, 27).date()) == datetime(2013, 2, 27, 21, tzinfo=UTC)
    assert session_close(datetime(2013, 3, 11).date()) == datetime(2013, 3, 11, 20, tzinfo=UTC)  # EDT
    assert session_close(datetime(2012, 11, 23).date()) == datetime(2012, 11, 23, 18, tzinfo=UTC)  # 13:00
    assert session_close(datetime(2013, 2, 23).date()) == datetime(2013, 2, 23, 21, tzinfo=UTC)  # Saturday


def test_an_early_close_cuts_earlier(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "n.jsonl",
        [
            {
                "published_at": "2012-11-23T14:00:00-05:00",
                "ticker": "GOOG",
                "headline": "after the 13:00 close",
            }
        ],
    )
    source = FileNewsProvider(path)
    assert news_at(source, "GOOG", "2012-11-23") == ()
    assert len(news_at(source, "GOOG", "2012-11-26")) == 1


def test_the_budget_keeps_the_most_recent_items_newest_first_each_cut(tmp_path: Path) -> None:
    rows = [
        {
            "published_at": f"2013-02-{d:02d}T12:00:00-05:00",
            "ticker": ["goog", "GOOGL"],
            "headline": f"day {d} " + "x" * 400,
        }
        for d in range(11, 27)
    ]
    source = FileNewsProvider(write_jsonl(tmp_path / "n.jsonl", rows))
    items = news_at(source, "GOOG", "2013-02-27")
    assert [i.published_at.day for i in items] == [26, 25, 24, 23, 22]
    assert news_at(source, "GOOGL", "2013-02-27") == items  # every ticker of an item finds it
    text = news_to_prompt(items, "GOOG", datetime(2013, 2, 27).date(), max_chars=120)
    lines = text.splitlines()[1:]
    assert len(lines) == 5 and all(len(line.split(": ", 1)[1]) <= 120 for line in lines)
    assert text == news_to_prompt(items, "GOOG", datetime(2013, 2, 27).date(), max_chars=120)


def test_blind_masks_ticker_names_and_dates_inside_the_text(tmp_path: Path) -> None:
    rows = [
        {
            "published_at": "2013-02-27T10:00:00-05:00",
            "ticker": ["GOOG", "GOOGL"],
            "headline": "Google (GOOG, GOOGL) to report Q4 2012 results on Feb 27, 2013",
            "summary": "Alphabet's unit said on 2013-02-26 and 26 February that 2/27/2013 is final.",
            "source": "Google News",
        }
    ]
    source = FileNewsProvider(write_jsonl(tmp_path / "n.jsonl", rows))
    bars = load_bars(tickers=["GOOG"])["GOOG"]
    snap = build_snapshot("GOOG", bars, "2013-02-27", news=source)
    text = snapshot_to_prompt(snap, blind=True, names=["Google", "Alphabet"])
    for secret in ("GOOG", "Google", "Alphabet", "2013", "2012", "Feb", "February", "2/27"):
        assert secret.lower() not in text.lower(), secret
    assert "ASSET" in text and "same day" in text
    plain = snapshot_to_prompt(snap, names=["Google"])
    assert "Google (GOOG, GOOGL)" in plain and "2013-02-27 10:00 EST" in plain


def test_the_snapshot_makes_the_cut_whatever_bars_the_caller_passes(tmp_path: Path) -> None:
    source = FileNewsProvider(cut_file(tmp_path))
    bars = load_bars(tickers=["GOOG"])["GOOG"]  # bars up to 2013-03-01: later than the decision
    snap = build_snapshot("GOOG", bars, pd.Timestamp("2013-02-27"), news=source, max_news=50)
    assert {i.headline for i in snap.news or ()} == {f"item {t}" for t, _, ok in CUT_ITEMS if ok}
    assert build_snapshot("GOOG", bars, "2013-02-27").news is None  # no source: no NEWS section
    assert "NEWS" not in snapshot_to_prompt(build_snapshot("GOOG", bars, "2013-02-27"))


def test_csv_news_with_several_tickers(tmp_path: Path) -> None:
    path = tmp_path / "news.csv"
    path.write_text(
        "published_at,ticker,headline,summary,source,url\n"
        '2013-02-27T10:00:00-05:00,GOOG;AAPL,"Tech rallies, again",s,wire,http://x/1\n'
        "2013-02-26,SPX,Index note,,,\n",
        encoding="utf-8",
    )
    source = FileNewsProvider(path)
    assert [i.headline for i in source.items_for("aapl")] == ["Tech rallies, again"]
    (spx,) = source.items_for("SPX")
    assert spx.date_only and spx.summary is None and len(spx.id) == 12


BAD_FILES = [
    ("empty.jsonl", "", ":1: empty news file"),
    ("blank.jsonl", "\n\n", ":1: empty news file"),
    (
        "nojson.jsonl",
        '{"published_at": "2013-02-27T10:00:00Z", "ticker": "GOOG", "headline": "a"}\n{oops\n',
        ":2: not valid JSON",
    ),
    ("missing.jsonl", '{"published_at": "2013-02-27T10:00:00Z", "ticker": "GOOG"}\n', ":1: missing headline"),
    (
        "naive.jsonl",
        '{"published_at": "2013-02-27T10:00:00", "ticker": "GOOG", "headline": "a"}\n',
        ":1: published_at '2013-02-27T10:00:00' has no time zone",
    ),
    (
        "garbage.jsonl",
        '{"published_at": "yesterday", "ticker": "GOOG", "headline": "a"}\n',
        ":1: published_at 'yesterday' is not an ISO 8601",
    ),
    ("list.jsonl", "[1, 2]\n", ":1: expected a JSON object"),
    ("cols.csv", "published_at,headline\n2013-02-27T10:00:00Z,a\n", ":1: missing column(s) ticker"),
    ("header.csv", "published_at,ticker,headline\n", ":2: the CSV has a header but no items"),
    (
        "naive.csv",
        "published_at,ticker,headline\n2013-02-27T10:00:00Z,GOOG,a\n2013-02-27 11:00,GOOG,b\n",
        ":3: published_at '2013-02-27 11:00' has no time zone",
    ),
    ("notes.txt", "hello\n", "must end in .jsonl or .csv"),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_FILES)
def test_bad_news_files_name_the_file_and_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataValidationError) as exc:
        FileNewsProvider(path)
    assert str(path) in str(exc.value) and message in str(exc.value)
    assert "\n" not in str(exc.value) and exc.value.exit_code == 2


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


@pytest.mark.parametrize("command", ["run", "backtest"])
def test_a_bad_news_file_stops_run_and_backtest_with_exit_2_and_records_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, isolated_state: Path, command: str
) -> None:
    name, text, _ = BAD_FILES[4]
    bad = tmp_path / name
    bad.write_text(text, encoding="utf-8")
    out_dir = tmp_path / "results"
    extra = ["--out", str(out_dir), "--no-baselines"] if command == "backtest" else []
    code, _, err = cli(
        capsys, command, "--news", str(bad), "--start", "2013-02-26", "--end", "2013-02-28", *extra
    )
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert f"{bad}:1" in err and "no time zone" in err and "Traceback" not in err
    assert not (isolated_state / "ledger.sqlite").exists() and not out_dir.exists()
    code, _, err = cli(capsys, command, "--news", str(tmp_path / "missing.jsonl"), *extra)
    assert code == 2 and "missing.jsonl does not exist" in err


def test_open_news_picks_the_provider(tmp_path: Path) -> None:
    assert open_news(None, home=tmp_path) is None
    assert isinstance(open_news("yahoo", home=tmp_path), YahooNewsProvider)
    assert isinstance(open_news(cut_file(tmp_path), home=tmp_path), FileNewsProvider)


NOW = datetime(2024, 1, 5, 23, 0, tzinfo=UTC)


def yahoo_articles() -> list[dict]:
    """Two articles as yfinance 1.x returns them, one in the older flat shape, one advert."""
    return [
        {
            "id": "a1",
            "content": {
                "title": "Alphabet beats estimates",
                "summary": "Cloud revenue up.",
                "pubDate": "2024-01-05T14:00:00Z",
                "provider": {"displayName": "Wire"},
                "canonicalUrl": {"url": "https://example.com/a1"},
            },
        },
        {"id": "a2", "content": {"title": "After the bell", "pubDate": "2024-01-05T21:30:00Z"}},
        {
            "uuid": "old",
            "title": "Flat shape",
            "publisher": "Old",
            "link": "https://x",
            "providerPublishTime": 1704380400,
        },
        {"id": "junk", "content": {"title": "no date"}},
    ]


def test_yahoo_news_is_parsed_cached_and_merged(tmp_path: Path) -> None:
    calls: list[str] = []

    def fetch(symbol: str) -> list[dict]:
        calls.append(symbol)
        return yahoo_articles()

    clock = [NOW]
    yp = YahooNewsProvider(tmp_path, fetch=fetch, now=lambda: clock[0])
    items = yp.items_for("goog")
    assert calls == ["GOOG"] and {i.id for i in items} == {"a1", "a2", "old"} and yp.notes == []
    a1 = next(i for i in items if i.id == "a1")
    assert a1.source == "Wire" and a1.url == "https://example.com/a1" and a1.summary == "Cloud revenue up."
    assert [i.id for i in news_at(yp, "GOOG", "2024-01-05")] == ["a1", "old"]  # 21:30Z is after the close
    cache = json.loads((tmp_path / "GOOG.news.json").read_text())
    assert len(cache["items"]) == 3 and cache["fetched_at"] == "2024-01-05T23:00:00+00:00"

    # later, Yahoo is down: the cached items serve, with an offline note instead of a failure
    clock[0] = NOW + timedelta(hours=3)

    def down(symbol: str) -> list[dict]:
        raise ConnectionError("Failed to resolve 'finance.yahoo.com'")

    later = YahooNewsProvider(tmp_path, fetch=down, now=lambda: clock[0])
    assert {i.id for i in later.items_for("GOOG")} == {"a1", "a2", "old"}
    assert later.notes == [
        "offline: cannot reach Yahoo Finance news for GOOG (ConnectionError: Failed to resolve "
        "'finance.yahoo.com'); using 3 cached items"
    ]


def test_real_yfinance_news_call_degrades_to_an_offline_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real yfinance request, sent to a proxy port where nothing listens."""
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    yp = YahooNewsProvider(tmp_path)
    assert yp.items_for("GOOG") == ()
    (note,) = yp.notes
    assert note.startswith("offline: cannot reach Yahoo Finance news for GOOG") and "0 cached items" in note
