"""``bench serve``: what serving a model over HTTP costs a caller, and what it sustains.

A ``trading-agents serve`` process starts on a free loopback port with the embedded SmolLM2
(one thread, as the desk's other benches run it). Two measurements:

``overhead``
    The same prompts, one at a time, first through the desk's in-process model client
    (``LocalLlamaChatCompletionClient``) in this process, then through the desk's server client
    (``ServerChatCompletionClient``: HTTP, SSE streaming) to the server, which loads the model
    with the same settings. Both sides start from a freshly loaded model, make one untimed
    warm-up call, then the same calls in the same order, so KV-cache reuse is the same.
    Structured calls (the analyst's schema, as the desk makes them) and short plain-text
    calls. ``latency_ratio`` = median per-call latency through the server over in-process;
    target at most 1.05 for structured calls.
``concurrency``
    1, 2 and 4 clients, each sending plain-text calls back to back: calls/s, completion
    tokens/s, and p50/p95 per-call latency. One model serves them in arrival order, so
    throughput stays about flat while latency grows with the number of clients.

The in-process side runs while the server is idle and the other way round, so the two never
compete for the cores.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from trading_agents.agents.schemas import AnalystReport

PROMPTS = [
    "GOOG closed at 798.20, up 0.4% today and 3.1% this week, above its 20- and 50-day averages.",
    "SPX fell 1.8% today on rate fears; RSI 14 is 31 and volatility is rising.",
    "IXIC is flat for a week; MACD crossed below its signal line yesterday.",
    "GOOG gapped down 5% on earnings and closed near the day's low on heavy volume.",
    "SPX made a new 52-week high; breadth is narrow and the VIX is at 12.",
    "IXIC rose five days in a row; the last close is 2% above the upper Bollinger band.",
    "GOOG has traded in a 2% range for three weeks; volume is half its average.",
    "SPX dropped 0.3% after a 4% rally over two weeks; RSI 14 is 71.",
]
SYSTEM = "You are an equity analyst. Read the facts and give your view of the next two weeks."
CLIENTS = (1, 2, 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class _Server:
    """``trading-agents serve`` in a subprocess, up until :meth:`stop`."""

    def __init__(self, config: Path, home: Path, log: Path) -> None:
        import httpx2

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADING_AGENTS_")}
        env["TRADING_AGENTS_HOME"] = str(home)
        args = [sys.executable, "-m", "trading_agents.cli.app", "serve", "--port", str(self.port)]
        args += ["--config", str(config), "--log-level", "warning"]
        self._log = log.open("w")
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see {log}")
            try:
                if httpx2.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not come up in 180 s; see {log}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def _settings_file(out_dir: Path) -> Path:
    path = out_dir / "serve-bench.yaml"
    config = {"llm": {"primary": "smollm2-135m-instruct", "fallback": None, "n_threads": 1}}
    path.write_text(yaml.safe_dump(config))
    return path


async def _calls(client: Any, prompts: list[str], structured: bool, max_tokens: int) -> list[float]:
    from autogen_core.models import SystemMessage, UserMessage

    times = []
    for prompt in prompts:
        messages = [SystemMessage(content=SYSTEM), UserMessage(content=prompt, source="desk")]
        started = time.perf_counter()
        await client.create(
            messages,
            json_output=AnalystReport if structured else None,
            extra_create_args={"max_tokens": max_tokens},
        )
        times.append(time.perf_counter() - started)
    return times


def _summary(times: list[float]) -> dict[str, Any]:
    return {
        "calls": len(times),
        "median_s": round(statistics.median(times), 4),
        "mean_s": round(statistics.fmean(times), 4),
    }


KINDS = (("structured", True, 200), ("plain", False, 32))
WARM_UP = "Warm-up: say OK."


async def _sequence(client: Any, prompts: list[str]) -> dict[str, list[float]]:
    """One untimed warm-up call (a fresh llama.cpp context is slow on its first evaluation),
    then each kind of call over the prompts: the same sequence on both sides."""
    await _calls(client, [WARM_UP], False, 4)
    return {kind: await _calls(client, prompts, structured, cap) for kind, structured, cap in KINDS}


def _overhead(settings: Any, server: _Server, prompts: list[str], health: dict[str, Any]) -> dict[str, Any]:
    """Per-call latency in-process and through the server, the same prompts in the same order."""
    from trading_agents.agents.clients import local_client_config
    from trading_agents.model_files.registry import resolve_model
    from utils.llm_integration.autogen_client import LocalLlamaChatCompletionClient
    from utils.llm_integration.server_client import ServerChatCompletionClient

    model = resolve_model(settings.llm.primary, settings)
    local = LocalLlamaChatCompletionClient.load_component(local_client_config(model, settings))
    in_process = asyncio.run(_sequence(local, prompts))
    local.llm.close()
    remote = ServerChatCompletionClient(
        base_url=server.url,
        model=health["primary"],
        model_sha256={m["id"]: m["sha256"] for m in health["models"] if m["sha256"]},
    )
    through = asyncio.run(_sequence(remote, prompts))
    out: dict[str, Any] = {}
    for kind, _, _ in KINDS:
        local_s, server_s = statistics.median(in_process[kind]), statistics.median(through[kind])
        out[kind] = {
            "in_process": _summary(in_process[kind]),
            "server": _summary(through[kind]),
            "latency_ratio": round(server_s / max(local_s, 1e-9), 3),
            "added_ms_per_call": round((server_s - local_s) * 1e3, 1),
        }
    out["target_latency_ratio"] = 1.05
    out["meets_target"] = out["structured"]["latency_ratio"] <= 1.05
    return out


def _concurrency(server: _Server, model: str, calls_per_client: int) -> list[dict[str, Any]]:
    return [_step(server, model, clients, calls_per_client) for clients in CLIENTS]


def _step(server: _Server, model: str, clients: int, calls_per_client: int) -> dict[str, Any]:
    """``clients`` threads sending plain-text calls back to back."""
    import httpx2

    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        with httpx2.Client(timeout=600) as http:
            for j in range(calls_per_client):
                prompt = PROMPTS[(index * calls_per_client + j) % len(PROMPTS)]
                body = {
                    "model": model,
                    "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                    "max_tokens": 32,
                    "seed": index,
                }
                started = time.perf_counter()
                reply = http.post(server.url + "/v1/chat/completions", json=body)
                took = time.perf_counter() - started
                with lock:
                    if reply.status_code == 200:
                        latencies.append(took)
                        tokens.append(reply.json()["usage"]["completion_tokens"])
                    else:
                        errors.append(f"HTTP {reply.status_code}")

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "calls": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 3),
        "calls_per_s": round(len(latencies) / wall, 3),
        "completion_tokens_per_s": round(sum(tokens) / wall, 1),
        "p50_s": round(_percentile(latencies, 0.5), 4),
        "p95_s": round(_percentile(latencies, 0.95), 4),
    }


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Start a server, measure, stop it; return JSON-safe figures (written to ``serve.json``)."""
    import httpx2

    from trading_agents.config.settings import load_settings

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = _settings_file(out_dir)
    settings = load_settings(config)
    prompts = PROMPTS[:3] if quick else PROMPTS
    server = _Server(config, out_dir / "serve-home", out_dir / "serve-server.log")
    try:
        health = httpx2.get(server.url + "/health", timeout=30).json()
        overhead = _overhead(settings, server, prompts, health)
        concurrency = _concurrency(server, health["primary"], 2 if quick else 6)
    finally:
        server.stop()
    return {
        "model": health["primary"],
        "threads": settings.llm.n_threads,
        "prompts": len(prompts),
        "overhead": overhead,
        "concurrency": concurrency,
    }
