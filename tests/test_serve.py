"""``trading-agents serve`` as its clients see it: a real uvicorn in a subprocess on a free
loopback port, the embedded SmolLM2 as primary and a generated tiny llama as fallback, the
official ``openai`` client, AutoGen's ``OpenAIChatCompletionClient`` with a stock agent, the
desk's own server client, and ``run`` through the server against ``run`` in-process.

One server for the whole module (it starts once); every request carries its API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx2
import pytest
import yaml
from pydantic import BaseModel, Field

KEY = "test-key-5b1f0c9e"
PRIMARY = "smollm2-135m-instruct"
FALLBACK = "tiny-llama.Q8_0"
ROOT = Path(__file__).resolve().parents[1]


class Verdict(BaseModel):
    action: Literal["BUY", "SELL", "HOLD"]
    quantity: int = Field(ge=0, le=100000)
    reason: str = Field(max_length=40)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADING_AGENTS_")}
    env["TRADING_AGENTS_HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _config(path: Path, models_dir: Path, **sections: dict[str, Any]) -> Path:
    data: dict[str, Any] = {
        "paths": {"models_dir": str(models_dir)},
        "llm": {"primary": PRIMARY, "fallback": f"{FALLBACK}.gguf", "n_threads": 1, "ram_cache_mb": 0},
        "serve": {"max_body_kb": 64},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(data))
    return path


class Server:
    def __init__(self, url: str, config: Path, models_dir: Path, log: Path) -> None:
        self.url = url
        self.config = config
        self.models_dir = models_dir
        self.log = log

    def get(self, path: str, **kw: Any) -> httpx2.Response:
        return httpx2.get(self.url + path, headers={"authorization": f"Bearer {KEY}"}, timeout=60, **kw)

    def post(self, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> httpx2.Response:
        return httpx2.post(
            self.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {KEY}", **(headers or {})},
            timeout=300,
            **kw,
        )

    def metric(self, name: str, labels: str = "") -> float:
        text = self.get("/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (not labels or labels in line) and not line.startswith("#"):
                head = line.split(" ")[0]
                if head == name or head.startswith(name + "{"):
                    total += float(line.rsplit(" ", 1)[1])
        return total


@contextlib.contextmanager
def _running_server(base: Path, models_dir: Path, **sections: dict[str, Any]) -> Iterator[Server]:
    """``trading-agents serve`` in a subprocess on a free loopback port, stopped on exit."""
    config = _config(base / "serve.yaml", models_dir, **sections)
    port = _free_port()
    log = base / "server.log"
    env = _env(base / "home") | {"TRADING_AGENTS_SERVE__API_KEY": KEY}
    args = [
        sys.executable,
        "-m",
        "trading_agents.cli.app",
        "serve",
        "--port",
        str(port),
        "--config",
        str(config),
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=base)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if (
                    httpx2.get(
                        url + "/health", headers={"authorization": f"Bearer {KEY}"}, timeout=2
                    ).status_code
                    == 200
                ):
                    break
            except httpx2.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up:\n" + log.read_text()
            time.sleep(0.2)
        yield Server(url, config, models_dir, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert KEY not in log.read_text(), "the API key reached the server's log"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Iterator[Server]:
    with _running_server(tmp_path_factory.mktemp("serve"), tiny_llama.parent) as running:
        yield running


def _openai(server: Server) -> Any:
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


# --------------------------------------------------------------------------- discovery


def test_models_health_and_metrics(server: Server, embedded_model: Path) -> None:
    models = server.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [PRIMARY, FALLBACK, "selector"]
    health = server.get("/health").json()
    assert health["status"] == "ok"
    primary = next(m for m in health["models"] if m["id"] == PRIMARY)
    from utils.llm_integration.files import file_sha256

    assert primary["loaded"] and primary["sha256"] == file_sha256(embedded_model)
    for key in ("rss_mb", "available_mb", "llama_cpp_version", "queue_depth", "uptime_s"):
        assert key in health
    assert health["rss_mb"] > 50 and health["available_mb"] > 0
    metrics = server.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "trading_agents_serve_requests_total",
        "# TYPE trading_agents_serve_completion_seconds histogram",
        "# TYPE trading_agents_serve_fallbacks_total counter",
        "trading_agents_serve_queue_depth",
    ):
        assert name in metrics.text


# --------------------------------------------------------------------------- the openai client


def test_openai_client_plain_and_streaming_agree(server: Server) -> None:
    client = _openai(server)
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a colour."},
    ]
    raw = client.chat.completions.with_raw_response.create(
        model=PRIMARY, messages=messages, max_tokens=24, seed=7
    )
    assert raw.headers["x-trading-agents-route"] == "primary"
    plain = raw.parse()
    assert plain.model == PRIMARY and plain.choices[0].message.content
    usage = plain.usage
    assert usage.prompt_tokens > 5 and 0 < usage.completion_tokens <= 25
    assert usage.prompt_tokens_details.cached_tokens >= 0
    chunks = list(
        client.chat.completions.create(
            model=PRIMARY,
            messages=messages,
            max_tokens=24,
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content  # greedy: the same reply either way
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == usage.prompt_tokens
    # the same prompt again: its prefix is in the KV cache
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals[-1].model_extra["trading_agents"]["route"]["reason"] == "primary"


def test_openai_client_structured_output_is_grammar_enforced(server: Server) -> None:
    client = _openai(server)
    prompt = [{"role": "user", "content": "GOOG is up 3% this week. Give a trading verdict."}]
    parsed = client.chat.completions.parse(
        model=PRIMARY, messages=prompt, response_format=Verdict, max_tokens=120
    )
    verdict = parsed.choices[0].message.parsed
    assert isinstance(verdict, Verdict)
    # the grammar writes the wide integer as a digit string; the client gets a JSON number
    assert isinstance(json.loads(parsed.choices[0].message.content)["quantity"], int)

    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["n"],
    }
    legacy = client.chat.completions.create(
        model=PRIMARY,
        messages=[{"role": "user", "content": "Pick a number from 1 to 5."}],
        response_format={"type": "json_object", "schema": schema},  # type: ignore[typeddict-unknown-key]
        max_tokens=20,
    )
    assert json.loads(legacy.choices[0].message.content)["n"] in range(1, 6)
    anything = client.chat.completions.create(
        model=PRIMARY, messages=prompt, response_format={"type": "json_object"}, max_tokens=60
    )
    content = anything.choices[0].message.content
    assert anything.choices[0].finish_reason == "length" or isinstance(json.loads(content), dict)


# --------------------------------------------------------------------------- AutoGen


def test_autogen_openai_client_with_stock_agent_and_output_content_type(server: Server) -> None:
    from autogen_agentchat.agents import AssistantAgent
    from autogen_agentchat.messages import StructuredMessage

    from utils.llm_integration.components import load_llm_config

    config = yaml.safe_load((ROOT / "configs" / "autogen" / "openai_server.yaml").read_text())
    config["config"].update(base_url=server.url + "/v1", api_key=KEY, model=PRIMARY, max_tokens=150)
    client = load_llm_config(config)

    async def main() -> Any:
        agent = AssistantAgent("trader", model_client=client, output_content_type=Verdict)
        try:
            return await agent.run(task="GOOG fell 4% today on weak guidance. Your verdict?")
        finally:
            await client.close()

    result = asyncio.run(main())
    last = result.messages[-1]
    assert isinstance(last, StructuredMessage) and isinstance(last.content, Verdict)


# --------------------------------------------------------------------------- concurrency, cancellation


def test_eight_concurrent_clients_all_answered(server: Server) -> None:
    before = server.metric("trading_agents_serve_fallbacks_total")
    replies: dict[int, httpx2.Response] = {}

    def ask(i: int) -> None:
        body = {
            "model": "selector",
            "messages": [{"role": "user", "content": f"Say the number {i}."}],
            "max_tokens": 16,
        }
        replies[i] = server.post(body)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(replies) == list(range(8))
    routes = []
    for reply in replies.values():
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["choices"][0]["message"]["content"] is not None
        route = body["trading_agents"]["route"]
        assert reply.headers["x-trading-agents-route"] == route["reason"]
        assert body["model"] == (PRIMARY if route["reason"] == "primary" else FALLBACK)
        routes.append(route["reason"])
    assert set(routes) <= {"primary", "queue", "pressure", "deadline"}
    assert server.metric("trading_agents_serve_fallbacks_total") - before == sum(
        r != "primary" for r in routes
    )
    health = server.get("/health").json()
    assert health["queue_depth"] == 0 and health["in_flight"] == 0


def test_disconnect_mid_stream_stops_generation_and_the_next_request_runs(server: Server) -> None:
    max_tokens = 1500  # SmolLM2 repeats itself to the end of the budget on this prompt
    long = {
        "model": PRIMARY,
        "messages": [{"role": "user", "content": "Write forever."}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    cancelled_before = server.metric("trading_agents_serve_cancelled_total")
    tokens_before = server.metric("trading_agents_serve_cancelled_tokens_total")
    queued: dict[str, Any] = {}

    def second() -> None:
        body = {"model": PRIMARY, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
        queued["reply"] = server.post(body)

    with (
        httpx2.Client(timeout=300, headers={"authorization": f"Bearer {KEY}"}) as http,
        http.stream("POST", server.url + "/v1/chat/completions", json=long) as resp,
    ):
        assert resp.status_code == 200
        lines = resp.iter_lines()
        seen = 0
        for line in lines:
            if line.startswith("data: ") and '"content"' in line:
                seen += 1
            if seen >= 3:
                break
        waiter = threading.Thread(target=second)
        waiter.start()
        # the second request waits behind the first on the one loaded model
        for _ in range(600):
            model = next(m for m in server.get("/health").json()["models"] if m["id"] == PRIMARY)
            if model["waiting"] == 1:
                break
            time.sleep(0.05)
        assert model["waiting"] == 1 and model["in_flight"] == 1
    # leaving the block closes the connection mid-stream
    waiter.join(timeout=300)
    reply = queued["reply"]
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] >= 1
    assert server.metric("trading_agents_serve_cancelled_total") - cancelled_before == 1
    generated = server.metric("trading_agents_serve_cancelled_tokens_total") - tokens_before
    assert 3 <= generated < max_tokens / 2, generated
    health = server.get("/health").json()
    assert health["queue_depth"] == 0 and health["in_flight"] == 0


# --------------------------------------------------------------------------- bad requests


def _msg(text: str = "hi") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _raw(field: str, literal: str) -> str:
    """A request body with ``field`` set to a JSON literal json.dumps will not write (NaN, Infinity)."""
    return json.dumps({"model": PRIMARY, "messages": _msg()})[:-1] + f', "{field}": {literal}}}'


BAD: list[tuple[str, dict[str, Any] | str | list[Any], int, str | None]] = [
    ("unknown field", {"model": PRIMARY, "messages": _msg(), "frobnicate": 1}, 400, "frobnicate"),
    ("tools", {"model": PRIMARY, "messages": _msg(), "tools": [{"type": "function"}]}, 400, "tools"),
    ("empty tools", {"model": PRIMARY, "messages": _msg(), "tools": []}, 400, "tools"),
    (
        "user content null",
        {"model": PRIMARY, "messages": [{"role": "user", "content": None}]},
        400,
        "messages[0].content",
    ),
    (
        "temperature NaN",
        _raw("temperature", "NaN"),
        422,
        "temperature",
    ),
    (
        "top_p Infinity",
        _raw("top_p", "Infinity"),
        422,
        "top_p",
    ),
    ("n > 1", {"model": PRIMARY, "messages": _msg(), "n": 2}, 400, "n"),
    ("logprobs", {"model": PRIMARY, "messages": _msg(), "logprobs": True}, 400, "logprobs"),
    (
        "tool role",
        {"model": PRIMARY, "messages": [{"role": "tool", "content": "x"}]},
        400,
        "messages[0].role",
    ),
    (
        "image part",
        {
            "model": PRIMARY,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
        },
        400,
        "messages[0].content[0]",
    ),
    ("unknown model", {"model": "gpt-9", "messages": _msg()}, 404, "model"),
    ("missing messages", {"model": PRIMARY}, 422, "messages"),
    ("empty messages", {"model": PRIMARY, "messages": []}, 422, "messages"),
    (
        "temperature out of range",
        {"model": PRIMARY, "messages": _msg(), "temperature": 5},
        422,
        "temperature",
    ),
    ("wrong type", {"model": PRIMARY, "messages": "hello"}, 422, "messages"),
    ("not JSON", "{not json", 400, None),
    ("not an object", [1, 2], 400, None),
    (
        "max_tokens beyond context",
        {"model": PRIMARY, "messages": _msg(), "max_tokens": 100000},
        400,
        "max_tokens",
    ),
    (
        "stream_options without stream",
        {"model": PRIMARY, "messages": _msg(), "stream_options": {}},
        400,
        "stream_options",
    ),
    (
        "json_schema without schema",
        {
            "model": PRIMARY,
            "messages": _msg(),
            "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
        },
        400,
        "response_format",
    ),
    (
        "schema not an object",
        {
            "model": PRIMARY,
            "messages": _msg(),
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "string"}},
            },
        },
        400,
        "response_format",
    ),
    (
        "unknown response_format type",
        {"model": PRIMARY, "messages": _msg(), "response_format": {"type": "xml"}},
        422,
        "response_format.type",
    ),
    ("prompt beyond context", {"model": PRIMARY, "messages": _msg("word " * 9000)}, 400, "messages"),
    ("body too large", {"model": PRIMARY, "messages": _msg("x" * 70_000)}, 413, None),
]


@pytest.mark.parametrize(("case", "body", "status", "param"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_shaped_4xx(
    server: Server, case: str, body: Any, status: int, param: str | None
) -> None:
    if isinstance(body, str):
        reply = httpx2.post(
            server.url + "/v1/chat/completions",
            content=body,
            headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
            timeout=60,
        )
    else:
        reply = server.post(body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert "Traceback" not in reply.text


def test_refusals_name_the_clients_own_fields(server: Server) -> None:
    """Messages say what the client sent and which of its fields to change, never a server key."""

    def message(body: Any) -> str:
        if isinstance(body, str):
            reply = httpx2.post(
                server.url + "/v1/chat/completions",
                content=body,
                headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
                timeout=300,
            )
        else:
            reply = server.post(body)
        assert 400 <= reply.status_code < 500, reply.text
        return reply.json()["error"]["message"]

    nan = message(_raw("temperature", "NaN"))
    assert nan == "temperature is NaN: it must be a finite number (no NaN or Infinity)"
    assert "leave tools out" in message({"model": PRIMARY, "messages": _msg(), "tools": []})
    null = message({"model": PRIMARY, "messages": [{"role": "user", "content": None}]})
    assert "messages[0].content is null" in null and "user message needs content" in null
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    structured = {
        "model": PRIMARY,
        "messages": _msg("Answer in JSON."),
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    }
    cut = message({**structured, "max_tokens": 2})
    assert "raise max_tokens in the request" in cut and "llm.max_tokens" not in cut
    cut = message({**structured, "max_completion_tokens": 2})
    assert "raise max_completion_tokens in the request" in cut


def test_auth_and_unknown_routes(server: Server) -> None:
    body = {"model": PRIMARY, "messages": _msg()}
    missing = httpx2.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    wrong = httpx2.post(
        server.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": "Bearer nope-123"},
        timeout=30,
    )
    for reply in (missing, wrong, httpx2.get(server.url + "/health", timeout=30)):
        assert reply.status_code == 401
        assert reply.json()["error"]["type"] == "authentication_error"
        assert KEY not in reply.text and "nope-123" not in reply.text
    assert server.get("/v1/nothing").status_code == 404
    assert (
        httpx2.delete(server.url + "/v1/models", headers={"authorization": f"Bearer {KEY}"}).status_code
        == 405
    )
    bad_deadline = server.post(body, headers={"x-trading-agents-deadline": "soon"})
    assert (
        bad_deadline.status_code == 400
        and bad_deadline.json()["error"]["param"] == "x-trading-agents-deadline"
    )
    assert server.metric("trading_agents_serve_requests_total", 'status="500"') == 0


def test_stop_strings_cut_the_reply(server: Server) -> None:
    body = {"model": PRIMARY, "messages": _msg("List the days of the week, one per line."), "max_tokens": 60}
    full = server.post(body).json()["choices"][0]["message"]["content"]
    assert "\n" in full
    cut = server.post(body | {"stop": "\n"}).json()
    assert cut["choices"][0]["message"]["content"] == full.split("\n")[0]
    assert cut["choices"][0]["finish_reason"] == "stop"


# --------------------------------------------------------------------------- the desk on the server


def test_desk_client_replays_from_its_cache(server: Server, tmp_path: Path) -> None:
    from autogen_core.models import UserMessage

    from utils.llm_integration.server_client import ServerChatCompletionClient, fetch_health

    health = fetch_health(server.url, KEY)
    shas = {m["id"]: m["sha256"] for m in health["models"] if m["sha256"]}

    def client() -> ServerChatCompletionClient:
        return ServerChatCompletionClient(
            base_url=server.url,
            model=PRIMARY,
            api_key=KEY,
            model_sha256=shas,
            candidates=[PRIMARY],
            max_tokens=120,
            response_cache=str(tmp_path / "cache.sqlite"),
        )

    async def ask(c: ServerChatCompletionClient) -> Any:
        try:
            return await c.create([UserMessage(content="Verdict on GOOG?", source="u")], json_output=Verdict)
        finally:
            await c.close()

    first_client, second_client = client(), client()
    first = asyncio.run(ask(first_client))
    requests_before = server.metric("trading_agents_serve_requests_total", 'endpoint="/v1/chat/completions"')
    again = asyncio.run(ask(second_client))
    assert not first.cached and again.cached and again.content == first.content
    assert Verdict.model_validate_json(again.content)
    assert second_client.last_route == first_client.last_route and first_client.last_route.reason == "primary"
    assert second_client.last_metrics.model_sha256 == shas[PRIMARY]
    assert first_client.last_prompt.startswith("<|im_start|>")  # the prompt as the model saw it
    assert (
        server.metric("trading_agents_serve_requests_total", 'endpoint="/v1/chat/completions"')
        == requests_before
    )


def _run(config: Path, home: Path) -> dict[str, Any]:
    args = [
        sys.executable,
        "-m",
        "trading_agents.cli.app",
        "run",
        "--days",
        "1",
        "--seed",
        "3",
        "--config",
        str(config),
    ]
    done = subprocess.run([*args, "--json"], env=_env(home), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_run_through_the_server_decides_as_in_process(server: Server, tmp_path: Path) -> None:
    local_cfg = _config(tmp_path / "local.yaml", server.models_dir, selector={"enabled": False})
    remote_cfg = _config(
        tmp_path / "remote.yaml",
        server.models_dir,
        selector={"enabled": False},
        llm={"server_url": server.url, "server_api_key": KEY},
    )
    local = _run(local_cfg, tmp_path / "home-local")
    remote = _run(remote_cfg, tmp_path / "home-remote")

    def decisions(summary: dict[str, Any]) -> list[Any]:
        return [
            (
                d["date"],
                d["intent"],
                [(a["role"], a["output"], a["model"], a["route_reason"]) for a in d["agents"]],
            )
            for d in summary["decisions"]
        ]

    assert decisions(remote) == decisions(local)
    assert any(a["output"] for d in local["decisions"] for a in d["agents"])
    assert remote["llm"]["models"][PRIMARY] == local["llm"]["models"][PRIMARY]
    assert remote["llm"]["prompt_tokens"] == local["llm"]["prompt_tokens"]
    assert remote["models"]["server"] == server.url


# --------------------------------------------------------------------------- the command


def _serve_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "trading_agents.cli.app", "serve", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_public_address_without_key_is_refused(isolated_state: Path) -> None:
    done = _serve_cli("--host", "0.0.0.0", "--port", str(_free_port()), env=_env(isolated_state))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to serve on 0.0.0.0 without an API key")
    assert "TRADING_AGENTS_SERVE__API_KEY" in lines[0]


def test_port_in_use_is_one_error_line_and_the_key_is_not_echoed(isolated_state: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = _serve_cli("--port", str(port), "--api-key", "s3cret-abc", env=_env(isolated_state))
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot listen on 127.0.0.1:") and "another --port" in done.stderr
    assert "s3cret-abc" not in done.stderr + done.stdout


def test_a_request_past_the_timeout_is_stopped_and_answered_504(tmp_path: Path, tiny_llama: Path) -> None:
    """``serve.request_timeout_s``: the generation stops and the client gets a JSON 504. A 1 ms
    limit cannot be met by any reply, so the verdict does not depend on the machine's speed."""
    with _running_server(tmp_path, tiny_llama.parent, serve={"request_timeout_s": 0.001}) as slow:
        body = {
            "model": PRIMARY,
            "messages": [{"role": "user", "content": "Write a very long story about markets."}],
            "max_tokens": 4000,
        }
        reply = slow.post(body)
        assert reply.status_code == 504, reply.text
        assert reply.json()["error"]["code"] == "timeout"
        assert slow.metric("trading_agents_serve_cancelled_total", 'reason="timeout"') == 1
        assert slow.get("/health").status_code == 200  # the server goes on serving


def test_selector_is_served_without_a_fallback_as_the_primary(tmp_path: Path, tiny_llama: Path) -> None:
    """A client written against ``selector`` works on an install with no fallback model."""
    with _running_server(tmp_path, tiny_llama.parent, llm={"fallback": None}) as alone:
        models = [m["id"] for m in alone.get("/v1/models").json()["data"]]
        assert models == [PRIMARY, "selector"]
        assert alone.get("/health").json()["selector"] == "selector"
        body = {"model": "selector", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
        reply = alone.post(body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["trading_agents"]["route"]["reason"] == "primary"
        assert reply.headers["x-trading-agents-route"] == "primary"
        assert reply.json()["model"] == PRIMARY


def test_a_cache_filled_through_the_server_replays_in_process_and_back(
    server: Server, tmp_path: Path, embedded_model: Path
) -> None:
    """One replay key rule: the server path and the in-process path share recorded replies."""
    from autogen_core.models import UserMessage

    from utils.llm_integration.autogen_client import LocalLlamaChatCompletionClient
    from utils.llm_integration.response_cache import ResponseCacheClient
    from utils.llm_integration.server_client import ServerChatCompletionClient, fetch_health

    shas = {m["id"]: m["sha256"] for m in fetch_health(server.url, KEY)["models"] if m["sha256"]}
    cache = tmp_path / "cache.sqlite"

    def remote() -> ServerChatCompletionClient:
        return ServerChatCompletionClient(
            base_url=server.url,
            model=PRIMARY,
            api_key=KEY,
            model_sha256=shas,
            max_tokens=100,
            response_cache=str(cache),
        )

    def local() -> ResponseCacheClient:
        inner = LocalLlamaChatCompletionClient(model_path=str(embedded_model), max_tokens=100, n_threads=1)
        return ResponseCacheClient(inner, cache)

    async def ask(client: Any, question: str) -> Any:
        try:
            return await client.create([UserMessage(content=question, source="u")], json_output=Verdict)
        finally:
            await client.close()

    served = asyncio.run(ask(remote(), "Verdict on GOOG?"))
    replayed = asyncio.run(ask(local(), "Verdict on GOOG?"))  # no model call: the server's reply
    assert not served.cached and replayed.cached and replayed.content == served.content

    requests_before = server.metric("trading_agents_serve_requests_total", 'endpoint="/v1/chat/completions"')
    computed = asyncio.run(ask(local(), "Verdict on MSFT?"))
    back = asyncio.run(ask(remote(), "Verdict on MSFT?"))  # no request: the in-process reply
    assert not computed.cached and back.cached and back.content == computed.content
    assert (
        server.metric("trading_agents_serve_requests_total", 'endpoint="/v1/chat/completions"')
        == requests_before
    )
