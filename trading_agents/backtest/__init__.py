"""Backtests over the core engine: the runner behind ``trading-agents backtest``, rule-based
baselines, metrics, the results folder and its HTML report."""
