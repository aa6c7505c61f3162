"""trading-agents: a CPU-first, multi-agent LLM trading framework.

Local GGUF models run through llama.cpp; AutoGen agents (analyst, risk, executor)
turn point-in-time market snapshots into orders that hard risk limits vet and a
paper broker fills and records in an SQLite ledger.
"""

__version__ = "0.1.0"
