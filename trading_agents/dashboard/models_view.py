"""The models page: the registry and what is downloaded, the selector's live view (what
``trading-agents models status`` prints) and a configured ``serve``'s ``/health`` and metrics.
Nothing is loaded; the serve is asked with a short timeout and its key is never shown.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from trading_agents.agents.selector_status import selector_status
from trading_agents.config.settings import Settings
from trading_agents.model_files.registry import load_registry, models_dir

SERVE_TIMEOUT_S = 2.0
METRIC_PREFIXES = ("trading_agents_",)


def registry_rows(settings: Settings) -> list[dict[str, Any]]:
    """Each registry model with its file and whether it is on disk."""
    folder = models_dir(settings)
    rows = []
    for entry in load_registry(settings).entries():
        names = (entry.name, *entry.aliases)
        rows.append(
            {
                "name": entry.name,
                "aliases": ", ".join(entry.aliases),
                "file": entry.filename,
                "size_gb": round(entry.size_bytes / 1e9, 2),
                "quantization": entry.quantization,
                "downloaded": entry.embedded or (folder / entry.filename).is_file(),
                "embedded": entry.embedded,
                "role": "primary"
                if settings.llm.primary in names
                else "fallback"
                if settings.llm.fallback in names
                else "",
            }
        )
    return rows


def selector_view(settings: Settings) -> dict[str, Any]:
    try:
        return {"ok": True, "status": selector_status(settings)}
    except Exception as exc:  # a missing file or bad registry: shown on the page, the app keeps going
        return {"ok": False, "message": f"{type(exc).__name__}: {exc}"}


def serve_view(settings: Settings) -> dict[str, Any]:
    """``/health`` and the trading_agents_* metrics of the serve in ``llm.server_url``."""
    url = settings.llm.server_url
    if not url:
        return {"configured": False, "message": "no serve configured (llm.server_url is null)"}
    base = url.rstrip("/").removesuffix("/v1")
    headers = {}
    if settings.llm.server_api_key is not None:
        headers["Authorization"] = f"Bearer {settings.llm.server_api_key.get_secret_value()}"
    out: dict[str, Any] = {"configured": True, "url": base}
    try:
        out["health"] = json.loads(_get(f"{base}/health", headers))
        text = _get(f"{base}/metrics", headers)
        out["metrics"] = [
            line
            for line in text.splitlines()
            if line.startswith(METRIC_PREFIXES) and not line.startswith("#")
        ][:80]
    except (urllib.error.URLError, OSError, ValueError) as exc:
        out["message"] = (
            f"{base} did not answer ({getattr(exc, 'reason', exc)}); is `trading-agents serve` running?"
        )
    return out


def _get(url: str, headers: dict[str, str]) -> str:
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=SERVE_TIMEOUT_S) as resp:
        return resp.read().decode("utf-8", "replace")
