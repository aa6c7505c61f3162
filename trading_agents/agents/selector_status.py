"""What the model selector of the configured desk sees right now (``trading-agents models status``).

The LLM layer reports on a selector config
(:func:`utils.llm_integration.model_selector.selector_status`); this side knows the settings,
resolves the models the way the desk does and says why there is no selector when there is none.
"""

from __future__ import annotations

from typing import Any

from trading_agents.agents.clients import selector_config
from trading_agents.config.settings import Settings
from trading_agents.models.registry import resolve_llm_pair

STATUS_ROLE = "analyst"  # the role whose route the status reports


def desk_selector_config(settings: Settings) -> tuple[Any, dict[str, Any]]:
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


def desk_selector_status(settings: Settings, *, probe: Any = None) -> dict[str, Any]:
    """:func:`~utils.llm_integration.model_selector.selector_status` of the configured desk;
    with no selector, ``{"active": False, "why_inactive": ...}`` and the resolved names."""
    from utils.llm_integration.model_selector import selector_status

    cfg, info = desk_selector_config(settings)
    if cfg is None:
        return {"active": False, **info}
    return {**selector_status(cfg, probe=probe), **info}
