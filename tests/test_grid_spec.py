"""Grid specs: key-path errors, expansion and seeds, changed-spec refusal, bad input through
the CLI (one `error:` line, documented exit code, nothing written). No Ray is started here:
everything checked below is refused before a cluster is joined."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

import pytest

from trading_agents.cli.app import main
from trading_agents.errors import ConfigError
from trading_agents.grid.cells import cell_hash, cell_seed, expand
from trading_agents.grid.spec import load_spec, shift, spec_from_text
from trading_agents.grid.store import GridStore, changed_keys

GOOD = """
data: {tickers: [goog, SPX]}
windows:
  rolling: {start: 2010-01-01, end: 2011-12-31, length: 1y, step: 6m}
strategies:
  - {name: sma-cross, fast: 5, slow: 20}
  - {name: random}
seed: 7
"""


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_expansion_order_labels_reference_and_seeds() -> None:
    spec = spec_from_text(GOOD)
    windows = [(w.start, w.end) for w in spec.window_list()]
    assert windows == [
        (dt.date(2010, 1, 1), dt.date(2010, 12, 31)),
        (dt.date(2010, 7, 1), dt.date(2011, 6, 30)),
        (dt.date(2011, 1, 1), dt.date(2011, 12, 31)),
    ]
    cells = expand(spec)
    assert len(cells) == 2 * 3 * 3  # buy-hold added as the yardstick
    assert cells[0].key == "GOOG|2010-01-01..2010-12-31|sma-cross-5-20"
    assert [c.label for c in cells[:3]] == ["sma-cross-5-20", "random", "buy-hold"]
    assert len({c.seed for c in cells}) == len(cells)
    assert cells[1].seed == cell_seed(7, cells[1].key) == expand(spec_from_text(GOOD))[1].seed
    assert cell_seed(8, cells[1].key) != cells[1].seed
    request = cells[1].request(Path("/g"), 7)
    assert request.seed == cells[1].seed and request.baselines is False
    assert request.response_cache == Path("/g/llm_cache.sqlite")
    assert shift(dt.date(2011, 1, 31), "1m") == dt.date(2011, 2, 28)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ("seed: 7\nbogus: 1", "spec: bogus: unknown key"),
        ("seed: -1", "spec: seed: Input should be greater than or equal to 0"),
        ("seed: 7\nrisk: {max_position_pct: 2}", "spec: risk.max_position_pct: Input should be less than"),
        ("seed: 7\nrisk: {max_positon_pct: 0.1}", "spec: risk.max_positon_pct: unknown key"),
        ("seed: 7\nbroker: {cash: abc}", "spec: broker.cash: Input should be a valid number"),
    ],
)
def test_bad_keys_are_named_by_their_path(patch: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        spec_from_text(GOOD.replace("seed: 7", patch))
    assert str(exc.value).startswith(message) and "configs/grids/example.yaml" in str(exc.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("fast: 5", "fast: five"), "strategies.0.fast: Input should be a valid integer"),
        (GOOD.replace("name: random", "name: rnd"), "strategies.1.name: Input should be"),
        (
            GOOD.replace("name: random", "name: random, model: embedded"),
            "strategies.1: model, blind and portfolio are for the agents strategy",
        ),
        (GOOD.replace("length: 1y", "length: 1 year"), "windows.rolling.length: String should match"),
        (GOOD.replace("length: 1y", "length: 5y"), "spec: the windows are empty"),
        (
            GOOD.replace("{name: random}", "{name: sma-cross, fast: 5, slow: 20}"),
            "two strategies are labelled",
        ),
        (
            "data: {}\nwindows: []\nstrategies: [{name: buy-hold}]",
            "spec: data: give tickers, files, a universe or several of them",
        ),
        (GOOD.replace("rolling:", "rolled:"), "windows.rolled: unknown key (did you mean 'rolling'?)"),
    ],
)
def test_bad_structure_is_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        spec_from_text(text)
    assert message in str(exc.value)


def test_changed_keys_allow_growth_but_name_changes() -> None:
    old = spec_from_text(GOOD).canonical()
    grown = spec_from_text(
        GOOD.replace("[goog, SPX]", "[GOOG, SPX, IXIC]").replace(
            "- {name: random}", "- {name: random}\n  - {name: macd}"
        )
    ).canonical()
    assert changed_keys(old, grown) == []
    changed = spec_from_text(
        GOOD.replace("seed: 7", "seed: 8\nbroker: {cash: 5000}").replace("fast: 5", "fast: 6")
    ).canonical()
    # a strategy is known by its label: new parameters read as the old label gone
    assert changed_keys(old, changed) == ["broker.cash", "seed", "strategies[sma-cross-5-20]"]


def _spec_file(tmp_path: Path, text: str = GOOD) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_changed_spec_is_refused_naming_keys_and_nothing_changes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = load_spec(_spec_file(tmp_path))
    out = tmp_path / "grid"
    with GridStore.open(out) as store:
        store.prepare(spec.canonical(), {"k": 1}, [(c, cell_hash(c, {})) for c in expand(spec)])
    before = (out / "cells.sqlite").read_bytes()
    changed = _spec_file(tmp_path, GOOD.replace("seed: 7", "seed: 9\nrisk: {max_position_pct: 0.5}"))
    code, _out, err = cli(capsys, "grid", "run", str(changed), "--out", str(out))
    assert code == 2 and err.count("error:") == 1
    assert "changed: " in err and "risk.max_position_pct" in err and "seed" in err
    assert (out / "cells.sqlite").read_bytes() == before


def _write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("Date,Open,High,Low,Close,Volume\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("text", "code", "needle"),
    [
        ("windows: [\n", 2, "grid.yaml"),
        (GOOD.replace("bogus", "x").replace("seed: 7", "seed: 7\nextra: 1"), 2, "extra: unknown key"),
        (GOOD.replace("[goog, SPX]", "[ZZZQQ]"), 4, "ZZZQQ"),
        (
            GOOD.replace(
                "rolling: {start: 2010-01-01, end: 2011-12-31, length: 1y, step: 6m}",
                "[{start: 2020-01-01, end: 2020-02-01}]",
            ),
            2,
            "start 2020-01-01 is after the last bar (2013-03-01)",
        ),
        (GOOD.replace("{name: random}", "{name: agents, model: nosuch-model}"), 2, "nosuch-model"),
        (
            GOOD.replace("data: {tickers: [goog, SPX]}", "data: {files: [missing.csv]}"),
            2,
            "missing.csv does not exist",
        ),
    ],
)
def test_bad_input_is_one_error_line_with_its_exit_code_and_nothing_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, code: int, needle: str
) -> None:
    out = tmp_path / "grid"
    got, stdout, err = cli(capsys, "grid", "run", str(_spec_file(tmp_path, text)), "--out", str(out))
    assert got == code, err
    assert err.count("error:") == 1 and needle in err and "Traceback" not in err
    assert not out.exists() and stdout == ""


def test_unreachable_address_is_exit_7_before_anything_is_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "grid"
    code, _, err = cli(
        capsys, "grid", "run", str(_spec_file(tmp_path)), "--out", str(out), "--address", f"127.0.0.1:{port}"
    )
    assert code == 7 and "cannot reach the Ray cluster" in err and err.count("error:") == 1
    assert not out.exists()


def test_status_of_a_folder_without_grid_is_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = cli(capsys, "grid", "status", str(tmp_path))
    assert code == 2 and "holds no grid" in err


def test_the_shipped_example_is_valid() -> None:
    spec = load_spec(Path(__file__).resolve().parents[1] / "configs" / "grids" / "example.yaml")
    assert len(expand(spec)) == 5 * 15 * 4 and spec.reference_label() == "buy-hold"


NEWS_SPEC = """
data:
  tickers: [GOOG, SPX]
  news: {GOOG: goog.jsonl}
windows: [{start: 2013-01-02, end: 2013-03-01}]
strategies:
  - {name: agents, model: embedded}
  - {name: sma-cross}
"""


def test_news_per_data_item_reaches_only_that_items_agent_cells(tmp_path: Path) -> None:
    (tmp_path / "goog.jsonl").write_text(
        '{"published_at": "2013-02-01T10:00:00-05:00", "ticker": "GOOG", "headline": "h"}\n'
    )
    (tmp_path / "grid.yaml").write_text(NEWS_SPEC)
    spec = load_spec(tmp_path / "grid.yaml")
    news = str((tmp_path / "goog.jsonl").resolve())
    requests = {(c.data, c.name): c.request(tmp_path, spec.seed) for c in expand(spec)}
    assert requests[("GOOG", "agents")].news == news  # relative to the spec's folder
    assert requests[("SPX", "agents")].news is None
    assert requests[("GOOG", "sma-cross")].news is None  # rules read no news


@pytest.mark.parametrize(
    ("news", "message"),
    [
        ("{IBM: goog.jsonl}", "data.news: Value error, news for IBM, which is no data item"),
        ("{GOOG: missing.jsonl}", "data.news.GOOG: "),
    ],
)
def test_bad_news_entries_are_named(tmp_path: Path, news: str, message: str) -> None:
    (tmp_path / "goog.jsonl").write_text("")
    (tmp_path / "grid.yaml").write_text(NEWS_SPEC.replace("{GOOG: goog.jsonl}", news))
    with pytest.raises(ConfigError) as exc:
        load_spec(tmp_path / "grid.yaml")
    assert message.replace("Value error, ", "") in str(exc.value)
