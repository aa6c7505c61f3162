"""``trading-agents dashboard``: a web app over the ledger, backtest results and grids.

:mod:`.sources` finds and opens what is shown (read-only), :mod:`.views` and
:mod:`.models_view` shape each page's data, :mod:`.charts` builds the plotly.js specs, and
:mod:`.app` serves the pages, the live stream and the key rules.
"""
