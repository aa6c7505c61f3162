"""LLM integration layer: local GGUF models (llama.cpp), an AutoGen model client, a model selector.

Nothing here knows about trading; the trading package builds on it.
"""
