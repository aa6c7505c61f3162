"""Prometheus metrics of one server process (``GET /metrics``), in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """Requests by status, tokens, latency, selector fallbacks by reason, queue depth."""

    def __init__(self, queue_depth: Callable[[], int], in_flight: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "trading_agents_serve_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "trading_agents_serve_tokens",
            "Tokens by kind (prompt, cached_prompt, completion) and serving model",
            ["kind", "model"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "trading_agents_serve_completion_seconds",
            "Chat completion wall time, arrival to last byte, by serving model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "trading_agents_serve_fallbacks",
            "Selector requests served by the fallback, by the selector's reason",
            ["reason"],
            registry=self.registry,
        )
        Gauge(
            "trading_agents_serve_queue_depth", "Calls waiting for a model", registry=self.registry
        ).set_function(queue_depth)
        Gauge("trading_agents_serve_in_flight", "Calls generating now", registry=self.registry).set_function(
            in_flight
        )

    def completed(
        self, model: str, reason: str, prompt: int, cached: int, completion: int, seconds: float
    ) -> None:
        self.tokens.labels("prompt", model).inc(prompt)
        self.tokens.labels("cached_prompt", model).inc(cached)
        self.tokens.labels("completion", model).inc(completion)
        self.latency.labels(model).observe(seconds)
        if reason != "primary":
            self.fallbacks.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
