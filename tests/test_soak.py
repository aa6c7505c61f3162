"""Soak: a 1,000-decision paper session on the embedded model (scripts/soak.py), slow-marked.

Targets: zero invalid decisions, resident memory growth under 5% after warm-up, no file
descriptor growth, and a ledger that reconciles. On a 2-core CPU this took 2.2 hours
(7.99 s per decision, other work sharing the cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trading_agents.config.settings import project_root


@pytest.mark.slow
def test_thousand_decision_soak(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    script = project_root() / "scripts" / "soak.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--decisions", "1000", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=6 * 3600,
    )
    report = json.loads(out.read_text())
    assert report["decisions"] == 1000
    assert report["invalid_decisions"] == 0, report["invalid_examples"]
    assert report["rss_growth_pct"] < 5.0, report["samples"]
    assert report["fd_growth"] <= 0, report["samples"]
    assert report["reconcile"] == []
    assert proc.returncode == 0, proc.stderr[-2000:]
