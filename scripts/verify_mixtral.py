#!/usr/bin/env python3
"""Check the Mixtral file and the configuration: `trading-agents models verify mixtral [--smoke] [--json]`.

Reports the GGUF checks, the llama.cpp backend, the GPUs it sees, how many layers
llm.n_gpu_layers offloads, and whether RAM and VRAM hold what each side keeps. Exits 2 on a failed check.

Example: python scripts/verify_mixtral.py --smoke
"""

from __future__ import annotations

import sys

from trading_agents.cli.app import main

if __name__ == "__main__":
    args = sys.argv[1:]
    target = [] if args and not args[0].startswith("-") else ["mixtral-8x7b-instruct"]
    main(["models", "verify", *target, *args])
