"""``bench quality``: malformed text, the desk rule, window choice, and one real run on the embedded model."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from trading_agents.agents.replies import malformed_reasons, malformed_text_share
from trading_agents.agents.schemas import (
    RATIONALE_PATTERN,
    SIGNAL_PATTERN,
    AnalystReport,
    RiskVerdict,
)
from trading_agents.bench import quality
from trading_agents.bench.quality import (
    Decision,
    choose_windows,
    rule_action,
    rule_agreement,
    trend_following_gap,
)

# ----------------------------------------------------------------------------- malformed text

GOOD = [
    {"key_signals": ["trend up", "RSI 64 neutral"], "rationale": "Trend and momentum up.", "action": "BUY"},
    {"rationale": "ATR 14% of close is within 1.6% of the 20-day average; it's calm."},
    {"reasons": ["EMA12/26 spread narrowing", "drawdown -5.8%"]},
    {"rationale": "Close 724 above SMA50 687: trend up."},
    {"side": "buy", "quantity": 12, "order_type": "market"},  # enums are not free text
]
BAD = [
    ({"rationale": "RSI 70 neutral butEMA12/26s'd"}, 'runs words together: "butEMA12/26s\'d"'),
    ({"reasons": ["ATR 14% of close iswithin1.6"]}, "runs words together: 'iswithin1.6'"),
    ({"reasons": ["action:"]}, "ends in ':'"),
    ({"key_signals": ["momentum up-"]}, "ends in '-'"),
    ({"rationale": "Price is overextendedxxxx"}, "has a cut word"),
    ({"rationale": "close above SMA 20/50 and EMA12/26.uggests"}, "runs words together: 'EMA12/26.uggests'"),
]


@pytest.mark.parametrize("output", GOOD)
def test_good_replies_are_not_malformed(output: dict) -> None:
    assert malformed_reasons(output) == []


@pytest.mark.parametrize(("output", "why"), BAD)
def test_bad_replies_are_malformed(output: dict, why: str) -> None:
    found = malformed_reasons(output)
    assert found and why in found[0], found


def test_malformed_text_share_counts_replies() -> None:
    outputs = [*GOOD, *(o for o, _ in BAD), None]
    assert malformed_text_share(outputs) == round(len(BAD) / (len(GOOD) + len(BAD)), 4)
    assert malformed_text_share([None]) is None


def test_the_word_patterns_refuse_glued_words_and_bare_labels() -> None:
    """What the grammar lets a model write: single spaces, numbers with units, no glue."""
    for text in (o["rationale"] for o in GOOD if "rationale" in o):
        assert re.fullmatch(RATIONALE_PATTERN, text), text
    for text in ("trend up", "RSI 72 stretched", "close 1.6% above SMA20", "near 20-day high"):
        assert re.fullmatch(SIGNAL_PATTERN, text), text
    bad = (
        "butEMA12",
        "iswithin1.6",
        "EMA12/26.uggests",
        "action:",
        "trend  up",
        " trend",
        ".0.0.0.0",
        "up. The",
    )
    for text in bad:
        assert not re.fullmatch(SIGNAL_PATTERN, text), text
    ok = {"action": "HOLD", "conviction": 0.5, "horizon_days": 5, "key_signals": ["RSI 64"]}
    with pytest.raises(ValidationError):
        AnalystReport(**ok, rationale="Trend up butEMA12 down")
    with pytest.raises(ValidationError):
        RiskVerdict(decision="approve", max_position_pct=0.1, stop_loss_pct=0.05, reasons=["action:"])


def test_the_longest_text_a_pattern_allows_fits_max_length() -> None:
    """The grammar follows the pattern, not max_length: its longest match must validate."""
    from trading_agents.agents import schemas

    rest = "c" * schemas.WORD_LOWER + "-" + "d" * schemas.WORD_TAIL + ")" * schemas.WORD_CLOSE
    first = "A" + "B" * (schemas.WORD_HEAD - 1) + rest
    later = "B" * schemas.WORD_HEAD + rest
    assert len(first) == len(later) == schemas.WORD_CHARS

    def longest(words: int) -> str:
        return first + "".join(": " + later for _ in range(words - 1)) + "."

    for words, pattern in (
        (schemas.SIGNAL_WORDS, SIGNAL_PATTERN),
        (schemas.RATIONALE_WORDS, RATIONALE_PATTERN),
    ):
        assert re.fullmatch(pattern, longest(words))
        assert not re.fullmatch(pattern, longest(words) + "e")
        assert not re.fullmatch(pattern, longest(words)[: -len(later) - 3] + ". " + later)  # two sentences
        assert len(longest(words)) == schemas.words_max_length(words)
    AnalystReport(
        key_signals=[longest(schemas.SIGNAL_WORDS)],
        rationale=longest(schemas.RATIONALE_WORDS),
        action="HOLD",
        conviction=0.5,
        horizon_days=5,
    )
    RiskVerdict(
        decision="approve", max_position_pct=0.1, stop_loss_pct=0.05, reasons=[longest(schemas.REASON_WORDS)]
    )


# ----------------------------------------------------------------------------- the desk rule


def _decision(action: str | None, trend: str, momentum: str, held: int = 0) -> Decision:
    task = f"X after the close\nSignals: trend {trend}, momentum {momentum}, RSI 50 neutral.\n"
    task += f"ACCOUNT equity 100000, cash 100000; X shares held {held} (0.0% of equity)"
    steps = ({"role": "analyst", "output": {"action": action}},) if action else ()
    return Decision(date="2012-01-03", ticker="X", task=task, steps=steps, wall_s=1.0, error=None)


@pytest.mark.parametrize(
    ("trend", "momentum", "held", "expected"),
    [
        ("up", "up", 0, "BUY"),
        ("down", "down", 10, "SELL"),
        ("down", "down", 0, "HOLD"),  # a SELL with nothing held does nothing
        ("up", "down", 10, "HOLD"),
        ("mixed", "up", 0, "HOLD"),
        ("mixed", "down", 10, "HOLD"),
    ],
)
def test_rule_action(trend: str, momentum: str, held: int, expected: str) -> None:
    assert rule_action(trend, momentum, held) == expected


def test_rule_agreement_counts_a_sell_with_no_position_as_hold() -> None:
    decisions = [
        _decision("BUY", "up", "up"),  # agrees
        _decision("SELL", "down", "down", held=0),  # SELL = HOLD = rule's HOLD: agrees
        _decision("SELL", "up", "down", held=0),  # also HOLD: agrees
        _decision("BUY", "up", "down", held=5),  # rule HOLD: disagrees
        _decision(None, "up", "up"),  # no analyst reply: not counted
    ]
    assert rule_agreement(decisions) == 0.75
    assert rule_agreement([]) is None


def test_a_hold_that_stops_at_the_analyst_is_a_valid_decision() -> None:
    """Risk and the executor run only when called for: the analyst's reply alone is a whole decision."""
    hold = _decision("HOLD", "mixed", "up")
    trade = replace(
        _decision("BUY", "up", "up"),
        steps=(
            {"role": "analyst", "output": {"action": "BUY"}},
            {"role": "risk", "output": {"decision": "approve"}},
            {"role": "executor", "output": {"side": "buy"}},
        ),
    )
    failed_risk = replace(trade, steps=(trade.steps[0], {"role": "risk", "output": None}))
    errored = replace(hold, error="model failed")
    assert hold.valid and trade.valid
    assert not failed_risk.valid and not errored.valid and not _decision(None, "up", "up").valid


def test_trend_following_gap() -> None:
    decisions = [
        _decision("BUY", "up", "up"),
        _decision("HOLD", "up", "down"),
        _decision("BUY", "down", "up"),
        _decision("SELL", "down", "down"),
        _decision("SELL", "down", "down"),
        _decision("SELL", "down", "down"),
        _decision("BUY", "mixed", "up"),  # neither up nor down: not counted
    ]
    assert trend_following_gap(decisions) == round(1 / 2 - 1 / 4, 4)
    assert trend_following_gap(decisions[:2]) is None  # no trend-down day


# ----------------------------------------------------------------------------- windows


def test_windows_are_the_up_down_and_mixed_ones_and_fixed() -> None:
    days = pd.bdate_range("2012-01-02", periods=160)
    steps = np.zeros(160)
    steps[60:80] = 0.01  # up
    steps[100:120] = -0.01  # down
    steps[140:160] = 0.001 * np.array([1, -1] * 10)  # flat
    closes = pd.Series(100 * np.exp(np.cumsum(steps)), index=days)
    windows = choose_windows("X", closes, 20, history=60, lookback=200)
    kinds = {w.kind: w for w in windows}
    assert list(kinds) == ["up", "down", "mixed"]
    assert kinds["up"].return_pct > 15 and kinds["down"].return_pct < -15
    assert abs(kinds["mixed"].return_pct) < 1
    assert len({(w.start, w.end) for w in windows}) == 3
    for w in windows:  # 20 bars, starting after 60 bars of history
        start, end = days.get_loc(pd.Timestamp(w.start)), days.get_loc(pd.Timestamp(w.end))
        assert end - start == 19 and start >= 60
    assert choose_windows("X", closes, 20, history=60, lookback=200) == windows
    with pytest.raises(ValueError, match="need 3"):
        choose_windows("X", closes.iloc[:100], 20, history=60)


def test_bundled_instruments_each_get_three_windows() -> None:
    windows = quality.pick_windows(quality.INSTRUMENTS, quality.BARS)
    assert len(windows) == 3 * len(quality.INSTRUMENTS)
    assert {w.kind for w in windows} == {"up", "down", "mixed"}


# ----------------------------------------------------------------------------- a real run


def test_bench_quality_on_the_embedded_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real path: the grid on Ray, llama.cpp with the embedded model, decisions read back."""
    monkeypatch.setattr(quality, "QUICK_BARS", 3)  # 2 decisions a window
    result = quality.run(tmp_path, quick=True, models=["embedded"])
    json.dumps(result)  # JSON-safe
    assert [w["kind"] for w in result["windows"]] == ["up", "down", "mixed"]
    figures = result["models"]["embedded"]
    assert figures["decisions"] == 6  # a backtest does not decide on its last bar
    assert sum(figures["actions"].values()) == 6
    assert sum(sum(v.values()) for v in figures["actions_by_window"].values()) == 6
    for key in (
        "rule_agreement",
        "trend_following_gap",
        "hit_rate",
        "invalid_decisions",
        "malformed_text_share",
        "degenerate_reply_share",
        "evaluated_prompt_tokens_per_decision",
        "decision_median_s",
        "leaderboard",
    ):
        assert key in figures, key
    assert figures["invalid_decisions"] == 0 and figures["degenerate_reply_share"] == 0
    assert 0 <= figures["rule_agreement"] <= 1
    assert figures["evaluated_prompt_tokens_per_decision"] < figures["evaluated_prompt_tokens_first_decision"]
    labels = {row["label"] for row in figures["leaderboard"]}
    assert labels == {"agents-embedded", "sma-cross", "macd", "rsi", "buy-hold"}
    agents = next(r for r in figures["leaderboard"] if r["label"] == "agents-embedded")
    assert agents["cells"] == 3 and agents["done"] == 3 and "excess_ci95_pct" in agents
    assert figures["costs_and_caps"]["risk_caps"]
