"""News and the track record on the real desk: the embedded model (real llama.cpp, real GGUF) in a
paper session and an agents backtest. What reaches a prompt is checked on the prompt text the
model received (each agent's rendered prompt, kept in the decision record)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trading_agents.cli.app import main

DAYS = ["2013-02-25", "2013-02-26", "2013-02-27", "2013-02-28"]
NEXT = {
    "2013-02-25": "2013-02-26",
    "2013-02-26": "2013-02-27",
    "2013-02-27": "2013-02-28",
    "2013-02-28": "2013-03-01",
}


def news_rows() -> list[tuple[str, str, str]]:
    """``(tag, published_at, first decision that may read it)`` around each close, in several zones."""
    rows = []
    for day in DAYS:
        d = day.replace("-", "")[4:]
        nxt = NEXT[day]
        rows += [
            (f"qz{d}before", f"{day}T15:59:59-05:00", day),  # a second before the New York close
            (f"qz{d}attokyo", f"{nxt}T06:00:00+09:00", day),  # exactly at the close, written in Tokyo
            (f"qz{d}afterlondon", f"{day}T21:00:01+00:00", nxt),  # a second after it
            (f"qz{d}dayafter", f"{nxt}T09:00:00-05:00", nxt),  # the next morning
            (f"qz{d}dateonly", day, nxt),  # a date without a time: after that day's close
        ]
    return rows


@pytest.fixture
def news_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRADING_AGENTS_NEWS__MAX_ITEMS", "50")  # no budget here: check the cut alone
    monkeypatch.setenv("TRADING_AGENTS_MEMORY__HORIZON_DAYS", "1")
    monkeypatch.setenv("TRADING_AGENTS_LLM__N_THREADS", "1")  # the small model runs faster on one
    path = tmp_path / "news.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {"published_at": when, "ticker": "GOOG", "headline": f"Desk note {tag}", "source": "test"}
            )
            + "\n"
            for tag, when, _ in news_rows()
        )
    )
    return path


def assert_exact_cut(date: str, prompts: list[str]) -> None:
    assert prompts
    for prompt in prompts:
        for tag, _, first in news_rows():
            assert (tag in prompt) == (first <= date), (date, tag)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_a_session_reads_exactly_the_news_published_by_each_close(
    capsys: pytest.CaptureFixture[str], news_file: Path, isolated_state: Path
) -> None:
    code, out, err = cli(
        capsys, "run", "--start", "2013-02-27", "--end", "2013-02-28", "--news", str(news_file), "--json"
    )
    assert code == 0, err
    summary = json.loads(out)
    assert [d["date"] for d in summary["decisions"]] == DAYS[2:]
    from trading_agents.journal import Ledger

    with Ledger.open(isolated_state / "ledger.sqlite") as ledger:
        rows = ledger.decisions("paper")
    for row, shown in zip(rows, summary["decisions"], strict=True):
        rec = row["record"]["tickers"]["GOOG"]
        prompts = [a["prompt"] for a in rec["agents"]]
        assert all("Desk rules" in p for p in prompts)  # the rendered prompt the model was given
        assert_exact_cut(row["bar_date"][:10], prompts)
        # run --json and the ledger record which items each decision saw
        assert shown["news"] == rec["news"] and all(
            set(n) == {"id", "published_at", "headline"} for n in rec["news"]
        )
        assert {n["headline"].split()[-1] for n in rec["news"]} == {
            t for t, _, first in news_rows() if first <= row["bar_date"][:10]
        }
        assert "track_record" in rec and "outcomes" in rec
    code, out, _ = cli(capsys, "ledger", "--json")
    track = json.loads(out)["run"]["track_record"]
    assert set(track) == {"BUY", "SELL"}
    calls = [d["call"] for d in summary["decisions"] if d.get("call")]
    assert track["BUY"]["calls"] + track["SELL"]["calls"] == len(calls)


def test_an_agents_backtest_with_news_and_memory_cuts_exactly_and_replays_without_the_model(
    capsys: pytest.CaptureFixture[str], news_file: Path, tmp_path: Path
) -> None:
    def backtest(out: Path) -> dict:
        code, stdout, err = cli(
            capsys,
            "backtest",
            "-s",
            "agents",
            "--start",
            "2013-02-25",
            "--end",
            "2013-02-27",
            "--news",
            str(news_file),
            "--no-baselines",
            "--out",
            str(out),
            "--json",
        )
        assert code == 0, err
        return json.loads(stdout)

    def decisions(folder: Path) -> list[dict]:
        rows = [json.loads(line) for line in (folder / "decisions.jsonl").read_text().splitlines()]
        for row in rows:
            for rec in row["record"]["tickers"].values():
                for agent in rec.get("agents", []):
                    for key in ("latency_s", "ttft_s", "from_response_cache", "cached_prompt_tokens"):
                        agent.pop(key, None)
                rec.pop("wall_s", None)
        return rows

    first = backtest(tmp_path / "first")
    rows = decisions(tmp_path / "first")
    assert [r["date"] for r in rows] == DAYS[:2]  # a backtest does not decide on its last bar
    for row in rows:
        rec = row["record"]["tickers"]["GOOG"]
        assert_exact_cut(row["date"], [a["prompt"] for a in rec["agents"]])
    call = rows[0]["record"]["tickers"]["GOOG"]["call"]
    later = [a["prompt"] for a in rows[1]["record"]["tickers"]["GOOG"]["agents"]]
    if call is not None:  # a BUY or SELL on the 25th is realised (horizon 1) by the 26th's close
        assert all("1 ago: " + call["action"] in p and "% realised, " in p for p in later)
    else:
        assert all("TRACK RECORD" not in p for p in later)
    assert all("TRACK RECORD" not in a["prompt"] for a in rows[0]["record"]["tickers"]["GOOG"]["agents"])
    assert first["track_record"] == json.loads((tmp_path / "first" / "summary.json").read_text()).get(
        "track_record"
    )

    second = backtest(tmp_path / "second")
    assert first["meta"]["llm"]["calls"] > 0
    assert (
        second["meta"]["llm"]["calls"] == 0
        and second["meta"]["llm"]["cached_calls"] == first["meta"]["llm"]["calls"]
    )
    assert decisions(tmp_path / "second") == rows and second["metrics"] == first["metrics"]
    assert second["track_record"] == first["track_record"]
