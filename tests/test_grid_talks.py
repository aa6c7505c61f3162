"""`grid run` without a terminal talks: progress lines on stderr, an estimate before the agent
cells, and on Ctrl-C (SIGINT to the whole process group, as a terminal sends it) the resume line,
with Ray's own messages kept in DIR/grid.log. A real Ray, a real agent cell on the embedded model.

No verdict depends on speed: the interrupt is sent once the progress says both baseline cells
are done, while the agent cell (250 decisions) is still running, which it cannot finish first.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trading_agents.cli.app import main
from trading_agents.grid.cells import Cell
from trading_agents.grid.estimate import (
    decisions_of,
    duration_text,
    estimate_line,
    measured_seconds_per_decision,
)
from trading_agents.grid.spec import spec_from_text

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
data: {tickers: [GOOG]}
windows: [{start: 2011-01-03, end: 2011-12-30}]
strategies:
  - {name: agents, model: embedded, label: smol}
  - {name: sma-cross}
  - {name: buy-hold}
"""


def test_no_terminal_progress_lines_estimate_and_ctrl_c_resume_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "grid.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "grid"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trading_agents.cli.app",
            "grid",
            "run",
            str(spec),
            "--out",
            str(out),
            "-w",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: SIGINT reaches Ray's processes too, as Ctrl-C does
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("grid: 2/3 cells done"):
                os.killpg(proc.pid, signal.SIGINT)
                break
        rest = proc.stderr.read()
        code = proc.wait(timeout=300)
    finally:
        # whatever is left of the group (Ray's helper agents exit on their own, a little later)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    lines += rest.splitlines()
    err = "\n".join(lines)
    assert code == 130, err
    assert lines[-1] == "interrupted: 2 of 3 cells done; rerun the same command to resume", err
    assert any(line.startswith("grid: 0/3 cells done") for line in lines), err
    estimate = next(line for line in lines if "agent cell" in line)
    assert re.match(r"grid: 1 agent cell, 25\d decisions \(cells x bars\)", estimate), estimate
    assert "--quick" in estimate
    assert "retries remaining" not in err and "Traceback" not in err and "error:" not in err
    assert (out / "grid.log").is_file()  # where Ray's own messages went

    # the store is consistent: nothing left "running", so the same command resumes
    with pytest.raises(SystemExit):
        main(["grid", "status", str(out), "--json"])
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert counts == {"pending": 1, "running": 0, "done": 2, "failed": 0, "total": 3}


def test_estimate_is_cells_times_bars_times_measured_seconds() -> None:
    spec = spec_from_text(SPEC)
    cells = [
        Cell(key=f"k{i}", data="GOOG", ticker="GOOG", data_file=None, start="2011-01-03", end="2011-12-30",
             label="smol", strategy={"name": "agents"}, seed=1)
        for i in range(3)
    ]  # fmt: skip
    bars = {("GOOG", "2011-01-03", "2011-12-30"): 251}
    assert decisions_of(cells, bars) == 753
    rows = [{"status": "done", "llm": {"decisions": 10}, "timings": {"wall_s": 40.0}}]
    assert measured_seconds_per_decision(rows) == 4.0
    assert estimate_line(1, 251, None, 1, source="").startswith("grid: 1 agent cell, 251 decisions")
    line = estimate_line(3, 753, 4.0, 2, source="measured on k0")
    assert line == (
        "grid: 3 agent cells, 753 decisions (cells x bars) x 4.0 s per decision (measured on k0) "
        "/ 2 workers: about 25 min"
    )
    assert "not measured yet" in estimate_line(3, 753, None, 1, source="")
    assert spec.quick().window_list()[0].start.isoformat() == "2011-12-17"
    assert [duration_text(s) for s in (45, 125, 3600 * 5 + 60 * 20, 86400 * 2 + 3600 * 4)] == [
        "45 s",
        "2 min 05 s",
        "5 h 20 min",
        "2 d 4 h",
    ]
