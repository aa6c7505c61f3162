"""`trading-agents dashboard` in a real browser (headless Debian Chromium via Playwright) over
real data: a real backtest results folder, a real grid run on Ray, and a real `run` on the
embedded model whose live page gains a decision row with no reload. Key rules, missing,
corrupt and newer-schema sources. Screenshots go to each test's temporary folder (and to
``$DASHBOARD_SCREENSHOTS`` when set: how ``docs/dashboard/`` is refreshed)."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pandas as pd
import pytest

from tests.dashboard_browser import Page, browser, serving
from tests.ray_cluster import ray_cluster  # noqa: F401  (module-scoped fixture)
from trading_agents.cli.app import main
from trading_agents.config.settings import load_settings
from trading_agents.dashboard.app import DashboardConfig, asgi_app
from trading_agents.grid.run import run_grid
from trading_agents.grid.spec import spec_from_text
from trading_agents.journal import Ledger
from trading_agents.serve.access import bind_socket

GRID_SPEC = """
data: {tickers: [GOOG, SPX]}
windows:
  - {start: 2012-01-03, end: 2012-06-29}
  - {start: 2012-07-02, end: 2012-12-31}
strategies:
  - {name: sma-cross, fast: 5, slow: 20}
  - {name: buy-hold}
seed: 3
"""
LIVE_TIMEOUT_MS = 900_000  # a real model on a shared 2-core machine: wait, never race
KEY = "s3cret-dashboard-key"


def _shot(page: Page, tmp: Path, name: str) -> None:
    page.shot(tmp / f"{name}.png")
    docs = os.environ.get("DASHBOARD_SCREENSHOTS")
    if docs:
        page.shot(Path(docs) / f"{name}.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None) -> Iterator[dict[str, Path]]:  # noqa: F811
    """A home, and a results root with one backtest and one grid (both made by the real code)."""
    root = tmp_path_factory.mktemp("results")
    bt = root / "sma-goog"
    with pytest.raises(SystemExit) as done:
        main(
            [
                "backtest",
                "--strategy",
                "sma-cross",
                "--ticker",
                "GOOG",
                "--start",
                "2011-01-03",
                "--end",
                "2012-12-31",
                "--out",
                str(bt),
                "--json",
            ]
        )
    assert done.value.code in (0, None)
    run_grid(spec_from_text(GRID_SPEC), root / "grid", workers=1)
    yield {"root": root, "backtest": bt, "grid": root / "grid"}


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as b:
        yield b


def _app(home: Path, roots: list[Path], key: str | None = None) -> Any:
    settings = load_settings(None, {"paths.home": str(home)})
    return asgi_app(DashboardConfig(settings=settings, roots=roots, api_key=key, live_poll_s=0.2))


def test_live_run_gains_a_decision_row_with_no_reload_then_every_page_loads_clean(
    world: dict[str, Path], chromium: Any, isolated_state: Path, tmp_path: Path
) -> None:
    home = isolated_state
    with serving(_app(home, [world["root"]])) as base:
        context = chromium.new_context(viewport={"width": 1300, "height": 900})
        page = Page(context)
        page.open(f"{base}/accounts/live", live=True)
        assert "no ledger" in page.page.inner_text("#message")  # the run has not started
        page.page.evaluate("window.__notReloaded = true")
        env = {**os.environ, "TRADING_AGENTS_HOME": str(home)}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trading_agents.cli.app",
                "run",
                "--account",
                "live",
                "--ticker",
                "GOOG",
                "--start",
                "2013-02-26",
                "--end",
                "2013-02-27",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            page.page.wait_for_selector("#decisions tbody tr.decision", timeout=LIVE_TIMEOUT_MS)
            assert page.page.evaluate("window.__notReloaded === true")  # the row came with no reload
            _, err = proc.communicate(timeout=LIVE_TIMEOUT_MS / 1000)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        # the stream delivered both bars' decisions and the account figures, still no reload
        page.page.wait_for_function(
            "document.querySelectorAll('#decisions tbody tr.decision').length >= 2", timeout=LIVE_TIMEOUT_MS
        )
        assert page.page.evaluate("window.__notReloaded === true")
        page.page.wait_for_function(
            "document.getElementById('equity-chart').data[0].y.length === 2", timeout=LIVE_TIMEOUT_MS
        )
        assert page.errors == []

        with Ledger.open_reader(home / "ledger.sqlite") as led:
            acct = led.account("live")
            steps = led.step_count("live")
        assert acct is not None and steps == 2
        assert page.page.inner_text("#equity") == f"{acct.last_equity:,.2f}"  # updated live
        page.open(f"{base}/accounts/live", live=True)
        points = page.page.evaluate("document.getElementById('equity-chart').data[0].y")
        assert len(points) == steps and points[-1] == pytest.approx(acct.last_equity, abs=1e-6)
        rows = page.page.locator("#decisions tbody tr.decision")
        assert rows.count() == 2
        assert (
            "analyst" in rows.first.inner_text()
            and "smollm2-135m-instruct (primary)" in rows.first.inner_text()
        )
        assert page.page.locator("#halt").count() == 0  # read-only without a key
        _shot(page, tmp_path, "account")

        for path, name in (
            ("/", "overview"),
            ("/backtests/0/sma-goog", "backtest"),
            ("/grids/0/grid", "grid"),
            ("/models", "models"),
        ):
            page.open(base + path)
            assert page.page.locator(".message").count() == (1 if name == "models" else 0), path  # no serve
            _shot(page, tmp_path, name)
        assert page.errors == [], page.errors
        context.close()


def test_running_agents_backtest_page_gains_rows_and_points_with_no_reload(
    chromium: Any, isolated_state: Path, tmp_path: Path
) -> None:
    """A real ``backtest --strategy agents`` on the embedded model journals each bar into its
    results folder's ledger: the overview lists it as running and its page, opened while it
    runs, gains decision rows and chart points over the event stream, then says it finished."""
    root = tmp_path / "results"
    out = root / "agents-live"
    env = {**os.environ, "TRADING_AGENTS_HOME": str(isolated_state)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trading_agents.cli.app",
            "backtest",
            "--strategy",
            "agents",
            "--ticker",
            "GOOG",
            "--start",
            "2013-02-25",
            "--end",
            "2013-02-27",
            "--no-baselines",
            "--out",
            str(out),
            "--json",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Paused as soon as its ledger exists (before the model has answered a bar), the run
        # cannot finish while the page opens, however slow the machine is.
        while not (out / "ledger.sqlite").is_file():
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.02)
        proc.send_signal(signal.SIGSTOP)
        with serving(_app(isolated_state, [root])) as base:
            context = chromium.new_context(viewport={"width": 1300, "height": 900})
            page = Page(context)
            page.open(base + "/")
            assert "running" in page.page.inner_text("#backtest-list")
            page.open(f"{base}/backtests/0/agents-live", live=True)
            assert "(running)" in page.page.inner_text("h1")
            shown = int(page.page.get_attribute("#live", "data-steps") or 0)
            rows = page.page.locator("#decisions tbody tr.decision").count()
            assert rows < 2 and shown < 3  # bars 1 and 2 each record a decision; bar 3 none
            page.page.evaluate("window.__notReloaded = true")
            proc.send_signal(signal.SIGCONT)
            page.page.wait_for_function(
                f"document.querySelectorAll('#decisions tbody tr.decision').length > {rows}"
                f" && document.getElementById('equity-chart').data[0].y.length > {shown}",
                timeout=LIVE_TIMEOUT_MS,
            )
            assert page.page.evaluate("window.__notReloaded === true")
            _, err = proc.communicate(timeout=LIVE_TIMEOUT_MS / 1000)
            assert proc.returncode == 0, err
            page.page.wait_for_function(
                "document.getElementById('live-status').textContent.startsWith('finished')",
                timeout=LIVE_TIMEOUT_MS,
            )
            assert page.page.evaluate("window.__notReloaded === true")
            with Ledger.open_reader(out / "ledger.sqlite") as led:
                (run,) = led.runs()
                steps, decisions = led.step_count(run.run_id), led.decision_count(run.run_id)
                acct = led.account(run.run_id)
            assert (steps, decisions) == (3, 2) and acct is not None
            equity = acct.last_equity
            assert page.page.locator("#decisions tbody tr.decision").count() == decisions
            points = page.page.evaluate("document.getElementById('equity-chart').data[0].y")
            assert len(points) == steps and points[-1] == pytest.approx(equity, abs=1e-6)
            assert page.page.inner_text("#equity") == f"{equity:,.2f}"
            assert page.errors == [], page.errors
            _shot(page, tmp_path, "backtest-live")
            page.open(f"{base}/backtests/0/agents-live")  # finished: the full results page
            assert page.page.locator(".message").count() == 0
            context.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    # the folder holds what an exported ledger leaves: one settled file, no WAL or lock beside it
    names = {p.name for p in out.iterdir()}
    assert {"ledger.sqlite", "summary.json", "equity.csv"} <= names
    assert not [n for n in names if n.endswith(("-wal", "-shm", ".lock"))], names
    assert (out / "ledger.sqlite").read_bytes()[18] == 1  # rollback-journal mode: the file is whole
    with Ledger.open_reader(out / "ledger.sqlite") as led:
        (run,) = led.runs()
        assert run.status == "completed" and led.reconcile(run.run_id) == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["run_id"] == run.run_id


def test_backtest_equity_chart_has_one_point_per_bar_ending_on_the_ledger_equity(
    world: dict[str, Path], chromium: Any, isolated_state: Path
) -> None:
    folder = world["backtest"]
    bars = len(pd.read_csv(folder / "equity.csv"))
    summary = json.loads((folder / "summary.json").read_text())
    with Ledger.open_reader(folder / "ledger.sqlite") as led:
        final = led.account(summary["meta"]["run_id"]).last_equity
    with serving(_app(isolated_state, [world["root"]])) as base:
        page = Page(chromium.new_context())
        page.open(f"{base}/backtests/0/sma-goog")
        series = page.page.evaluate(
            "document.getElementById('equity-chart').data.map(t => [t.name, t.y.length, t.y[t.y.length - 1]])"
        )
        assert series[0][1] == bars == summary["meta"]["window"]["bars"]
        assert series[0][2] == pytest.approx(final, abs=0.01)
        names = {s[0] for s in series[1:]}
        assert {
            "buy & hold (uncapped, no costs)",
            "buy-hold (under the run's caps)",
            "random (under the run's caps)",
        } <= names and all(s[1] == bars for s in series)
        assert page.page.evaluate("document.getElementById('drawdown-chart').data[0].y.length") == bars
        assert "max_position_pct" in page.page.inner_text("#caps")
        assert page.errors == []


def test_grid_heatmap_cell_opens_that_cells_backtest_page(
    world: dict[str, Path], chromium: Any, isolated_state: Path
) -> None:
    board = json.loads((world["grid"] / "leaderboard.json").read_text())
    with serving(_app(isolated_state, [world["root"]])) as base:
        page = Page(chromium.new_context())
        page.open(f"{base}/grids/0/grid")
        assert page.page.locator("#leaderboard tbody tr").count() == len(board["strategies"])
        assert page.page.evaluate("document.getElementById('distribution-chart').data.length") == 2
        link = page.page.locator("a.heat-cell").first
        href = link.get_attribute("href")
        cell = next(c for c in board["cells"] if c["status"] == "done" and Path(c["out_dir"]).name in href)
        link.click()
        page.page.wait_for_load_state("networkidle")
        assert page.page.url == base + href
        assert page.page.locator("#message").count() == 0
        equity = pd.read_csv(Path(cell["out_dir"]) / "equity.csv")
        assert page.page.evaluate("document.getElementById('equity-chart').data[0].y.length") == len(equity)
        assert page.errors == []


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"me:{key}".encode()).decode()


def test_key_rules_read_only_without_key_and_halt_resume_with_it(
    world: dict[str, Path], chromium: Any, isolated_state: Path
) -> None:
    home = isolated_state
    with Ledger.open(home / "ledger.sqlite") as led:
        led.create_run("acct", kind="session", strategy="agents", starting_cash=1000.0)
    with serving(_app(home, [world["root"]])) as base:
        r = httpx.post(f"{base}/accounts/acct/halt", data={"reason": "x"})
        assert r.status_code == 403 and "read-only" in r.json()["error"]["message"]
    with serving(_app(home, [world["root"]], key=KEY)) as base:
        assert httpx.get(f"{base}/").status_code == 401
        assert httpx.get(f"{base}/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{base}/", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert httpx.get(f"{base}/models", headers={"Authorization": _basic(KEY)}).status_code == 200
        context = chromium.new_context(http_credentials={"username": "me", "password": KEY})
        page = Page(context)
        page.open(f"{base}/accounts/acct", live=True)
        page.page.fill("input[name=reason]", "earnings tomorrow")
        page.page.click("#halt")
        page.page.wait_for_selector("#risk-state.HALTED")
        with Ledger.open_reader(home / "ledger.sqlite") as led:
            acct = led.account("acct")
            assert acct.risk_state == "HALTED" and acct.halt_reason == "earnings tomorrow"
        page.page.click("#resume")
        page.page.wait_for_selector("#risk-state.ACTIVE")
        assert KEY not in page.page.content()
        assert page.errors == []
        context.close()


def test_cli_binding_rules_match_serve_and_never_print_the_key(isolated_state: Path) -> None:
    env = {**os.environ, "TRADING_AGENTS_HOME": str(isolated_state)}
    cmd = [sys.executable, "-m", "trading_agents.cli.app", "dashboard"]
    refused = subprocess.run(
        [*cmd, "--host", "0.0.0.0", "--port", "1"], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: refusing to serve the dashboard on 0.0.0.0 without an API key")
    assert "Traceback" not in refused.stderr
    bad = subprocess.run(
        [*cmd, "--results", str(isolated_state / "nope")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: --results")
    proc = subprocess.Popen(
        [*cmd, "--port", "0"],
        env={**env, "TRADING_AGENTS_DASHBOARD_API_KEY": KEY},
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()
        assert line.startswith("dashboard on http://127.0.0.1:") and "API key required" in line
        assert KEY not in line
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert KEY not in out + err


def test_missing_corrupt_and_newer_sources_show_a_message_and_the_rest_keeps_working(
    world: dict[str, Path], chromium: Any, isolated_state: Path, tmp_path: Path
) -> None:
    home = isolated_state
    roots = tmp_path / "results"
    (roots / "corrupt").mkdir(parents=True)
    (roots / "corrupt" / "summary.json").write_text("{not json")
    (roots / "no-equity").mkdir()
    (roots / "no-equity" / "summary.json").write_text(
        json.dumps({"metrics": {}, "baselines": {}, "meta": {}})
    )
    (roots / "grid-bad").mkdir()
    (roots / "grid-bad" / "leaderboard.json").write_text("[]")
    (home / "ledger.sqlite").write_bytes(b"this is not a database" * 100)
    with serving(_app(home, [roots, world["root"]])) as base:
        page = Page(chromium.new_context())
        page.open(base + "/")
        assert "not a readable trading-agents ledger" in page.page.inner_text("#ledger-message")
        assert page.page.locator("#backtest-list a").count() >= 3  # the results still list
        expected = {
            "/backtests/0/corrupt": "is not readable JSON",
            "/backtests/0/no-equity": "equity.csv is missing",
            "/grids/0/grid-bad": "lacks grid, strategies or cells",
            "/backtests/0/..%2F..%2Fetc": "outside the results root",
            "/accounts/paper": "not a readable trading-agents ledger",
        }
        for path, text in expected.items():
            page.open(base + path, live=path.startswith("/accounts"))
            assert text in page.page.inner_text("main"), path
        page.open(base + "/backtests/1/sma-goog")
        assert page.page.locator("#message").count() == 0
        assert page.errors == [], page.errors

    newer = tmp_path / "newer"
    newer.mkdir()
    with Ledger.open(newer / "ledger.sqlite") as led:
        led.create_run("paper", kind="session", strategy="agents", starting_cash=1000.0)
    with sqlite3.connect(newer / "ledger.sqlite") as db:
        db.execute("INSERT INTO schema_version (name, applied_at) VALUES ('m999_future', 'now')")
    with serving(_app(newer, [world["root"]])) as base:
        page = Page(chromium.new_context())
        page.open(base + "/accounts/paper", live=True)
        assert "written by a newer trading-agents" in page.page.inner_text("#message")
        page.open(base + "/models")
        assert page.page.locator("#registry tbody tr").count() >= 1
        assert page.errors == []


def test_reading_never_blocks_the_writer(isolated_state: Path) -> None:
    """A reader mid-query holds no lock the ledger's BEGIN IMMEDIATE waits on (WAL)."""
    path = isolated_state / "ledger.sqlite"
    with Ledger.open(path) as writer:
        writer.create_run("w", kind="session", strategy="agents", starting_cash=1000.0)
        reader = Ledger.open_reader(path)
        try:
            cursor = reader._db.execute("SELECT * FROM runs")  # an open read transaction
            cursor.fetchone()
            writer.set_run_status("w", "running")  # would raise LockBusyError if blocked
            assert writer.get_run("w").status == "running"
        finally:
            reader.close()


def test_models_page_shows_a_configured_serve_health_and_metrics_and_an_absent_one(
    chromium: Any, isolated_state: Path, tmp_path: Path
) -> None:
    serve_key = "serve-key-not-for-pages"
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **os.environ,
        "TRADING_AGENTS_HOME": str(isolated_state),
        "TRADING_AGENTS_SERVE__API_KEY": serve_key,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trading_agents.cli.app",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in proc.stderr:  # the line comes once the models are loaded and the port is bound
            if line.startswith("serving "):
                break
        else:
            pytest.fail(f"serve did not start (exit {proc.wait()})")
        url = f"http://127.0.0.1:{port}"
        settings = {"paths.home": str(isolated_state), "llm.server_url": url, "llm.server_api_key": serve_key}
        app = asgi_app(DashboardConfig(settings=load_settings(None, settings), roots=[tmp_path]))
        with serving(app) as base:
            page = Page(chromium.new_context())
            page.open(base + "/models")
            health = json.loads(page.page.inner_text("#serve-health"))
            assert health["status"] in ("ok", "degraded") and health["models"]
            assert "trading_agents_" in page.page.inner_text("#serve-metrics")
            assert serve_key not in page.page.content()
            assert page.errors == []
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    # the same page once the serve is gone: a message, and the rest of the page still there
    with serving(app) as base:
        page = Page(chromium.new_context())
        page.open(base + "/models")
        assert "did not answer" in page.page.inner_text("#serve-message")
        assert page.page.locator("#registry tbody tr").count() >= 1
        assert page.errors == []
