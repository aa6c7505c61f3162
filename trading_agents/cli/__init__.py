"""The ``trading-agents`` command line (typer): nouns with verbs."""
