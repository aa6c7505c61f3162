"""The model selector's limits, declared once.

:class:`~utils.llm_integration.model_selector.SelectorConfig` and the trading settings'
``selector:`` section both extend :class:`SelectorLimits`. Cheap to import (pydantic only):
the settings load it on every command.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SelectorLimits(BaseModel):
    """When the selector leaves the primary model: queue, deadline, machine pressure, failures."""

    model_config = ConfigDict(extra="forbid")

    max_in_flight: int = Field(1, ge=1, description="Primary requests in flight before queueing counts.")
    max_queue: int = Field(1, ge=0, description="Queued primary requests tolerated before falling back.")
    deadline_s: float | None = Field(None, gt=0.0, description="Per call; null: none.")
    max_load_per_core: float = Field(1.5, gt=0.0)
    min_available_mb: int = Field(512, ge=0)
    failure_threshold: int = Field(3, ge=1, description="Failures before the primary is benched.")
    cooldown_s: float = Field(30.0, ge=0.0)
    hysteresis: float = Field(0.2, ge=0.0, lt=1.0, description="Return only below (1-h) x threshold.")
