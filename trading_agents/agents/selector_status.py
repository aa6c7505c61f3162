"""What the model selector of the configured desk sees right now (``trading-agents models status``).

The selector (:mod:`utils.llm_integration.model_selector`) routes; this side knows the settings,
builds the desk's selector config (:func:`trading_agents.agents.clients.selector_config`), reports
its models, RAM fit, machine load, queues, bench and the route a call would take now, and says
why there is no selector when there is none. Nothing is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from trading_agents.agents.clients import selector_config
from trading_agents.config.settings import Settings
from trading_agents.model_files.registry import resolve_llm_pair
from utils.llm_integration.autogen_client import LocalLlamaChatCompletionClient
from utils.llm_integration.loaded_model import get_local_llm
from utils.llm_integration.model_selector import (
    FixedProbe,
    LoadProbe,
    MachineLoad,
    ModelSelectorClient,
    Route,
    SelectorConfig,
    default_probe,
    kv_bytes_per_token,
    load_local_client,
    primary_health,
    ram_needed_mb,
)

STATUS_ROLE = "analyst"  # the role whose route the status reports


def desk_selector_config(settings: Settings) -> tuple[SelectorConfig | None, dict[str, Any]]:
    """The selector config the desk would build for its analyst, or None, and what to report.

    Returns ``(SelectorConfig or None, info)``; ``info`` holds the resolved model names, the
    substitution notes and, when there is no selector, ``why_inactive``.
    """
    primary, fallback, notes = resolve_llm_pair(settings)
    info: dict[str, Any] = {"notes": notes, "primary_name": primary.name}
    info["fallback_name"] = fallback.name if fallback else None
    if fallback is None:
        why = (
            "no fallback configured (llm.fallback is null)"
            if not settings.llm.fallback
            else f"the fallback resolves to the same file as the primary ({primary.path.name})"
        )
        return None, {**info, "why_inactive": why, "primary_path": str(primary.path)}
    if not settings.selector.enabled:
        return None, {**info, "why_inactive": "selector.enabled is false", "primary_path": str(primary.path)}
    return selector_config(primary, fallback, settings, STATUS_ROLE), info


def selector_status(settings: Settings, *, probe: LoadProbe | None = None) -> dict[str, Any]:
    """:func:`config_status` of the configured desk's selector, with the resolved names and notes;
    with no selector, ``{"active": False, "why_inactive": ...}`` and the resolved names."""
    cfg, info = desk_selector_config(settings)
    if cfg is None:
        return {"active": False, **info}
    return {**config_status(cfg, probe=probe), **info}


def _model_status(
    client: LocalLlamaChatCompletionClient | None, load: MachineLoad, reserve_mb: int
) -> dict[str, Any] | None:
    if client is None:
        return None
    spec = client.spec
    llm = get_local_llm(spec)  # the process's shared instance; nothing is loaded here
    need = ram_needed_mb(spec)
    loaded = bool(llm and llm.loaded)
    p_rate, g_rate = llm.rates() if llm else (0.0, 0.0)
    return {
        "name": spec.display_name,
        "path": str(spec.path),
        "file_present": spec.path.is_file(),
        "n_ctx": spec.n_ctx,
        "kv_bytes_per_token": kv_bytes_per_token(spec.path),
        "ram_needed_mb": need,
        "fits_in_ram": True if loaded else (need is not None and need + reserve_mb <= load.available_mb),
        "loaded": loaded,
        "in_flight": llm.in_flight if llm else 0,
        "waiting": llm.waiting if llm else 0,
        "prompt_tokens_per_s": round(p_rate, 1),
        "gen_tokens_per_s": round(g_rate, 1),
    }


def config_status(
    config: SelectorConfig | Mapping[str, Any], *, probe: LoadProbe | None = None
) -> dict[str, Any]:
    """A live snapshot: models, RAM fit, machine load, queues, bench, and the route a call would take now.

    Accepts a :class:`SelectorConfig` or its dict; :func:`selector_status` builds it from the settings.
    """
    cfg = config if isinstance(config, SelectorConfig) else SelectorConfig(**dict(config))
    probe = probe or default_probe()
    primary = load_local_client(cfg.primary, "primary")
    fallback = load_local_client(cfg.fallback, "fallback") if cfg.fallback is not None else None
    load = probe.sample()
    health = primary_health(primary.spec)
    now = time.monotonic()
    out: dict[str, Any] = {
        "active": fallback is not None,
        "role": cfg.role,
        "primary": _model_status(primary, load, cfg.min_available_mb),
        "fallback": _model_status(fallback, load, cfg.min_available_mb),
        "machine": asdict(load),
        "thresholds": cfg.model_dump(exclude={"primary", "fallback", "role"}),
        "cooldown": {
            "failures": health.failures,
            "benched": health.benched_for(now) > 0,
            "benched_for_s": round(health.benched_for(now), 1),
            "last_error": health.last_error,
        },
        "in_pressure": health.in_pressure,
    }
    if fallback is None:
        out["route_now"] = Route(primary.spec.display_name, "primary", "no fallback configured").to_dict()
        out["why_inactive"] = "no fallback model configured"
        return out
    if not fallback.spec.path.is_file():
        out["active"] = False
        out["why_inactive"] = f"fallback file {fallback.spec.path} does not exist"
        out["route_now"] = Route(primary.spec.display_name, "primary", out["why_inactive"]).to_dict()
        return out
    client = ModelSelectorClient(cfg, probe=FixedProbe(load))
    out["route_now"] = client.plan_now().to_dict()
    out["in_pressure"] = health.in_pressure
    return out
