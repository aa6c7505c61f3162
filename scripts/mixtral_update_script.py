#!/usr/bin/env python3
"""Make Mixtral the primary model in the config in use: `trading-agents models use mixtral`.

Extra arguments go to `models use` (--config FILE, --json). Download the file first with
`trading-agents models download mixtral`; GPU offload is llm.n_gpu_layers in the same file.

Example: python scripts/mixtral_update_script.py --config configs/default.yaml
"""

from __future__ import annotations

import sys

from trading_agents.cli.app import main

if __name__ == "__main__":
    main(["models", "use", "mixtral-8x7b-instruct", *sys.argv[1:]])
