"""What ``--help`` shows beside each option: a metavar that tells what to write, or nothing.

Typer prints the Python type (``<bool>``, ``<list[str]>``, ``<path>``); :func:`tidy_metavars`
replaces it once, over the whole command tree, before a command runs: flags show nothing,
dates ``YYYY-MM-DD``, paths ``FILE`` or ``DIR``, numbers ``N`` or ``NUMBER``, repeatable
values their element (``--ticker TICKER``). A metavar set on an option itself is kept.
"""

from __future__ import annotations

from typing import Any

#: Option names (without dashes) that take a folder rather than a file.
DIR_OPTIONS = frozenset({"out", "home", "models-dir", "dir", "results"})
#: Option names whose value is a date.
DATE_OPTIONS = frozenset({"start", "end", "today", "since", "until", "date"})


def tidy_metavars(command: Any) -> Any:
    """Set a readable metavar on every parameter of ``command`` (a Typer/click command) and
    its subcommands; returns ``command``."""
    for param in [*command.params, _help_option(command)]:
        if param is None:
            continue
        if getattr(param, "param_type_name", "") == "argument":
            shown = _value_metavar(param)
            # an argument's name is printed already: its type column shows FILE/DIR or nothing
            param.display_type_rich = lambda ctx, shown=shown: shown if shown in ("FILE", "DIR") else None
        elif param.metavar is None:
            param.metavar = metavar_for(param)
    for sub in (getattr(command, "commands", None) or {}).values():
        tidy_metavars(sub)
    return command


def _help_option(command: Any) -> Any:
    """The ``--help`` option, made now (click makes it on first use and keeps it)."""
    try:
        return command.get_help_option(command.context_class(command))
    except Exception:
        return None


def metavar_for(param: Any) -> str:
    """The metavar an option should show (``""`` for flags: nothing to write after them)."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    return _value_metavar(param)


def _value_metavar(param: Any) -> str:
    name = _long_name(param)
    desc = getattr(param, "type_descriptor", None)
    annotation = getattr(desc, "annotation", None)
    element = (
        getattr(annotation, "__args__", (annotation,))[0] if getattr(desc, "is_list", False) else annotation
    )
    if name in DATE_OPTIONS:
        return "YYYY-MM-DD"
    if getattr(desc, "is_path", False) or getattr(desc, "is_file", False):
        return "DIR" if name in DIR_OPTIONS or name.endswith("-dir") else "FILE"
    if getattr(desc, "is_choice", False):
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
    if getattr(desc, "is_list", False) and element is str:
        return name.upper().removesuffix("S") if name else "VALUE"
    if element is int:
        return "N"
    if element is float:
        return "NUMBER"
    return "TEXT"


def _long_name(param: Any) -> str:
    longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return longs[0][2:] if longs else (param.name or "").replace("_", "-")
