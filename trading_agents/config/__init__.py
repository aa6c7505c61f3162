"""Layered, validated settings: defaults < YAML file < environment < CLI flags."""

from trading_agents.config.settings import Settings, load_settings, project_root

__all__ = ["Settings", "load_settings", "project_root"]
