"""Baseline grids on a real local Ray: every cell equals the same `backtest` run alone, a rerun
computes nothing, 1 and 2 workers agree, a malformed data file is refused up front with exit 2
(as in backtest), and an interrupted grid leaves a consistent store that a rerun completes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ray_cluster import ray_cluster  # noqa: F401  (module-scoped fixture)
from trading_agents.cli.app import main
from trading_agents.grid.cells import expand
from trading_agents.grid.run import run_grid
from trading_agents.grid.spec import load_spec
from trading_agents.grid.store import GridStore
from trading_agents.market import load_bars

pytestmark = pytest.mark.usefixtures("ray_cluster")

SPEC = """
data: {tickers: [GOOG, SPX], files: [ixic.csv]}
windows:
  - {start: 2010-01-04, end: 2010-04-30}
  - {start: 2010-05-03, end: 2010-08-31}
  - {start: 2010-09-01, end: 2010-12-31}
strategies:
  - {name: sma-cross, fast: 5, slow: 20}
  - {name: random}
  - {name: buy-hold}
broker: {cash: 50000, commission: 0.0005, slippage_bps: 2}
risk: {max_position_pct: 0.5}
seed: 11
"""


@pytest.fixture(scope="module")
def grid_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("spec")
    ixic = load_bars(tickers=["IXIC"])["IXIC"].loc["2009-06-01":"2011-01-31"]
    ixic.index.name = "Date"
    ixic.to_csv(folder / "ixic.csv")
    (folder / "grid.yaml").write_text(SPEC)
    return folder


@pytest.fixture(scope="module")
def first_run(grid_files: Path) -> tuple[Path, dict]:
    out = grid_files / "grid"
    outcome = run_grid(load_spec(grid_files / "grid.yaml"), out, workers=2)
    assert outcome.counts == {"pending": 0, "running": 0, "done": 27, "failed": 0, "total": 27}
    return out, _results(out)


def _results(out: Path) -> dict[str, tuple]:
    """Per cell key: its metrics and its trades, as stored and as written in its folder."""
    with GridStore.open(out, create=False) as store:
        rows = store.rows()
    return {
        r.cell.key: (r.metrics, (Path(r.out_dir) / "trades.csv").read_text(), r.cell)
        for r in rows
        if r.out_dir
    }


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_every_cell_equals_the_same_backtest_run_alone(
    first_run: tuple[Path, dict], grid_files: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out, results = first_run
    assert len(results) == 27
    for key, (metrics, trades, cell) in results.items():
        alone = tmp_path / cell.folder
        source = ["--ticker", cell.ticker] if cell.ticker else ["--data", cell.data_file]
        params = ["--fast", "5", "--slow", "20"] if cell.name == "sma-cross" else []
        code, stdout, err = _cli(
            capsys,
            "backtest",
            "-s",
            cell.name,
            *source,
            *params,
            "--start",
            cell.start,
            "--end",
            cell.end,
            "--cash",
            "50000",
            "--commission",
            "0.0005",
            "--slippage-bps",
            "2",
            "--max-position-pct",
            "0.5",
            "--seed",
            str(cell.seed),
            "--no-baselines",
            "--out",
            str(alone),
            "--json",
        )
        assert code == 0, err
        assert json.loads(stdout)["metrics"] == metrics, key
        assert (alone / "trades.csv").read_text() == trades, key
    board = json.loads((out / "leaderboard.json").read_text())
    assert [s["label"] for s in board["strategies"]][-1] == "buy-hold"
    assert board["grid"]["risk_caps"]["max_position_pct"] == 0.5
    sma = next(s for s in board["strategies"] if s["label"] == "sma-cross-5-20")
    assert (
        sma["done"] == 9 and sma["excess_ci95_pct"][0] <= sma["mean_excess_pct"] <= sma["excess_ci95_pct"][1]
    )
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2


def test_a_rerun_computes_nothing_and_report_json_prints_the_leaderboard(
    first_run: tuple[Path, dict], grid_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, results = first_run
    code, stdout, err = _cli(
        capsys, "grid", "run", str(grid_files / "grid.yaml"), "--out", str(out), "--json"
    )
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["computed"] == 0 and doc["counts"]["done"] == 27
    assert _results(out).keys() == results.keys()
    code, stdout, _ = _cli(capsys, "grid", "report", str(out), "--json")
    assert code == 0 and json.loads(stdout) == json.loads((out / "leaderboard.json").read_text())
    code, stdout, _ = _cli(capsys, "grid", "status", str(out), "--json")
    assert json.loads(stdout)["counts"]["done"] == 27


def test_one_worker_gives_the_same_results_as_two(first_run: tuple[Path, dict], grid_files: Path) -> None:
    _, results = first_run
    out = grid_files / "grid-1"
    run_grid(load_spec(grid_files / "grid.yaml"), out, workers=1)
    again = _results(out)
    assert {k: v[:2] for k, v in again.items()} == {k: v[:2] for k, v in results.items()}


@pytest.mark.parametrize(
    "content",
    [
        "Date,Open,High,Low,Close,Volume\n2010-01-04,1,2,0.5,1.5,100\n2010-01-05,abc,2,1,1,100\n",
        "Date,Open,Close\n2010-01-04,1,1.5\n2010-01-05,1.5,1.4\n",  # missing columns
    ],
    ids=["bad-rows", "missing-columns"],
)
def test_a_malformed_data_file_is_bad_input_exit_2_as_in_backtest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str
) -> None:
    """One kind of bad input, one exit code: the file `backtest --data` refuses with 2, a grid
    refuses with 2 too, before any cell runs and without writing the grid folder."""
    (tmp_path / "bad.csv").write_text(content)
    spec = tmp_path / "grid.yaml"
    spec.write_text(
        "data: {tickers: [GOOG], files: [bad.csv]}\n"
        "windows: [{start: 2010-01-04, end: 2010-03-31}]\n"
        "strategies: [{name: buy-hold}]\n"
    )
    out = tmp_path / "grid"
    code, _, err = _cli(capsys, "grid", "run", str(spec), "--out", str(out))
    assert code == 2 and err.count("error:") == 1 and "bad" in err and "Traceback" not in err
    assert not (out / "cells.sqlite").exists()
    code, _, err_bt = _cli(
        capsys, "backtest", "-s", "buy-hold", "--data", str(tmp_path / "bad.csv"), "-o", str(tmp_path / "bt")
    )
    assert code == 2 and err_bt.count("error:") == 1


def test_an_interrupted_grid_keeps_a_consistent_store_and_a_rerun_completes_it(
    first_run: tuple[Path, dict], grid_files: Path
) -> None:
    _, results = first_run
    out = grid_files / "grid-interrupted"
    spec = load_spec(grid_files / "grid.yaml")
    seen: list[str] = []

    def stop_after_five(cell, result) -> None:  # what Ctrl-C does: KeyboardInterrupt in the loop
        seen.append(cell.key)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_grid(spec, out, workers=2, on_result=stop_after_five)
    with GridStore.open(out, create=False) as store:
        counts = store.counts_of(store.rows())
    assert counts["running"] == 0 and counts["failed"] == 0 and counts["done"] == 5
    assert counts["pending"] == 22
    outcome = run_grid(spec, out, workers=2)
    assert outcome.computed == 22 and outcome.counts["done"] == 27
    assert {k: v[:2] for k, v in _results(out).items()} == {k: v[:2] for k, v in results.items()}
    assert len(expand(spec)) == 27
