"""The desk's recorded request stream, replayed against an OpenAI-compatible server at N in flight.

Standard library only, so that it runs on a machine that has none of this project's
dependencies (a GPU box with a bare Python): the desk itself is not run there, the exact
HTTP bodies it sends are.

Two steps:

1. ``capture``: a logging proxy. Start a llama.cpp server, put this in front of it and run a
   real desk against the proxy; every ``POST /v1/chat/completions`` body is forwarded
   unchanged and appended to a JSON file (with the reply's usage)::

       python scripts/gpu_engines_bench.py capture --upstream http://127.0.0.1:8080 \\
           --port 8090 --out stream.json
       trading-agents run --endpoint http://127.0.0.1:8090 --endpoint-model smollm2 --days 2

2. ``replay``: keep N requests in flight against a server started with ``-np N``
   (continuous batching), each worker taking the next recorded body round-robin, and
   report aggregate completion tokens/s, decisions/hour (``--calls-per-decision`` calls
   make one decision: the desk's analyst, risk and executor roles), and latency
   p50/p95 per call and per decision::

       python scripts/gpu_engines_bench.py replay --stream stream.json \\
           --url http://127.0.0.1:8080 --in-flight 16 --requests 64 --json out.json

   ``--model NAME`` rewrites each body's ``model`` to what the server lists; ``--max-tokens``
   overrides the recorded ``max_tokens``; ``--ignore-eos`` asks llama-server to generate all
   ``max_tokens`` (to compare like for like with ``llama-batched-bench``).

Exit codes: 0 done, 2 bad arguments or unreadable stream, 3 the server could not be
reached or answered an error.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHAT_PATH = "/v1/chat/completions"


def _post(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def capture(upstream: str, port: int, out: Path) -> None:
    """Serve a forwarding proxy on loopback until interrupted; record each chat body."""
    lock = threading.Lock()
    records: list[dict[str, Any]] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def _forward(self, method: str) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else None
            headers = {
                k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")
            }
            req = urllib.request.Request(upstream + self.path, data=raw, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=900) as resp:
                    status, payload = resp.status, resp.read()
            except urllib.error.HTTPError as err:
                status, payload = err.code, err.read()
            if method == "POST" and self.path.rstrip("/").endswith("chat/completions") and raw:
                reply: dict[str, Any] = {}
                with contextlib.suppress(ValueError):
                    reply = json.loads(payload)
                with lock:
                    records.append({"body": json.loads(raw), "status": status, "usage": reply.get("usage")})
                    tmp = out.with_suffix(".tmp")
                    tmp.write_text(json.dumps({"requests": records}, indent=1))
                    tmp.replace(out)
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._forward("GET")

        def do_POST(self) -> None:
            self._forward("POST")

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Proxy)
    print(f"recording {upstream} on http://127.0.0.1:{port} into {out}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def replay(
    bodies: list[dict[str, Any]],
    url: str,
    in_flight: int,
    requests: int,
    *,
    model: str | None = None,
    max_tokens: int | None = None,
    ignore_eos: bool = False,
    no_schema: bool = False,
    calls_per_decision: int = 3,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """Send ``requests`` calls with ``in_flight`` workers; each worker runs whole decisions
    (``calls_per_decision`` consecutive recorded bodies, in their recorded order)."""
    endpoint = url.rstrip("/") + CHAT_PATH
    lock = threading.Lock()
    next_index = [0]
    calls: list[dict[str, Any]] = []
    decisions: list[float] = []
    errors: list[str] = []

    def prepared(i: int) -> dict[str, Any]:
        body = dict(bodies[i % len(bodies)])
        # Each decision is a different desk: tag its first user message, so that no two desks
        # send the same prompt (a slot would serve it from its KV cache) while the system
        # prompt and a decision's own earlier turns stay shared prefixes, as in a real run.
        messages = [dict(m) for m in body["messages"]]
        for m in messages:
            if m.get("role") == "user" and isinstance(m.get("content"), str):
                m["content"] = f"Desk {i // calls_per_decision}.\n" + m["content"]
                break
        body["messages"] = messages
        body["stream"] = False
        body.pop("stream_options", None)
        if no_schema:
            body.pop("response_format", None)
        if model is not None:
            body["model"] = model
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if ignore_eos:
            body["ignore_eos"] = True
        return body

    def worker() -> None:
        while True:
            with lock:
                start = next_index[0]
                if start >= requests:
                    return
                next_index[0] += calls_per_decision
            t_decision = time.perf_counter()
            ok = True
            for i in range(start, min(start + calls_per_decision, requests)):
                t0 = time.perf_counter()
                try:
                    reply = _post(endpoint, prepared(i), timeout)
                except (urllib.error.URLError, OSError, ValueError) as err:
                    with lock:
                        errors.append(f"call {i}: {err}")
                    ok = False
                    continue
                usage = reply.get("usage") or {}
                timings = reply.get("timings") or {}
                with lock:
                    calls.append(
                        {
                            "latency_s": time.perf_counter() - t0,
                            "prompt_tokens": usage.get("prompt_tokens", 0),
                            "completion_tokens": usage.get("completion_tokens", 0),
                            "cached_tokens": timings.get("cache_n", 0),
                            "finish_reason": (reply.get("choices") or [{}])[0].get("finish_reason"),
                        }
                    )
            if ok:
                with lock:
                    decisions.append(time.perf_counter() - t_decision)

    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    completion = sum(c["completion_tokens"] for c in calls)
    prompt = sum(c["prompt_tokens"] for c in calls)
    latencies = [c["latency_s"] for c in calls]
    finish: dict[str, int] = {}
    for c in calls:
        finish[str(c["finish_reason"])] = finish.get(str(c["finish_reason"]), 0) + 1
    return {
        "in_flight": in_flight,
        "calls": len(calls),
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": round(wall, 3),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_prompt_tokens": sum(c["cached_tokens"] for c in calls),
        "generation_tokens_per_s": round(completion / wall, 1) if wall else None,
        "total_tokens_per_s": round((completion + prompt) / wall, 1) if wall else None,
        "mean_completion_tokens": round(completion / len(calls), 1) if calls else None,
        "mean_prompt_tokens": round(prompt / len(calls), 1) if calls else None,
        "decisions": len(decisions),
        "decisions_per_hour": round(len(decisions) * 3600 / wall, 1) if wall else None,
        "call_latency_p50_s": _round(_percentile(latencies, 0.5)),
        "call_latency_p95_s": _round(_percentile(latencies, 0.95)),
        "decision_latency_p50_s": _round(_percentile(decisions, 0.5)),
        "decision_latency_p95_s": _round(_percentile(decisions, 0.95)),
        "finish_reasons": finish,
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _load_stream(path: Path, calls_per_decision: int) -> list[dict[str, Any]]:
    """The recorded bodies with status 200, cut to whole decisions."""
    data = json.loads(path.read_text())
    bodies = [r["body"] for r in data["requests"] if r.get("status", 200) == 200]
    bodies = bodies[: len(bodies) - len(bodies) % calls_per_decision]
    if not bodies:
        raise ValueError(f"no whole decision ({calls_per_decision} recorded requests with status 200)")
    return bodies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    cap = sub.add_parser("capture", help="record the desk's requests through a forwarding proxy")
    cap.add_argument("--upstream", required=True)
    cap.add_argument("--port", type=int, required=True)
    cap.add_argument("--out", type=Path, required=True)
    rep = sub.add_parser("replay", help="replay a recorded stream at N in flight")
    rep.add_argument("--stream", type=Path, required=True)
    rep.add_argument("--url", required=True)
    rep.add_argument("--in-flight", type=int, required=True)
    rep.add_argument("--requests", type=int, help="calls to send (default: 4 decisions per slot)")
    rep.add_argument("--model")
    rep.add_argument("--max-tokens", type=int)
    rep.add_argument("--ignore-eos", action="store_true")
    rep.add_argument("--no-schema", action="store_true", help="drop response_format (no grammar)")
    rep.add_argument("--calls-per-decision", type=int, default=3)
    rep.add_argument("--warmup", type=int, default=0, help="calls sent (and not counted) before timing")
    rep.add_argument("--label", default="")
    rep.add_argument("--json", type=Path, help="append the result as one JSON line to this file")
    args = parser.parse_args(argv)
    if args.cmd == "capture":
        capture(args.upstream.rstrip("/"), args.port, args.out)
        return 0
    try:
        bodies = _load_stream(args.stream, args.calls_per_decision)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: cannot read the stream {args.stream}: {err}", file=sys.stderr)
        return 2
    if args.in_flight < 1:
        print("error: --in-flight must be at least 1", file=sys.stderr)
        return 2
    common = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "ignore_eos": args.ignore_eos,
        "no_schema": args.no_schema,
        "calls_per_decision": args.calls_per_decision,
    }
    if args.warmup:
        # short replies: the warm-up only loads kernels and fills the system-prompt cache
        replay(
            bodies, args.url, min(args.in_flight, args.warmup), args.warmup, **{**common, "max_tokens": 16}
        )
    requests = args.requests or 4 * args.calls_per_decision * args.in_flight
    result = replay(bodies, args.url, args.in_flight, requests, **common)
    result["label"] = args.label
    result["no_schema"] = args.no_schema
    result["stream_bodies"] = len(bodies)
    if args.json:
        with args.json.open("a") as fh:
            fh.write(json.dumps(result) + "\n")
    print(json.dumps(result))
    return 3 if result["calls"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
