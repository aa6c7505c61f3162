"""Placeholder until the run command lands."""


def run() -> None:
    """Run a paper trading session."""
