"""``trading-agents models status``: what the model selector sees right now and where a call would go."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from trading_agents.cli.common import ConfigOption, JsonOption, console, emit_json, settings_from
from trading_agents.errors import ModelError
from utils.llm_integration.errors import LLMError


def status(config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """Show the model selector's live view: models, RAM fit, load, queues, cooldown, route now.

    Example: trading-agents models status --json
    """
    from trading_agents.agents.selector_status import selector_status

    settings = settings_from(config)
    try:
        snap = selector_status(settings)
    except LLMError as exc:
        raise ModelError(exc.message) from None
    if json_out:
        emit_json(snap)
        return
    for note in snap.get("notes", []):
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if not snap.get("active"):
        console.print(
            f"selector inactive: {snap.get('why_inactive', 'no fallback')}; every call goes to "
            f"{snap.get('primary_name') or (snap.get('primary') or {}).get('name')}",
            highlight=False,
        )
        if "primary" not in snap:
            return
    _print_tables(snap)


def _print_tables(snap: dict[str, Any]) -> None:
    models = Table(title="models", title_justify="left")
    for column in ("role", "name", "file", "ram need MB", "fits RAM", "loaded", "in flight", "waiting"):
        models.add_column(column, no_wrap=column != "name", overflow="fold")
    for role in ("primary", "fallback"):
        m = snap.get(role)
        if not m:
            continue
        models.add_row(
            role,
            m["name"],
            "present" if m["file_present"] else "MISSING",
            f"{m['ram_needed_mb']:.0f}" if m["ram_needed_mb"] is not None else "?",
            "yes" if m["fits_in_ram"] else "NO",
            "yes" if m["loaded"] else "no",
            str(m["in_flight"]),
            str(m["waiting"]),
        )
    console.print(models)
    machine, cool, limits = snap["machine"], snap["cooldown"], snap["thresholds"]
    view = Table(title="selector", title_justify="left")
    view.add_column("what", no_wrap=True)
    view.add_column("value", overflow="fold")
    view.add_row(
        "load per core",
        f"{machine['load_per_core_now']:.2f} now, {machine['load_per_core_1m']:.2f} 1-min"
        f" (limit {limits['max_load_per_core']}, {machine['cores']} CPUs)",
    )
    view.add_row("available memory", f"{machine['available_mb']:.0f} MB (min {limits['min_available_mb']})")
    view.add_row("in pressure", "yes" if snap["in_pressure"] else "no")
    benched = f"benched for {cool['benched_for_s']}s" if cool["benched"] else "not benched"
    view.add_row("cooldown", f"{benched}, {cool['failures']} failures {cool['last_error']}".strip())
    route = snap["route_now"]
    view.add_row("route now", f"{route['model']} ({route['reason']}) {route['detail']}".strip())
    console.print(view)
