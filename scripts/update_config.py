#!/usr/bin/env python3
"""Choose the primary (or with --fallback the fallback) model: same as `trading-agents models use`.

Example: python scripts/update_config.py tinyllama --fallback
"""

from __future__ import annotations

import sys

from trading_agents.cli.app import main

if __name__ == "__main__":
    main(["models", "use", *sys.argv[1:]])
