#!/usr/bin/env python3
"""Download a registry model: same as `trading-agents models download NAME`.

Example: python scripts/download_model.py tinyllama
"""

from __future__ import annotations

import sys

from trading_agents.cli.app import main

if __name__ == "__main__":
    main(["models", "download", *sys.argv[1:]])
