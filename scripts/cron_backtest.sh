#!/usr/bin/env bash
# The scheduled daily backtest (cron or the systemd timer runs this).
#
#   scripts/cron_backtest.sh [trading-agents backtest flags...]
#
# - exits 0 doing nothing on weekends and exchange holidays (--skip-closed, New York date);
# - never overlaps a running backtest: the second run exits 6 ("lock busy") and says so in the log;
# - appends to $TRADING_AGENTS_HOME/logs/backtest.log (default ~/.trading-agents/logs/);
# - writes results under the project's results/ folder unless --out is given.
# Exit codes are those of `trading-agents` (0 ok, 2 input, 3 model, 4 data, 5 risk, 6 busy, 7 resource).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TRADING_AGENTS_HOME:-$HOME/.trading-agents}"
LOG_FILE="${TRADING_AGENTS_LOG_FILE:-$STATE/logs/backtest.log}"
LOCK_FILE="${TRADING_AGENTS_LOCK_FILE:-$STATE/backtest.lock}"
BIN="${TRADING_AGENTS_BIN:-$ROOT/.venv/bin/trading-agents}"

if [ ! -x "$BIN" ]; then
    echo "error: $BIN not found; run \`make install\` in $ROOT first" >&2
    exit 2
fi
mkdir -p "$(dirname "$LOG_FILE")"
cd "$ROOT"
export TRADING_AGENTS_HOME="$STATE"
exec "$BIN" backtest --skip-closed --log-file "$LOG_FILE" --lock-file "$LOCK_FILE" "$@"
