#!/usr/bin/env python3
"""Verify a model file: same as `trading-agents models verify [NAME|PATH] [--smoke] [--json]`.

Example: python scripts/verify_model.py mixtral --smoke
"""

from __future__ import annotations

import sys

from trading_agents.cli.app import main

if __name__ == "__main__":
    main(["models", "verify", *sys.argv[1:]])
