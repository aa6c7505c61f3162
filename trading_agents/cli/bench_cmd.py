"""Placeholder until the bench commands land."""

import typer

app = typer.Typer(no_args_is_help=True)
