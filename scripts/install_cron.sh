#!/usr/bin/env bash
# Install the daily backtest into the current user's crontab (idempotent).
#
#   scripts/install_cron.sh [--time HH:MM] [--args "backtest flags"]
#   scripts/install_cron.sh --time 21:30 --args "--strategy agents --blind"
#
# A thin wrapper around `trading-agents schedule install`; remove with
# `trading-agents schedule remove`, inspect with `trading-agents schedule show`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${TRADING_AGENTS_BIN:-$ROOT/.venv/bin/trading-agents}"
if [ ! -x "$BIN" ]; then
    echo "error: $BIN not found; run \`make install\` in $ROOT first" >&2
    exit 2
fi
exec "$BIN" schedule install "$@"
