"""``trading-agents schedule``: run the daily backtest from cron after the market closes.

``install`` adds one crontab line, tagged with :data:`CRON_TAG` so that ``install`` again
replaces it (idempotent) and ``remove`` finds it; other lines are never touched. The line
runs ``scripts/cron_backtest.sh`` Monday to Friday; the script passes ``--skip-closed``
(exchange holidays exit 0 doing nothing), ``--log-file`` and the run lock, so overlapping
or failed runs are visible in the log and never corrupt state.

Cron uses the machine's time zone (UTC on a stock EC2 image): the New York close is 16:00
America/New_York, i.e. 20:00 UTC in summer (EDT) and 21:00 UTC in winter (EST), hence the
default 21:30, after the close all year round. The job decides "today" in New York time.

The crontab is read with ``crontab -l`` and written with ``crontab -``; ``--crontab-file``
(or ``$TRADING_AGENTS_CRONTAB_FILE``) edits a plain file instead, for tests and for
``/etc/cron.d``-style deployment.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from trading_agents.cli.common import JsonOption, console, emit_json
from trading_agents.config.settings import CONFIG_ENV, HOME_ENV, default_home, project_root
from trading_agents.errors import ResourceError, UserInputError
from trading_agents.fsutil import atomic_write_text

CRON_TAG = "# trading-agents:backtest"
CRONTAB_ENV = "TRADING_AGENTS_CRONTAB_FILE"
DEFAULT_TIME = "21:30"

app = typer.Typer(
    no_args_is_help=True,
    help="Schedule the daily backtest with cron (install, remove, show).",
)

CrontabFileOption = Annotated[
    Path | None,
    typer.Option(
        "--crontab-file",
        envvar=CRONTAB_ENV,
        help="Edit this file instead of the user's crontab (crontab -l / crontab -).",
    ),
]


@app.command("install")
def install(
    at: Annotated[
        str, typer.Option("--time", help="HH:MM in the machine's time zone (cron's), Monday to Friday.")
    ] = DEFAULT_TIME,
    args: Annotated[
        str,
        typer.Option("--args", help='Extra `trading-agents backtest` flags, e.g. "--strategy sma-cross".'),
    ] = "",
    crontab_file: CrontabFileOption = None,
    json_out: JsonOption = False,
) -> None:
    """Add (or replace) the tagged crontab line that runs the daily backtest.

    Running it twice leaves one line; other crontab lines are kept.
    The job skips exchange holidays and never overlaps a running backtest.
    It logs to <TRADING_AGENTS_HOME>/logs/backtest.log (cron's own output: logs/cron.out);
    the line carries TRADING_AGENTS_HOME and creates logs/ before it runs.

    Example: trading-agents schedule install --time 21:30 --args "-s agents --blind"
    """
    line = cron_line(at, args)
    logs = default_home() / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResourceError(
            f"cannot create the log folder {logs}: {exc.strerror or exc};"
            " set TRADING_AGENTS_HOME to a writable folder"
        ) from None
    current = read_crontab(crontab_file).splitlines()
    wanted = [*(ln for ln in current if not is_tagged(ln)), line]
    changed = wanted != current
    if changed:
        write_crontab("\n".join(wanted) + "\n", crontab_file)
    status = "installed" if changed else "unchanged"
    if json_out:
        emit_json({"status": status, "line": line, "crontab": str(crontab_file or "crontab")})
    else:
        console.print(f"{status}: {line}", highlight=False, soft_wrap=True)


@app.command("remove")
def remove(crontab_file: CrontabFileOption = None, json_out: JsonOption = False) -> None:
    """Remove the tagged crontab line (other lines stay); nothing to remove is not an error.

    Example: trading-agents schedule remove
    """
    current = read_crontab(crontab_file)
    lines = current.splitlines()
    kept = [ln for ln in lines if not is_tagged(ln)]
    removed = len(lines) - len(kept)
    if removed:
        write_crontab("\n".join(kept) + "\n" if kept else "", crontab_file)
    if json_out:
        emit_json({"status": "removed" if removed else "not installed", "removed": removed})
    else:
        console.print("removed" if removed else "not installed; nothing to remove")


@app.command("show")
def show(crontab_file: CrontabFileOption = None, json_out: JsonOption = False) -> None:
    """Print the installed schedule line, if any.

    Example: trading-agents schedule show --json
    """
    lines = [ln for ln in read_crontab(crontab_file).splitlines() if is_tagged(ln)]
    if json_out:
        emit_json({"installed": bool(lines), "lines": lines})
    elif lines:
        for ln in lines:
            console.print(ln, highlight=False, soft_wrap=True)
    else:
        console.print("not installed; run `trading-agents schedule install`")


def is_tagged(line: str) -> bool:
    """True for the line ``install`` wrote."""
    return line.rstrip().endswith(CRON_TAG)


def parse_time(at: str) -> tuple[int, int]:
    """``"21:30"`` -> ``(21, 30)``; anything else is a :class:`UserInputError`."""
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", at or "")
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise UserInputError(f"--time {at!r} is not a time; use HH:MM, 24-hour, e.g. 21:30")
    return int(match[1]), int(match[2])


def cron_line(at: str = DEFAULT_TIME, args: str = "") -> str:
    """The tagged crontab line: weekdays at ``at``, running the cron script with ``args``."""
    hour, minute = parse_time(at)
    try:
        extra = shlex.split(args)
    except ValueError as exc:
        raise UserInputError(f"--args cannot be parsed ({exc}); quote it like a shell command line") from None
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in (HOME_ENV, CONFIG_ENV) if os.environ.get(k)]
    script = project_root() / "scripts" / "cron_backtest.sh"
    if script.is_file():
        command = [shlex.quote(str(script)), *map(shlex.quote, extra)]
    else:
        exe = Path(sys.executable).with_name("trading-agents")
        log_file = default_home() / "logs" / "backtest.log"
        command = [
            shlex.quote(str(exe)),
            "backtest",
            "--skip-closed",
            "--log-file",
            shlex.quote(str(log_file)),
            *map(shlex.quote, extra),
        ]
    logs = default_home() / "logs"
    out = logs / "cron.out"
    # The shell opens the redirection before the script runs, so the line makes the folder first:
    # a home created (or wiped) after install still gets its log instead of a job that never starts.
    text = " ".join(
        ["mkdir", "-p", shlex.quote(str(logs)), "&&", *env, *command, ">>", shlex.quote(str(out)), "2>&1"]
    )
    # cron turns an unescaped % into a newline.
    text = text.replace("%", r"\%")
    return f"{minute} {hour} * * 1-5 {text} {CRON_TAG}"


def read_crontab(crontab_file: Path | None) -> str:
    """The current crontab text (empty when there is none)."""
    if crontab_file is not None:
        path = Path(crontab_file).expanduser()
        if path.is_dir():
            raise UserInputError(f"--crontab-file {path} is a directory; pass a file")
        try:
            return path.read_text(encoding="utf-8") if path.exists() else ""
        except OSError as exc:
            raise ResourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    proc = subprocess.run([_crontab_bin(), "-l"], capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return proc.stdout
    if "no crontab" in proc.stderr.lower():
        return ""
    raise ResourceError(f"`crontab -l` failed: {proc.stderr.strip() or proc.returncode}")


def write_crontab(text: str, crontab_file: Path | None) -> None:
    """Replace the crontab (atomically for a file, through ``crontab -`` otherwise)."""
    if crontab_file is not None:
        atomic_write_text(Path(crontab_file).expanduser(), text)
        return
    proc = subprocess.run([_crontab_bin(), "-"], input=text, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ResourceError(f"`crontab -` failed: {proc.stderr.strip() or proc.returncode}")


def _crontab_bin() -> str:
    found = shutil.which("crontab")
    if not found:
        raise UserInputError(
            "the crontab command is not installed; install cron (apt install cron) or use "
            "configs/systemd/trading-agents-backtest.timer, or pass --crontab-file"
        )
    return found
