"""The desk on an external OpenAI-compatible endpoint (``llm.endpoint``, ``--endpoint``).

A real llama.cpp server (llama.cpp's own server code through xllamacpp, in a child process)
on a free loopback port, with the embedded SmolLM2 and 2 parallel slots and an API key,
serves a ``run`` session, replay through the response cache and the error paths. An
Ollama-/vLLM-shaped server is tested for request shape only, with a small local stub that
also plays a server whose replies do not validate or that fails with HTTP 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from autogen_core.models import UserMessage
from pydantic import BaseModel, Field

from tests.ray_cluster import ray_cluster  # noqa: F401  (module-scoped fixture)
from trading_agents.bench.llama_server import ALIAS, free_port, running_llama_server

KEY = "endpoint-key-3c9a"
ROOT = Path(__file__).resolve().parents[1]


class Verdict(BaseModel):
    action: Literal["BUY", "SELL", "HOLD"]
    quantity: int = Field(ge=0, le=100000)


@pytest.fixture(scope="module")
def llama(embedded_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with running_llama_server(embedded_model, parallel=2, api_key=KEY, log=log) as url:
        yield url


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADING_AGENTS_")}
    env["TRADING_AGENTS_HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _config(path: Path, **endpoint: Any) -> Path:
    llm: dict[str, Any] = {"primary": "smollm2", "fallback": None, "max_tokens": 200}
    if endpoint:
        llm["endpoint"] = endpoint
    path.write_text(yaml.safe_dump({"llm": llm, "selector": {"enabled": False}}))
    return path


def _run(config: Path, home: Path, *flags: str, days: int = 1) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "trading_agents.cli.app", "run", "--days", str(days), "--seed", "3"]
    return subprocess.run(
        [*args, "--config", str(config), *flags, "--json"],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _steps_recorded(home: Path) -> int:
    ledger = home / "ledger.sqlite"
    if not ledger.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        return int(db.execute("SELECT COUNT(*) FROM steps").fetchone()[0])


# --------------------------------------------------------------------------- a real llama.cpp server


def test_a_run_session_on_a_llama_server(llama: str, tmp_path: Path) -> None:
    config = _config(tmp_path / "c.yaml", base_url="http://unused.invalid", model="other", api_key=KEY)
    home = tmp_path / "home"
    done = _run(config, home, "--endpoint", llama, "--endpoint-model", ALIAS)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["models"]["server"] == llama and summary["models"]["primary"] == ALIAS
    assert summary["llm"]["models"] == {ALIAS: f"endpoint:{ALIAS}@"}
    assert summary["decisions"] and all(d["agents"] for d in summary["decisions"])
    outputs = [a for d in summary["decisions"] for a in d["agents"]]
    assert any(a["output"] for a in outputs), outputs  # the server's grammar held
    assert all(a["model"] == ALIAS for a in outputs)
    assert _steps_recorded(home) == len(summary["decisions"])


@pytest.mark.parametrize("problem", ["unreachable", "refused key", "unlisted model"])
def test_endpoint_errors_stop_before_any_bar(llama: str, tmp_path: Path, problem: str) -> None:
    url, model, key = llama, ALIAS, KEY
    if problem == "unreachable":
        url = f"http://127.0.0.1:{free_port()}"
    elif problem == "refused key":
        key = "wrong-key"
    else:
        model = "mixtral-8x7b"
    config = _config(tmp_path / "c.yaml", base_url=url, model=model, api_key=key)
    home = tmp_path / "home"
    done = _run(config, home)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    expected = {
        "unreachable": "cannot reach",
        "refused key": "refused the API key",
        "unlisted model": "does not list",
    }
    assert expected[problem] in lines[0]
    assert key not in done.stderr or problem != "refused key"
    assert _steps_recorded(home) == 0 and done.stdout == ""


def test_endpoint_client_replays_through_the_response_cache(llama: str, tmp_path: Path) -> None:
    from utils.llm_integration.endpoint_client import EndpointChatCompletionClient
    from utils.llm_integration.response_cache import ResponseCacheClient

    def client(revision: str) -> ResponseCacheClient:
        inner = EndpointChatCompletionClient(
            base_url=llama + "/v1", model=ALIAS, api_key=KEY, revision=revision, max_tokens=60
        )
        return ResponseCacheClient(inner, tmp_path / "cache.sqlite")

    async def ask(c: ResponseCacheClient) -> Any:
        try:
            return await c.create([UserMessage(content="Verdict on GOOG?", source="u")], json_output=Verdict)
        finally:
            await c.close()

    first = asyncio.run(ask(client("b1")))
    again_client = client("b1")
    again = asyncio.run(ask(again_client))
    rebuilt = asyncio.run(ask(client("b2")))  # a new model build: not replayed
    assert not first.cached and again.cached and again.content == first.content
    assert Verdict.model_validate_json(first.content)
    assert again_client.last_metrics.model_sha256 == f"endpoint:{ALIAS}@b1"
    assert not rebuilt.cached


# --------------------------------------------------------------------------- a stub server


class _Stub:
    """An OpenAI-/Ollama-shaped server on loopback that records what it is sent."""

    def __init__(self, reply: str, status: int = 200) -> None:
        self.reply, self.status = reply, status
        self.requests: list[tuple[str, dict[str, Any]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "stub"}]}).encode())
                elif self.path == "/api/tags":
                    self._send(200, json.dumps({"models": [{"name": "stub"}]}).encode())
                else:
                    self._send(404, b"{}")

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                stub.requests.append((self.path, body))
                if stub.status != 200:
                    self._send(stub.status, json.dumps({"error": {"message": "engine crashed"}}).encode())
                elif self.path == "/api/chat":
                    lines = [
                        {"message": {"content": stub.reply}, "done": False},
                        {"done": True, "done_reason": "stop", "prompt_eval_count": 7, "eval_count": 3},
                    ]
                    self._send(
                        200, "".join(json.dumps(x) + "\n" for x in lines).encode(), "application/x-ndjson"
                    )
                else:
                    chunks = [
                        {"choices": [{"delta": {"content": stub.reply}, "finish_reason": None}]},
                        {"choices": [{"delta": {}, "finish_reason": "stop"}]},
                        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}},
                    ]
                    text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
                    self._send(200, text.encode(), "text/event-stream")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> _Stub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("structured", ["json_schema", "json_object", "ollama"])
def test_request_shape_per_structured_mode(structured: str) -> None:
    from utils.llm_integration.endpoint_client import EndpointChatCompletionClient, check_endpoint

    with _Stub('{"action": "HOLD", "quantity": 0}') as stub:
        assert check_endpoint(stub.url, "stub", structured=structured) == ["stub"]  # type: ignore[arg-type]
        client = EndpointChatCompletionClient(
            base_url=stub.url, model="stub", structured=structured, max_tokens=33, seed=9
        )
        result = asyncio.run(client.create([UserMessage(content="hi", source="u")], json_output=Verdict))
    assert Verdict.model_validate_json(result.content).action == "HOLD"
    assert client.last_metrics.prompt_tokens == 7 and client.last_metrics.completion_tokens == 3
    (path, body), schema = stub.requests[0], Verdict.model_json_schema()
    assert body["model"] == "stub" and body["messages"] == [{"role": "user", "content": "hi"}]
    if structured == "ollama":
        assert path == "/api/chat" and body["format"] == schema
        assert body["options"]["num_predict"] == 33 and body["options"]["seed"] == 9
    else:
        assert path == "/v1/chat/completions" and body["max_tokens"] == 33 and body["seed"] == 9
        fmt = body["response_format"]
        if structured == "json_schema":
            assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == schema
        else:
            assert fmt == {"type": "json_object"}


@pytest.mark.parametrize(("reply", "status"), [('{"action": "MAYBE"}', 200), ("", 500)])
def test_a_reply_that_does_not_validate_or_a_5xx_fails_the_step_closed(
    tmp_path: Path, reply: str, status: int
) -> None:
    with _Stub(reply, status) as stub:
        config = _config(tmp_path / "c.yaml", base_url=stub.url, model="stub")
        home = tmp_path / "home"
        done = _run(config, home, days=2)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert len(summary["decisions"]) == 2 and summary["llm"]["failed_steps"] == 2
    assert all(d["error"] and d["intent"] is None for d in summary["decisions"])
    assert summary["orders"] == [] and _steps_recorded(home) == 2  # recorded, the run went on
    assert stub.requests  # the analyst was asked


# --------------------------------------------------------------------------- a grid on the server

GRID = """
data: {tickers: [GOOG, SPX]}
windows: [{start: 2013-02-27, end: 2013-02-28}]   # two bars: one decision per cell
strategies:
  - {name: agents, model: embedded, label: desk}
seed: 5
"""


def _decided(path: Path) -> list[Any]:
    """What each decision said (the agents' outputs and the intent), without timings."""
    out = []
    for line in path.read_text().splitlines():
        record = json.loads(line).get("record") or {}
        agents = [
            (a.get("role"), a.get("output"))
            for t in (record.get("tickers") or {}).values()
            for a in t["agents"]
        ]
        out.append((agents, [t.get("intent") for t in (record.get("tickers") or {}).values()]))
    return out


@pytest.mark.slow  # about 90 s here; the stub grid below covers the path in the default run
@pytest.mark.usefixtures("ray_cluster")
def test_a_two_cell_agents_grid_with_concurrency_two(llama: str, tmp_path: Path) -> None:
    """Both agent cells run as light clients (no model loaded) against the server's 2 slots;
    the decisions at concurrency 1 and 2 are compared and the difference is printed."""
    from trading_agents.grid.run import run_grid
    from trading_agents.grid.spec import spec_from_text
    from trading_agents.grid.store import GridStore

    config = _config(tmp_path / "c.yaml", api_key=KEY, base_url=llama, model=ALIAS)
    flags = {"llm.endpoint.base_url": llama, "llm.endpoint.model": ALIAS}

    def grid(concurrency: int) -> dict[str, Any]:
        results: list[dict[str, Any]] = []
        outcome = run_grid(
            spec_from_text(GRID),
            tmp_path / f"grid-{concurrency}",
            workers=1,
            concurrency=concurrency,
            config=config,
            overrides=flags,
            on_result=lambda c, r: results.append(r),
        )
        assert outcome.counts["done"] == 4, outcome.counts
        with GridStore.open(tmp_path / f"grid-{concurrency}", create=False) as store:
            rows = {r.cell.key: r for r in store.rows() if r.cell.label == "desk"}
        assert len(rows) == 2
        return {k: _decided(Path(r.out_dir) / "decisions.jsonl") for k, r in rows.items()}

    two = grid(2)
    assert all(agents for cell in two.values() for agents, _ in cell)  # decisions were read
    if os.environ.get("ENDPOINT_COMPARE_CONCURRENCY"):  # measured, not asserted: see docs/endpoints.md
        one = grid(1)
        differing = sum(one[k] != two[k] for k in one)
        print(f"agent cells whose decisions differ between concurrency 1 and 2: {differing} of {len(one)}")
    [row] = [
        s
        for s in json.loads((tmp_path / "grid-2" / "leaderboard.json").read_text())["strategies"]
        if s["label"] == "desk"
    ]
    assert row["done"] == 2 and row["llm"]["calls"] >= 2
    assert set(row["llm"]["routes"]) == {f"{ALIAS}:primary"}


# --------------------------------------------------------------------------- the selector


def test_the_selector_falls_back_from_a_failing_endpoint_to_the_local_model(tmp_path: Path) -> None:
    """An endpoint primary that answers HTTP 500, the embedded model as local fallback: every
    role is served by the fallback with reason ``error`` and the run decides every bar."""
    with _Stub("", 500) as stub:
        config = tmp_path / "c.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "llm": {
                        "primary": "smollm2",
                        "fallback": "smollm2",
                        "max_tokens": 200,
                        "n_threads": 1,
                        "endpoint": {"base_url": stub.url, "model": "stub"},
                    },
                    "selector": {"enabled": True, "failure_threshold": 100},
                }
            )
        )
        done = _run(config, tmp_path / "home")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    agents = [a for d in summary["decisions"] for a in d["agents"]]
    assert agents and summary["llm"]["failed_steps"] == 0
    assert {a["route_reason"] for a in agents} == {"error"}
    assert {a["model"] for a in agents} == {"smollm2-135m-instruct"}
    assert len(stub.requests) == len(agents)  # the primary was tried on every call


def test_the_selector_serves_from_a_live_endpoint_primary(llama: str, embedded_model: Path) -> None:
    from utils.llm_integration.autogen_client import AutoGenLLMConfig
    from utils.llm_integration.components import ENDPOINT_PROVIDER
    from utils.llm_integration.model_selector import ModelSelectorClient

    selector = ModelSelectorClient(
        primary={
            "provider": ENDPOINT_PROVIDER,
            "config": {"base_url": llama, "model": ALIAS, "api_key": KEY, "max_tokens": 60},
        },
        fallback=AutoGenLLMConfig.local(embedded_model, n_threads=1, max_tokens=60),
        deadline_s=600,
    )
    result = asyncio.run(
        selector.create([UserMessage(content="Verdict on GOOG?", source="u")], json_output=Verdict)
    )
    assert selector.last_route is not None and selector.last_route.reason == "primary"
    assert selector.last_route.model == ALIAS and Verdict.model_validate_json(result.content)
    assert selector.last_metrics is not None and selector.last_metrics.model_sha256 == f"endpoint:{ALIAS}@"


@pytest.mark.usefixtures("ray_cluster")
def test_grid_cells_are_spread_over_the_endpoint_replicas(tmp_path: Path) -> None:
    """Two servers with the same model (``base_url`` and one of ``replicas``): the two agent
    cells run one on each, two desks in flight; replies that do not validate fail closed."""
    from trading_agents.grid.run import run_grid
    from trading_agents.grid.spec import spec_from_text

    with _Stub('{"action": "HOLD"}') as first, _Stub('{"action": "HOLD"}') as second:
        config = _config(tmp_path / "c.yaml", base_url=first.url, model="stub", replicas=[second.url])
        outcome = run_grid(spec_from_text(GRID), tmp_path / "grid", workers=1, concurrency=2, config=config)
    assert outcome.counts["done"] == 4, outcome.counts
    assert first.requests and second.requests
    paths = {path for path, _ in first.requests + second.requests}
    assert paths == {"/v1/chat/completions"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--endpoint-model", "m"], "error: --endpoint-model needs --endpoint URL"),
        (["--endpoint", "http://127.0.0.1:9"], "error: --endpoint needs --endpoint-model NAME"),
        (["--endpoint", "localhost:8080", "--endpoint-model", "m"], "must start with http:// or https://"),
    ],
)
def test_endpoint_flags_that_cannot_work_are_one_error_line(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    done = _run(_config(tmp_path / "c.yaml"), tmp_path / "home", *flags)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
