"""Local GGUF models: the registry, header inspection, download, verification and selection.

Others import from the submodules directly, for example
``from trading_agents.model_files.registry import resolve_llm_pair``.
"""
