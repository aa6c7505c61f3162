"""Evaluation grids: data items x windows x strategies as independent backtests on Ray.

``spec`` (the YAML model), ``cells`` (expansion and per-cell seeds), ``store``
(``DIR/cells.sqlite``), ``execute`` (Ray tasks and actors), ``run`` (``grid run`` end to
end), ``leaderboard`` and ``report``. Cells run through
:func:`trading_agents.backtest.runner.run_backtest`.
"""
