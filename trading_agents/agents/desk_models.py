"""What serves the desk: the resolved models, notes, and one model client per role.

:class:`DeskModels` is what every way of building the desk's clients returns (in-process in
``clients``, on a ``serve`` server in ``server_clients``, on an external OpenAI-compatible
endpoint in ``endpoint_clients``); it lives apart from them so that none imports another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autogen_core.models import ChatCompletionClient

from trading_agents.model_files.registry import ResolvedModel


@dataclass
class DeskModels:
    """What serves the desk: resolved models, notes about substitutions, the clients per role."""

    primary: ResolvedModel
    fallback: ResolvedModel | None
    notes: list[str]
    clients: dict[str, ChatCompletionClient] = field(default_factory=dict)
    server: str | None = None  # llm.server_url or the endpoint's base_url when a server serves
    served_sha256: dict[str, str] = field(default_factory=dict)  # model -> sha256 or endpoint identity

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"primary": self.primary.name, "primary_path": str(self.primary.path)}
        out["fallback"] = self.fallback.name if self.fallback else None
        if self.server is not None:
            out["server"] = self.server
        else:
            from utils.llm_integration.loaded_model import loaded_models

            # llama.cpp threads per loaded model: n_threads auto resolved, and how
            out["threads"] = {m.display: m.threads.to_dict() for m in loaded_models() if m.threads}
        return out

    def model_sha256(self, home: Path) -> dict[str, str]:
        """Model name -> file sha256 (hashed here, or as the server reported them)."""
        if self.server is not None:
            return dict(self.served_sha256)
        from utils.llm_integration.files import file_sha256

        return {m.name: file_sha256(m.path, home) for m in (self.primary, self.fallback) if m is not None}

    def preload(self) -> None:
        """Load the primary now when nothing could stand in for it (no fallback).

        Without this a model llama.cpp cannot load would fail every bar closed, one by one,
        and the session would record those bars as decided. Raises ``ModelLoadError`` (exit 3).
        """
        if self.fallback is not None:
            return
        llm = getattr(self.clients.get("analyst"), "llm", None)  # through a cache wrapper too
        if llm is not None:
            _ = llm.llama
