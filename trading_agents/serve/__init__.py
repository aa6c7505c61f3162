"""``trading-agents serve``: the registry's models and the selector behind an OpenAI-compatible API.

One process loads each model once and shares it with every client; requests queue on a model in
arrival order. :mod:`.backend` is the only module here that talks to the LLM layer.
"""
