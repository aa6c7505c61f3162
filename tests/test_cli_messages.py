"""What the CLI says to a newcomer: help without Python type names, the exit-code list once,
no empty ``error:``, one line naming the mistake and a fix, full names in piped tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from tests.test_bad_input_matrix import assert_one_error, cli
from trading_agents.cli.app import app

EXIT_CODES = "Exit codes: 0 ok, 1 internal error"


def _commands() -> list[list[str]]:
    """Every command path of the CLI: ``[]``, ``["backtest"]``, ``["grid", "run"]``, ..."""
    out: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        out.append(path)
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return out


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "top")
def test_help_has_readable_metavars_and_the_exit_code_list_only_at_the_top(
    capsys: pytest.CaptureFixture[str], path: list[str]
) -> None:
    code, stdout, err = cli(capsys, *path, "--help")
    assert code == 0 and err == ""
    for typename in ("<bool>", "<str>", "<int>", "<float>", "<path>", "<list[str]>", "[bool]"):
        assert typename not in stdout, (typename, stdout)
    assert stdout.count(EXIT_CODES) == (1 if not path else 0), stdout
    assert stdout.count("Exit codes") <= 1, stdout  # a command's own codes at most once


def test_backtest_help_shows_what_to_write() -> None:
    from trading_agents.cli.help_text import tidy_metavars

    command = tidy_metavars(typer.main.get_command(app)).commands["backtest"]
    shown = {p.name: p.metavar for p in command.params}
    assert shown["data"] == "FILE" and shown["start"] == "YYYY-MM-DD" and shown["ticker"] == "TICKER"
    assert shown["out"] == "DIR" and shown["fast"] == "N" and shown["cash"] == "NUMBER"
    assert shown["blind"] == "" and shown["json_out"] == ""  # flags: nothing to write after them


@pytest.mark.parametrize("argv", [[], ["grid"], ["models"], ["bench"]], ids=lambda a: " ".join(a) or "none")
def test_no_arguments_prints_the_help_and_no_empty_error(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, stdout, err = cli(capsys, *argv)
    assert code in (0, 2)
    assert "Usage:" in stdout + err and "error:" not in err


def test_a_start_after_the_data_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(
        capsys, "backtest", "-s", "sma-cross", "--start", "2031-01-01", "-o", str(tmp_path / "x")
    )
    assert_one_error(code, err, exit_code=2, needle="--start 2031-01-01 is after the last bar (2013-03-01)")
    assert "....." not in err and not (tmp_path / "x").exists()


def test_a_grid_spec_typo_is_named_with_did_you_mean(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = tmp_path / "grid.yaml"
    spec.write_text(
        "data: {tickers: [GOOG]}\n"
        "windws: [{start: 2010-01-04, end: 2010-12-31}]\n"
        "strategies: [{name: buy-hold}]\n"
    )
    code, _, err = cli(capsys, "grid", "run", str(spec), "--out", str(tmp_path / "g"))
    assert_one_error(code, err, exit_code=2, needle="windws: unknown key (did you mean 'windows'?)")
    assert "Field required" not in err and "more)" not in err


def test_a_config_typo_is_named_with_did_you_mean(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("risk:\n  max_postion_pct: 0.1\n")
    code, _, err = cli(capsys, "backtest", "-s", "buy-hold", "-c", str(config), "-o", str(tmp_path / "x"))
    assert_one_error(
        code, err, exit_code=2, needle="risk.max_postion_pct: unknown key (did you mean 'max_position_pct'?)"
    )


def test_piped_tables_have_headers_and_full_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = cli(capsys, "models", "list")
    assert code == 0
    assert "mixtral-8x7b-instruct" in stdout and "smollm2-135m-instruct" in stdout  # not cut mid-word
    assert "…" not in stdout
    header = next(line for line in stdout.splitlines() if "name" in line and "aliases" in line)
    assert "status" in header
