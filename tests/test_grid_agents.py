"""Agent grids on a real local Ray with the embedded model (real llama.cpp, real AutoGen desk):
actors that load the model once, a shared response cache, a worker SIGKILLed mid-cell that
Ray restarts with identical results, and the node-fit check."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.ray_cluster import ray_cluster  # noqa: F401  (module-scoped fixture)
from trading_agents.errors import ResourceError
from trading_agents.grid.run import check_fits, run_grid
from trading_agents.grid.spec import spec_from_text
from trading_agents.grid.store import GridStore

pytestmark = pytest.mark.usefixtures("ray_cluster")

SPEC = """
data: {tickers: [GOOG, SPX]}
windows: [{start: 2013-02-27, end: 2013-02-28}]   # two bars: one decision per cell
strategies:
  - {name: agents, model: embedded, label: smollm2}
seed: 5
"""


#: Metrics priced from measured wall time (``costs.compute_usd_per_hour``): a measurement, like a
#: timing, so two runs of the same cell differ there and only there.
MEASURED = ("llm_cost_usd", "return_net_pct", "excess_return_net_pct")


def _stored(out: Path) -> dict[str, tuple]:
    with GridStore.open(out, create=False) as store:
        rows = store.rows()
    return {
        r.cell.key: (
            r.status,
            {k: v for k, v in (r.metrics or {}).items() if k not in MEASURED},
            (Path(r.out_dir) / "trades.csv").read_text() if r.out_dir else None,
        )
        for r in rows
    }


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[dict]]:
    out = tmp_path_factory.mktemp("agents") / "grid"
    results: list[dict] = []
    outcome = run_grid(spec_from_text(SPEC), out, workers=2, on_result=lambda c, r: results.append(r))
    assert outcome.counts["done"] == 4, outcome.counts
    return out, outcome.leaderboard, results


def test_agent_cells_run_on_actors_and_the_leaderboard_counts_llm_cost(first) -> None:
    out, board, results = first
    agents = [r for r in results if r["key"].endswith("|smollm2")]
    assert len(agents) == 2 and all(r["status"] == "done" for r in agents)
    assert all(r["pid"] != os.getpid() for r in results)  # in worker processes, not the driver
    [row] = [s for s in board["strategies"] if s["label"] == "smollm2"]
    llm = row["llm"]
    assert llm["decisions"] == 2 and llm["calls"] >= 2 and llm["cached_calls"] == 0
    assert llm["prompt_tokens_per_decision"] > 0 and llm["wall_s_per_decision"] > 0
    assert set(llm["routes"]) == {"smollm2-135m-instruct:primary"}
    assert (out / "llm_cache.sqlite").is_file()
    assert row["done"] == 2 and row["mean_excess_pct"] is not None


def test_an_extended_grid_reuses_the_shared_cache_without_calling_the_model(first) -> None:
    out, _board, _ = first
    extended = SPEC.replace(
        "label: smollm2}", "label: smollm2}\n  - {name: agents, model: smollm2, label: again}"
    )
    outcome = run_grid(spec_from_text(extended), out, workers=2)
    assert outcome.computed == 2  # only the new label's cells
    [again] = [s for s in outcome.leaderboard["strategies"] if s["label"] == "again"]
    assert again["llm"]["calls"] == 0 and again["llm"]["cached_calls"] > 0  # same prompts: replayed
    [old] = [s for s in outcome.leaderboard["strategies"] if s["label"] == "smollm2"]
    assert again["mean_return_pct"] == old["mean_return_pct"]


def _agent_worker_pids() -> list[int]:
    """Processes of Ray actors running AgentWorker (Ray titles them ``ray::AgentWorker...``)."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if cmd and cmd[0].startswith("ray::AgentWorker"):
            pids.append(proc.pid)
    return pids


def test_a_worker_killed_mid_cell_is_restarted_and_results_are_identical(first, tmp_path: Path) -> None:
    reference = {k: v for k, v in _stored(first[0]).items() if k.startswith("GOOG|") and "|again" not in k}
    out = tmp_path / "killed"
    killed: list[int] = []
    served: list[int] = []

    def kill_soon() -> None:
        for _ in range(600):  # the worker process exists once Ray has started the actor
            pids = _agent_worker_pids()
            if pids:
                # at once, not after a pause: the cell (a model load, then a decision per bar) is
                # then still running however fast the machine, where a pause could outlast it
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.1)

    def on_progress(p) -> None:
        if p.running == 1 and p.done == 1 and not killed and not served:  # the agent cell was submitted
            threading.Thread(target=kill_soon, daemon=True).start()
            served.append(0)

    def on_result(cell, result) -> None:
        if cell.is_agents:
            served.append(result.get("pid", 0))

    spec = spec_from_text(SPEC.replace("[GOOG, SPX]", "[GOOG]"))
    outcome = run_grid(spec, out, workers=1, on_result=on_result, on_progress=on_progress)
    assert killed and outcome.counts == {"pending": 0, "running": 0, "done": 2, "failed": 0, "total": 2}
    assert served[-1] not in (0, killed[0])  # the cell finished on the restarted actor
    with GridStore.open(out, create=False) as store:
        assert {r.attempts for r in store.rows()} == {1}  # Ray retried it; the driver submitted it once
    assert _stored(out) == reference  # metrics and trades identical to the uninterrupted run
    with GridStore.open(out, create=False) as store:
        agent_metrics = [r.metrics for r in store.rows() if r.cell.is_agents]
    assert agent_metrics and all(m["llm_cost_usd"] > 0 for m in agent_metrics)  # priced, not dropped


def test_a_model_that_fits_no_node_and_too_many_threads_are_refused() -> None:
    with pytest.raises(ResourceError, match=r"needs 931322\.6 GiB of RAM but the largest Ray node"):
        check_fits({"mixtral": 10**15}, 1)
    with pytest.raises(ResourceError, match="--threads-per-worker 64 is more than"):
        check_fits({"smollm2": 1}, 64)
    check_fits({"smollm2": 2**20}, 1)
