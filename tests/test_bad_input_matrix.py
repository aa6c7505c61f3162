"""Bad input through the real CLI: each case exits non-zero with one ``error:`` line, no traceback,
and nothing written or lost (config files unchanged, no results folder, no ledger step consumed).

Cases already covered elsewhere are not repeated here: ``models verify`` on bad files
(tests/test_models_cli.py), the backtest flag checks (tests/test_backtest_cli.py), ``run`` flag
checks (tests/test_session.py), the CSV parser's row-level messages (tests/test_market_data.py).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trading_agents.cli.app import main
from trading_agents.fsutil import exclusive_lock
from trading_agents.market import yahoo
from trading_agents.model_files.registry import embedded_model_path

GOOD_ROWS = [
    ("2024-01-02", 10.0, 11.0, 9.5, 10.5, 1000),
    ("2024-01-03", 10.5, 11.5, 10.0, 11.0, 1200),
    ("2024-01-04", 11.0, 11.2, 10.1, 10.2, 900),
    ("2024-01-05", 10.2, 10.8, 9.9, 10.6, 1100),
    ("2024-01-08", 10.6, 11.4, 10.4, 11.3, 1300),
]
HEADER = "Date,Open,High,Low,Close,Volume"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def assert_one_error(code: int, err: str, *, exit_code: int, needle: str) -> None:
    """Non-zero documented exit, exactly one stderr line, starting with ``error:``, no traceback."""
    assert code == exit_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert needle in lines[0], err
    assert "Traceback" not in err


def csv_text(rows: list[tuple[object, ...]], header: str = HEADER) -> str:
    return "\n".join([header, *(",".join(str(v) for v in r) for r in rows)]) + "\n"


# -- market data files, through `backtest --data` ---------------------------------------------------


def _rows_with(i: int, **changes: object) -> list[tuple[object, ...]]:
    rows = [list(r) for r in GOOD_ROWS]
    cols = {"date": 0, "open": 1, "high": 2, "low": 3, "close": 4, "volume": 5}
    for key, value in changes.items():
        rows[i][cols[key]] = value
    return [tuple(r) for r in rows]


def _split_rows() -> list[tuple[object, ...]]:
    rows = [(f"2024-01-{d:02d}", 100.0, 101.0, 99.0, 100.0, 1000) for d in (2, 3, 4, 5)]
    rows += [(f"2024-01-{d:02d}", 50.0, 50.5, 49.5, 50.0, 2000) for d in (8, 9, 10)]  # 2:1, unadjusted
    return rows


DATA_CASES: dict[str, tuple[str | bytes, str]] = {
    "empty file": ("", "empty"),
    "header only": (HEADER + "\n", "no"),
    "missing Close column": (
        csv_text([r[:4] + r[5:] for r in GOOD_ROWS], "Date,Open,High,Low,Volume"),
        "Close",
    ),
    "NaN close": (csv_text(_rows_with(2, close="NaN")), "2024-01-04"),
    "empty cell": (csv_text(_rows_with(1, open="")), "2024-01-03"),
    "text in a number": (csv_text(_rows_with(3, high="abc")), "2024-01-05"),
    "duplicate dates": (csv_text(_rows_with(2, date="2024-01-03")), "2024-01-03"),
    "unsorted dates": (csv_text([GOOD_ROWS[1], GOOD_ROWS[0], *GOOD_ROWS[2:]]), "2024-01-0"),
    "negative price": (csv_text(_rows_with(1, low=-1.0)), "2024-01-03"),
    "zero price": (csv_text(_rows_with(4, open=0.0, low=0.0)), "2024-01-08"),
    "negative volume": (csv_text(_rows_with(0, volume=-5)), "2024-01-02"),
    "high below low": (csv_text(_rows_with(1, high=9.0)), "2024-01-03"),
    "unparseable date": (csv_text(_rows_with(2, date="2024-13-45")), "date"),
    "unadjusted 2:1 split": (csv_text(_split_rows()), "split"),
    "binary garbage": (bytes(range(256)) * 8, "data"),
    "ragged rows": (HEADER + "\n2024-01-02,1,2\n2024-01-03,1,2,0.5,1.5,10,99,98\n", "data"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_market_data_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str) -> None:
    content, needle = DATA_CASES[case]
    data = tmp_path / "prices.csv"
    if isinstance(content, bytes):
        data.write_bytes(content)
    else:
        data.write_text(content)
    before = data.read_bytes()
    out = tmp_path / "results"
    code, stdout, err = cli(
        capsys, "backtest", "-s", "buy-hold", "--no-baselines", "--data", str(data), "--out", str(out)
    )
    assert_one_error(code, err, exit_code=2, needle="")
    assert needle.lower() in err.lower()
    assert stdout == ""
    assert not out.exists()  # no half-written results folder
    assert data.read_bytes() == before


def test_zero_volume_and_gaps_are_warnings_not_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rows = _rows_with(1, volume=0)
    rows[3] = ("2024-01-19", *rows[3][1:])  # two weeks missing
    rows[4] = ("2024-01-22", *rows[4][1:])
    data = tmp_path / "prices.csv"
    data.write_text(csv_text(rows))
    out = tmp_path / "results"
    code, stdout, err = cli(
        capsys,
        "backtest",
        "-s",
        "buy-hold",
        "--no-baselines",
        "--data",
        str(data),
        "--out",
        str(out),
        "--json",
    )
    assert code == 0, err
    assert (out / "summary.json").is_file() and stdout.lstrip().startswith("{")


def test_unknown_ticker_and_network_down_exit_4(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real yfinance request, sent to a proxy where nothing listens (Yahoo is unreachable)."""
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setattr(yahoo.YahooProvider, "_backoff", lambda self, *a: None)
    out = tmp_path / "results"
    code, stdout, err = cli(capsys, "backtest", "-s", "buy-hold", "--ticker", "ZZZQX", "--out", str(out))
    assert_one_error(code, err, exit_code=4, needle="ZZZQX")
    assert "bundled ticker" in err and stdout == "" and not out.exists()
    code, _, err = cli(capsys, "run", "--ticker", "ZZZQX", "--json")
    assert_one_error(code, err, exit_code=4, needle="ZZZQX")
    assert not (tmp_path / "home" / "ledger.sqlite").exists()


def test_backtest_error_is_printed_once_in_a_plain_process(tmp_path: Path) -> None:
    """Without --log-file, logging's last-resort handler once printed the error a second time."""
    data = tmp_path / "prices.csv"
    data.write_text(csv_text(_rows_with(2, date="2024-01-03")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADING_AGENTS_")}
    env["TRADING_AGENTS_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-m", "trading_agents.cli.app", "backtest", "-s", "buy-hold", "--data", str(data),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("duplicate") == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- configs -----------------------------------------------------------------------------------------

CONFIG_CASES: dict[str, tuple[str, str]] = {
    "invalid YAML": ("llm:\n  n_ctx: [1\n", "line 3"),
    "tab indentation": ("llm:\n\tn_ctx: 1\n", "line 2"),
    "top level is a list": ("- llm\n- risk\n", "top level must be a mapping"),
    "unknown section": ("brokerage:\n  cash: 1\n", "brokerage: unknown key"),
    "unknown key": ("llm:\n  n_ctxx: 4096\n", "llm.n_ctxx: unknown key"),
    "wrong type": ("risk:\n  max_position_pct: lots\n", "risk.max_position_pct"),
    "out of range": ("risk:\n  max_position_pct: 5\n", "risk.max_position_pct"),
    "wrong type of section": ("llm: 7\n", "llm"),
    "list where a mapping is": ("broker: [1, 2]\n", "broker"),
    "bad literal": ("session:\n  mode: live\n", "session.mode"),
    "not UTF-8": ("\udcff", "cannot read config file"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, isolated_state: Path, case: str
) -> None:
    text, needle = CONFIG_CASES[case]
    config = tmp_path / "config.yaml"
    config.write_bytes(text.encode("utf-8", "surrogateescape"))
    before = config.read_bytes()
    for argv in (
        ["ledger", "--json"],
        ["backtest", "-s", "buy-hold", "--no-baselines", "--out", str(tmp_path / "out")],
        ["models", "use", "tinyllama"],
    ):
        code, stdout, err = cli(capsys, *argv, "--config", str(config))
        assert_one_error(code, err, exit_code=2, needle=needle)
        if case not in ("invalid YAML", "tab indentation", "top level is a list", "not UTF-8"):
            assert str(config) in err  # the source is named
        assert stdout == ""
    assert config.read_bytes() == before  # `models use` did not rewrite a broken config
    assert not (tmp_path / "out").exists()
    assert not (isolated_state / "ledger.sqlite").exists()


def test_missing_config_and_directory_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, "ledger", "--config", str(tmp_path / "nope.yaml"))
    assert_one_error(code, err, exit_code=2, needle="does not exist")
    code, _, err = cli(capsys, "ledger", "--config", str(tmp_path))
    assert_one_error(code, err, exit_code=2, needle="is a directory")


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("TRADING_AGENTS_LLM__N_CTX", "lots", "TRADING_AGENTS_LLM__N_CTX"),
        ("TRADING_AGENTS_RISK__MAX_DRAWDOWN_PCT", "-1", "TRADING_AGENTS_RISK__MAX_DRAWDOWN_PCT"),
        ("TRADING_AGENTS_BROKER__CASHH", "5", "broker"),
        ("TRADING_AGENTS_SELECTOR__FALLBACK_ROLES", "not json", "TRADING_AGENTS_SELECTOR__FALLBACK_ROLES"),
    ],
)
def test_bad_environment_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, var: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(var, value)
    code, _, err = cli(capsys, "ledger", "--json")
    assert_one_error(code, err, exit_code=2, needle=needle)


# -- model files and model paths, through `run` -----------------------------------------------------


def _header_copy(dest: Path, patch: dict[bytes, bytes] | None = None, tensor_type: int | None = None) -> Path:
    """A copy of the embedded GGUF whose header is patched; the weights stay sparse zeros."""
    src = embedded_model_path()
    size = src.stat().st_size
    with src.open("rb") as fh:
        head = bytearray(fh.read(4 << 20))
    for old, new in (patch or {}).items():
        assert len(old) == len(new)
        head = bytearray(bytes(head).replace(old, new))
    if tensor_type is not None:  # the first tensor's ggml type -> an id no ggml build knows
        name = b"token_embd.weight"
        at = head.index(name) + len(name)
        (n_dims,) = struct.unpack_from("<I", head, at)
        struct.pack_into("<I", head, at + 4 + 8 * n_dims, tensor_type)
    with dest.open("wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return dest


def _models_config(tmp_path: Path, primary: str, fallback: str | None = None) -> Path:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"paths": {"models_dir": str(models)}, "llm": {"primary": primary, "fallback": fallback}}
        )
    )
    return config


TINYLLAMA_FILE = "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"


def _make_model(kind: str, models: Path) -> tuple[str, int, str]:
    """Write a bad model file of ``kind``; returns (llm.primary value, exit code, message needle)."""
    target = models / "bad.gguf"
    if kind == "missing":
        return "bad.gguf", 2, "does not exist"
    if kind == "empty":
        target.write_bytes(b"")
        return "bad.gguf", 2, "is empty"
    if kind == "header cut short":
        target.write_bytes(embedded_model_path().read_bytes()[:3000])
        return "bad.gguf", 2, "truncated (header cut short)"
    if kind == "weights cut short":
        _header_copy(target)
        os.truncate(target, target.stat().st_size - 4096)
        return "bad.gguf", 2, "is truncated"
    if kind == "not GGUF":
        target.write_text("<html><body>404 Not Found</body></html>\n")
        return "bad.gguf", 2, "not a GGUF file"
    if kind == "a directory":
        target.mkdir()
        return "bad.gguf", 2, "is a directory"
    if kind == "unsupported tensor type":
        _header_copy(target, tensor_type=77)
        return "bad.gguf", 2, "tensor type 77"
    if kind == "wrong architecture for its registry entry":
        _header_copy(models / TINYLLAMA_FILE, patch={b"llama": b"qwen2"})
        return "tinyllama-1.1b-chat", 2, "is a qwen2 model but tinyllama-1.1b-chat is llama"
    if kind == "architecture llama.cpp does not know":
        _header_copy(target, patch={b"llama": b"xyzzy"})
        return "bad.gguf", 3, "could not load"
    raise AssertionError(kind)


MODEL_CASES = [
    "missing",
    "empty",
    "header cut short",
    "weights cut short",
    "not GGUF",
    "a directory",
    "unsupported tensor type",
    "wrong architecture for its registry entry",
    "architecture llama.cpp does not know",
]


@pytest.mark.parametrize("kind", MODEL_CASES)
def test_bad_model_file_stops_the_session_before_any_bar(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, isolated_state: Path, kind: str
) -> None:
    (tmp_path / "models").mkdir()
    primary, exit_code, needle = _make_model(kind, tmp_path / "models")
    config = _models_config(tmp_path, primary)
    code, stdout, err = cli(capsys, "run", "--date", "2013-02-28", "--json", "--config", str(config))
    assert_one_error(code, err, exit_code=exit_code, needle=needle)
    assert stdout == ""
    assert not (isolated_state / "ledger.sqlite").exists()  # no bar was recorded as decided


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_model_path_escaping_the_models_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, isolated_state: Path, how: str
) -> None:
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(embedded_model_path().read_bytes()[:64])
    models = tmp_path / "models"
    models.mkdir()
    primary = {"dotdot": "../outside.gguf", "absolute": str(outside), "symlink": "link.gguf"}[how]
    if how == "symlink":
        (models / "link.gguf").symlink_to(outside)
    config = _models_config(tmp_path, primary)
    before = config.read_bytes()
    for argv in (["run", "--date", "2013-02-28"], ["backtest", "-s", "agents", "--out", str(tmp_path / "o")]):
        code, _, err = cli(capsys, *argv, "--config", str(config))
        assert_one_error(code, err, exit_code=2, needle="escapes the models folder")
    assert config.read_bytes() == before and not (tmp_path / "o").exists()
    assert not (isolated_state / "ledger.sqlite").exists()


# -- locks and disk ----------------------------------------------------------------------------------


def test_second_session_on_a_held_ledger_exits_6_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, isolated_state: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("llm:\n  primary: smollm2-135m-instruct\n  fallback: null\n")
    ledger_lock = isolated_state / "ledger.sqlite.lock"
    with exclusive_lock(ledger_lock, "test holder"):
        code, _, err = cli(capsys, "run", "--date", "2013-02-28", "--json", "--config", str(config))
    assert_one_error(code, err, exit_code=6, needle="holds")
    import sqlite3

    with sqlite3.connect(isolated_state / "ledger.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 0


def test_full_disk_while_writing_results_leaves_no_partial_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from trading_agents import fsutil

    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the third results file hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    out = tmp_path / "results"
    code, _, err = cli(capsys, "backtest", "-s", "sma-cross", "--no-baselines", "--out", str(out))
    assert_one_error(code, err, exit_code=7, needle="free some disk space")
    leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not [n for n in leftovers if n.endswith(".tmp") or n.startswith(".")], leftovers
    monkeypatch.setattr(fsutil.os, "fsync", real_fsync)
    code, _, err = cli(capsys, "backtest", "-s", "sma-cross", "--no-baselines", "--out", str(out))
    assert code == 0, err  # the same folder is usable once space is back
    assert (out / "summary.json").is_file()


def test_full_disk_never_leaves_a_summary_of_an_incomplete_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from trading_agents import fsutil

    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    out = tmp_path / "results"
    code, _, _ = cli(capsys, "backtest", "-s", "sma-cross", "--no-baselines", "--out", str(out))
    assert code == 7
    if (out / "summary.json").exists():
        assert {"equity.csv", "trades.csv", "decisions.jsonl", "report.html"} <= {
            p.name for p in out.iterdir()
        }


def test_read_only_results_folder_exits_7(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        code, _, err = cli(capsys, "backtest", "-s", "buy-hold", "--out", str(parent / "out"))
        assert_one_error(code, err, exit_code=7, needle="cannot write")
        code, _, err = cli(capsys, "backtest", "-s", "buy-hold", "--out", str(parent))
        assert_one_error(code, err, exit_code=7, needle="cannot write")
    finally:
        parent.chmod(0o700)
    assert list(parent.iterdir()) == []


# -- flags and the exit code of a halted session -----------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["backtest", "--bogus"],
        ["backtest", "--cash", "abc"],
        ["run", "--days", "0"],
        ["nosuch-command"],
        ["models", "verify", "a", "b", "c"],
        ["halt", "--run"],
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, stdout, err = cli(capsys, *argv)
    assert_one_error(code, err, exit_code=2, needle="--help")
    assert stdout == ""


def test_a_session_that_ends_halted_exits_5(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, isolated_state: Path
) -> None:
    """The session ledger already holds the bar (no model call needed); halted, `run` exits 5."""
    import pandas as pd

    from trading_agents.core import EngineConfig, StrategyDecision, run_engine
    from trading_agents.journal import Ledger
    from trading_agents.market import load_bars

    class QuietDesk:
        name = "agents"

        def decide(self, ctx: object) -> StrategyDecision:
            return StrategyDecision([])

    with Ledger.open(isolated_state / "ledger.sqlite") as ledger:
        day = pd.Timestamp("2013-02-28")
        config = EngineConfig(decide_on_last_bar=True, close_at_end=False)
        run_engine(
            load_bars(tickers=["GOOG"]),
            QuietDesk(),
            config,
            ledger,
            "paper",
            kind="session",
            start=day,
            end=day,
        )  # type: ignore[arg-type]
    config_file = tmp_path / "config.yaml"
    config_file.write_text("llm:\n  primary: smollm2-135m-instruct\n  fallback: null\n")
    code, _, err = cli(capsys, "halt", "test halt", "--config", str(config_file))
    assert code == 0, err
    code, stdout, err = cli(capsys, "run", "--date", "2013-02-28", "--json", "--config", str(config_file))
    assert code == 5, err
    summary = json.loads(stdout)
    assert summary["account"]["risk_state"] == "HALTED" and summary["resumed_steps"] == 1
    assert "HALTED" in err and "Traceback" not in err
    code, _, err = cli(capsys, "resume", "--config", str(config_file))
    assert code == 0, err
    code, stdout, err = cli(capsys, "run", "--date", "2013-02-28", "--json", "--config", str(config_file))
    assert code == 0, err
