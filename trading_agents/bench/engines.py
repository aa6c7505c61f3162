"""``trading-agents bench engines``: the same desks on three engines, at several desks in flight.

Every desk is a real ``trading-agents run`` (its own process and ledger, the same seed, the
embedded SmolLM2, selector off, no response cache); desk i decides the GOOG bars of its own
window (the last ``days`` bars, ending ``i * days`` bars before the last), so no desk's prompt
is another's; N of them run at once, and every engine starts cold at every N:

``grid-workers``  (a) today's grid: every desk loads its own model in-process (one model per
                  worker), ``n_threads`` = cores / N.
``serve``         (b) one ``trading-agents serve`` holds the model; the desks are its clients
                  (``llm.server_url``); it answers one call at a time.
``llama-server``  (c) one llama.cpp server (llama.cpp's own server code through xllamacpp)
                  with N parallel slots; the desks are its clients (``llm.endpoint``).

Per configuration: ``decisions_per_hour`` (all desks' decisions over the slowest desk's wall
time, the desk's set-up included), ``latency_p50_s`` / ``latency_p95_s`` (one decision: its
three agent calls), ``rss_mb`` (peak resident memory of the processes that hold the model:
the N workers for (a), the server for (b) and (c)) and ``client_rss_mb`` (the desks' own
processes where they are clients). For (c) also ``parallel_slots`` and
``differing_decisions``: decisions whose agents' outputs differ from the same window decided
with 1 desk in flight (at N = 1 the windows of every level are decided one desk at a time, so
each has its reference; that level's throughput counts them all).

``--quick``: 1 decision per desk, 1 and 2 desks ((c) also 4, the target's point); otherwise
3 decisions per desk at 1, 2, 4 and 8.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ALIAS = "smollm2"


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class _PeakRss:
    """Peak summed RSS (MB) of a changing set of processes, sampled every 0.2 s."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            total = 0
            for pid in list(self.pids):
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(pid)
                    total += proc.memory_info().rss
                    total += sum(c.memory_info().rss for c in proc.children(recursive=True))
            self.peak_mb = max(self.peak_mb, total / 2**20)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADING_AGENTS_")}
    env["TRADING_AGENTS_HOME"] = str(home)
    return env


def _config(path: Path, threads: int, **llm: Any) -> Path:
    data = {
        "llm": {"primary": "smollm2", "fallback": None, "n_threads": threads, "ram_cache_mb": 0, **llm},
        "selector": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _window_ends(count: int, days: int) -> list[str]:
    """The last date of desk i's window: ``i * days`` bars before GOOG's last bar."""
    from trading_agents.market import load_bars

    dates = load_bars(tickers=["GOOG"])["GOOG"].index
    return [str(dates[-1 - i * days].date()) for i in range(count)]


def _desks(
    config: Path,
    work: Path,
    ends: list[str],
    days: int,
    engine_rss: _PeakRss,
    client_rss: _PeakRss | None,
) -> list[dict[str, Any]]:
    """Run one desk per window end at once; their ``run --json`` summaries, in that order."""
    procs = []
    for i, end in enumerate(ends):
        home = work / f"desk-{i}"
        home.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "trading_agents.cli.app", "run", "--days", str(days), "--seed", "1"]
        args += ["--end", end]
        proc = subprocess.Popen(
            [*args, "--config", str(config), "--json"],
            env=_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        (client_rss or engine_rss).pids.add(proc.pid)
        procs.append(proc)
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"a desk failed (exit {proc.returncode}): {stderr.strip()[-400:]}")
        out.append(json.loads(stdout))
    return out


def _figures(
    name: str,
    n: int,
    summaries: list[dict[str, Any]],
    rss: float,
    client: float | None,
    *,
    serial: bool = False,
) -> dict[str, Any]:
    latencies = [
        sum(a.get("latency_s") or 0.0 for a in d["agents"]) for s in summaries for d in s["decisions"]
    ]
    decisions = sum(len(s["decisions"]) for s in summaries)
    # desks at once: the slowest one's wall time; desks one after another: the sum
    wall = sum(s["wall_s"] for s in summaries) if serial else max(s["wall_s"] for s in summaries)
    row: dict[str, Any] = {
        "name": name,
        "in_flight": n,
        "decisions": decisions,
        "decisions_per_hour": round(decisions / wall * 3600, 1) if wall > 0 else 0.0,
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else 0.0,
        "latency_p95_s": round(_percentile(latencies, 0.95), 3),
        "rss_mb": round(rss, 1),
        "failed_steps": sum(s["llm"]["failed_steps"] for s in summaries),
    }
    if client is not None:
        row["client_rss_mb"] = round(client, 1)
    return row


def _outputs(summary: dict[str, Any]) -> list[Any]:
    return [[(a["role"], a["output"]) for a in d["agents"]] for d in summary["decisions"]]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[Any], what: str) -> None:
    import httpx2

    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(url, timeout=5).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up in 300 s")
        time.sleep(0.3)


@contextlib.contextmanager
def _process(
    args: list[str], env: dict[str, str], ready_url: str, what: str, rss: _PeakRss
) -> Iterator[None]:
    proc = subprocess.Popen(
        args, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    rss.pids.add(proc.pid)
    try:
        _wait(ready_url, proc, what)
        yield
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _model_path() -> Path:
    from trading_agents.model_files.registry import embedded_model_path

    return embedded_model_path()


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Every configuration at every number of desks in flight; JSON-safe (engines.json)."""
    from trading_agents.grid.run import physical_cores

    work = Path(out_dir) / "engines-bench"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cores = physical_cores()
    levels = [1, 2] if quick else [1, 2, 4, 8]
    c_levels = [1, 2, 4] if quick else levels  # (c) at 4 is the target's point
    days = 1 if quick else 3
    ends = _window_ends(max(c_levels), days)
    configs: list[dict[str, Any]] = []

    for n in levels:  # (a) one model per worker
        config = _config(work / f"a-{n}.yaml", max(1, cores // n))
        with _PeakRss() as rss:
            summaries = _desks(config, work / f"a-{n}", ends[:n], days, rss, None)
        configs.append(_figures("grid-workers", n, summaries, rss.peak_mb, None))

    for n in levels:  # (b) serve, started cold for each level
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        args = [sys.executable, "-m", "trading_agents.cli.app", "serve", "--port", str(port)]
        args += ["--config", str(_config(work / f"serve-{n}.yaml", cores))]
        with (
            _PeakRss() as rss,
            _process(args, _env(work / f"serve-home-{n}"), url + "/health", "trading-agents serve", rss),
            _PeakRss() as clients,
        ):
            rss.peak_mb = 0.0
            config = _config(work / f"b-{n}.yaml", 1, server_url=url)
            summaries = _desks(config, work / f"b-{n}", ends[:n], days, rss, clients)
        configs.append(_figures("serve", n, summaries, rss.peak_mb, clients.peak_mb))

    from trading_agents.bench import llama_server

    reference: list[Any] = []
    for n in c_levels:  # (c) a llama.cpp server with matching slots, started cold for each level
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "LLAMA_SERVER_THREADS": str(cores)}
        args = [sys.executable, llama_server.__file__, str(_model_path()), str(port), str(n), ALIAS, ""]
        with (
            _PeakRss() as rss,
            _process(args, env, url + "/v1/models", "llama.cpp server", rss),
            _PeakRss() as clients,
        ):
            rss.peak_mb = 0.0
            config = _config(work / f"c-{n}.yaml", 1, endpoint={"base_url": url, "model": ALIAS})
            if n == 1:  # every window, one desk at a time: the references
                summaries = [
                    _desks(config, work / f"c-1-{i}", [end], days, rss, clients)[0]
                    for i, end in enumerate(ends)
                ]
            else:
                summaries = _desks(config, work / f"c-{n}", ends[:n], days, rss, clients)
        row = _figures("llama-server", n, summaries, rss.peak_mb, clients.peak_mb, serial=n == 1)
        outputs = [_outputs(s) for s in summaries]
        if n == 1:
            reference = outputs
        row["parallel_slots"] = n
        row["differing_decisions"] = sum(
            mine != ref
            for desk, ref_desk in zip(outputs, reference, strict=False)
            for mine, ref in zip(desk, ref_desk, strict=False)
        )
        configs.append(row)

    def best(name: str, n: int) -> dict[str, Any] | None:
        return next((c for c in configs if c["name"] == name and c["in_flight"] == n), None)

    a2, c4 = best("grid-workers", 2), best("llama-server", 4)
    target: dict[str, Any] = {"measured": a2 is not None and c4 is not None}
    if a2 is not None and c4 is not None:
        target |= {
            "throughput_ratio_c4_over_a2": round(
                c4["decisions_per_hour"] / max(1e-9, a2["decisions_per_hour"]), 3
            ),
            "rss_ratio_c4_over_a2": round(c4["rss_mb"] / max(1e-9, a2["rss_mb"]), 3),
        }
        target["met"] = target["throughput_ratio_c4_over_a2"] >= 1.0 and target["rss_ratio_c4_over_a2"] <= 0.6
    return {
        "model": ALIAS,
        "cores": cores,
        "decisions_per_desk": days,
        "levels": {"grid-workers": levels, "serve": levels, "llama-server": c_levels},
        "configs": configs,
        "target_c4_vs_a2": target,
    }
