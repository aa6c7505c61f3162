"""The grid spec: a YAML file naming data, windows, strategies, costs, risk overrides and a seed.

Validated like the config: unknown keys and wrong types are errors naming their key path
(``strategies.1.fast: Input should be a valid integer``), through the config's own
:func:`~trading_agents.config.settings.describe_validation_error`. A commented example is
``configs/grids/example.yaml``::

    data: {tickers: [GOOG, SPX, IXIC], files: [my_prices.csv]}
    windows:
      rolling: {start: 2005-01-01, end: 2012-12-31, length: 1y, step: 6m}
    strategies:
      - {name: agents, model: embedded, label: smollm2}
      - {name: sma-cross, fast: 10, slow: 20}
      - {name: buy-hold}
    broker: {cash: 100000, commission: 0.001, slippage_bps: 5}
    risk: {max_position_pct: 0.2}
    seed: 7

Relative ``files`` are read from the spec's folder. Every grid compares against buy-and-hold
on the same cell; a spec without a ``buy-hold`` strategy gets one added.

A data item may be a universe traded as one book: ``data: {universe: [AAPL, GOOG, IBM, MSFT]}``
(its label joins the tickers with ``+``); an agents strategy then takes ``portfolio:
conviction`` or ``llm`` (``portfolio.mode``). A spec with a universe or a portfolio strategy
also runs ``equal-weight`` (buy-and-hold, 1/N) and ``equal-weight-monthly`` (1/N rebalanced
monthly), and a universe cell's excess return is measured against ``equal-weight``.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from trading_agents.backtest.runner import PORTFOLIO_BASELINES, STRATEGIES
from trading_agents.config.settings import (
    BrokerSettings,
    LLMSettings,
    RiskSettings,
    describe_validation_error,
    read_yaml_config,
)
from trading_agents.errors import ConfigError

EXAMPLE = "configs/grids/example.yaml"
PERIOD = re.compile(r"^(\d+)([dwmy])$")
# Union branch tags pydantic puts into an error's location; a key path never holds them.
#: Calendar days of the one window ``grid run --quick`` keeps (about ten trading days).
QUICK_DAYS = 14

_TAGS = {"model-name", "model-pair", "window-list", "window-rolling"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _partial(model: type[BaseModel], name: str) -> type[BaseModel]:
    """``model`` with every field optional (same types and bounds): a section of overrides."""
    fields: dict[str, Any] = {
        key: (info.annotation | None, FieldInfo.merge_field_infos(info, default=None))
        for key, info in model.model_fields.items()
    }
    return create_model(name, __config__=ConfigDict(extra="forbid", frozen=True), **fields)


RiskOverrides = _partial(RiskSettings, "RiskOverrides")
LLMOverrides = _partial(LLMSettings, "LLMOverrides")
BrokerSpec = _partial(BrokerSettings, "BrokerSpec")


class DataSpec(_Strict):
    """Data items: bundled or Yahoo tickers, and CSV files (one instrument each); ``news``
    maps a data item (a ticker, or a file's stem) to the news its agent cells read: a JSONL
    or CSV news file, or ``yahoo``."""

    tickers: list[str] = Field(default_factory=list)
    files: list[Path] = Field(default_factory=list)
    universe: list[str] = Field(default_factory=list, description="tickers traded as one book")
    news: dict[str, str] = Field(default_factory=dict)

    @field_validator("tickers", "universe")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [t.strip().upper() for t in value]

    @field_validator("universe")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(value) == 1 or len(set(value)) != len(value):
            raise ValueError("a universe names two or more distinct tickers, e.g. [AAPL, GOOG, IBM, MSFT]")
        return value

    @property
    def universe_label(self) -> str | None:
        """The universe's data item label (``AAPL+GOOG+IBM+MSFT``), ``None`` without one."""
        return "+".join(self.universe) if self.universe else None

    @field_validator("news")
    @classmethod
    def _known_items(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        items = {*info.data.get("tickers", []), *(Path(f).stem for f in info.data.get("files", []))}
        unknown = sorted(set(value) - items)
        if unknown:
            raise ValueError(
                f"news for {', '.join(unknown)}, which is no data item; use a ticker or a file's stem"
                f" ({', '.join(sorted(items))})"
            )
        return value

    @model_validator(mode="after")
    def _some(self) -> DataSpec:
        if not self.tickers and not self.files and not self.universe:
            raise ValueError("give tickers, files, a universe or several of them")
        return self


class WindowSpec(_Strict):
    start: dt.date
    end: dt.date

    @model_validator(mode="after")
    def _ordered(self) -> WindowSpec:
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


class RollingSpec(_Strict):
    """Windows of ``length`` starting every ``step`` from ``start``, each ending by ``end``."""

    start: dt.date
    end: dt.date
    length: Annotated[str, Field(pattern=PERIOD.pattern, description="e.g. 1y, 6m, 2w, 30d")]
    step: Annotated[str, Field(pattern=PERIOD.pattern)]

    def expand(self) -> list[WindowSpec]:
        out: list[WindowSpec] = []
        first = self.start
        while True:
            last = shift(first, self.length) - dt.timedelta(days=1)
            if last > self.end:
                break
            out.append(WindowSpec(start=first, end=last))
            first = shift(first, self.step)
        return out


class RollingWindows(_Strict):
    rolling: RollingSpec


class ModelPair(_Strict):
    """A primary with a fallback, routed by the model selector."""

    primary: str
    fallback: str | None = None


class StrategySpec(_Strict):
    name: Literal[STRATEGIES]  # type: ignore[valid-type]
    label: str | None = Field(None, min_length=1, max_length=60, pattern=r"^[A-Za-z0-9][\w.+-]*$")
    model: (
        Annotated[
            Annotated[str, Tag("model-name")] | Annotated[ModelPair, Tag("model-pair")],
            Discriminator(lambda v: "model-pair" if isinstance(v, dict | ModelPair) else "model-name"),
        ]
        | None
    ) = Field(None, description="agents: registry alias, GGUF path, or {primary, fallback}")
    fast: int | None = Field(None, ge=1)
    slow: int | None = Field(None, ge=2)
    blind: bool = False
    portfolio: Literal["off", "conviction", "llm"] | None = Field(
        None, description="agents: portfolio.mode (default: the config's)"
    )

    @model_validator(mode="after")
    def _fits_name(self) -> StrategySpec:
        if self.name != "agents" and (self.model is not None or self.blind or self.portfolio is not None):
            raise ValueError(f"model, blind and portfolio are for the agents strategy, not {self.name}")
        if self.name != "sma-cross" and (self.fast is not None or self.slow is not None):
            raise ValueError(f"fast and slow are for sma-cross, not {self.name}")
        if (self.fast or 10) >= (self.slow or 20):
            raise ValueError(f"fast ({self.fast or 10}) must be below slow ({self.slow or 20})")
        return self

    @property
    def primary(self) -> str | None:
        return self.model.primary if isinstance(self.model, ModelPair) else self.model

    @property
    def fallback(self) -> str | None:
        return self.model.fallback if isinstance(self.model, ModelPair) else None

    def default_label(self) -> str:
        if self.label:
            return self.label
        if self.name == "agents":
            tail = (self.primary or "config").rsplit("/", 1)[-1].removesuffix(".gguf")
            mode = f"-{self.portfolio}" if self.portfolio not in (None, "off") else ""
            return f"agents-{tail}" + (f"+{self.fallback}" if self.fallback else "") + mode
        if self.name == "sma-cross" and (self.fast or self.slow):
            return f"sma-cross-{self.fast or 10}-{self.slow or 20}"
        return self.name


Windows = Annotated[
    Annotated[list[WindowSpec], Tag("window-list")] | Annotated[RollingWindows, Tag("window-rolling")],
    Discriminator(lambda v: "window-rolling" if isinstance(v, dict | RollingWindows) else "window-list"),
]


class GridSpec(_Strict):
    data: DataSpec
    windows: Windows
    strategies: list[StrategySpec] = Field(min_length=1)
    broker: BrokerSpec = Field(default_factory=BrokerSpec)  # type: ignore[valid-type]
    risk: RiskOverrides = Field(default_factory=RiskOverrides)  # type: ignore[valid-type]
    llm: LLMOverrides = Field(default_factory=LLMOverrides)  # type: ignore[valid-type]
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _labels(self) -> GridSpec:
        seen: set[str] = set()
        for strategy in self.strategies:
            label = strategy.default_label()
            if label in seen:
                raise ValueError(f"two strategies are labelled {label!r}; give each its own label")
            seen.add(label)
        if not self.window_list():
            raise ValueError("the windows are empty; a rolling window longer than start..end fits none")
        return self

    def window_list(self) -> list[WindowSpec]:
        return self.windows.rolling.expand() if isinstance(self.windows, RollingWindows) else self.windows

    def quick(self, days: int = QUICK_DAYS) -> GridSpec:
        """The same grid on one short window: the last ``days`` calendar days of the last window
        (``grid run --quick``: every data item and strategy, minutes instead of hours)."""
        last = self.window_list()[-1]
        start = max(last.start, last.end - dt.timedelta(days=days - 1))
        return self.model_copy(update={"windows": [WindowSpec(start=start, end=last.end)]})

    def with_reference(self) -> list[StrategySpec]:
        """The strategies, with buy-and-hold added when the spec has none (the yardstick), and
        for a universe or a portfolio strategy the equal-weight baselines."""
        out = list(self.strategies)
        names = {s.name for s in out}
        if "buy-hold" not in names:
            out.append(StrategySpec(name="buy-hold"))
        if self.is_portfolio():
            out += [StrategySpec(name=n) for n in PORTFOLIO_BASELINES if n not in names]
        return out

    def is_portfolio(self) -> bool:
        """A universe data item or an agents strategy with a portfolio mode."""
        return bool(self.data.universe) or any(s.portfolio not in (None, "off") for s in self.strategies)

    def universe_reference_label(self) -> str | None:
        """The label universe cells are measured against (equal-weight buy-and-hold)."""
        if not self.is_portfolio():
            return None
        return next(s.default_label() for s in self.with_reference() if s.name == "equal-weight")

    def reference_label(self) -> str:
        return next(s.default_label() for s in self.with_reference() if s.name == "buy-hold")

    def overrides(self) -> dict[str, Any]:
        """The spec's broker, risk and llm keys as ``load_settings`` overrides (given keys only)."""
        out: dict[str, Any] = {}
        for section in ("broker", "risk", "llm"):
            for key, value in getattr(self, section).model_dump(exclude_unset=True).items():
                out[f"{section}.{key}"] = value
        return out

    def canonical(self) -> dict[str, Any]:
        """JSON-ready form used for hashing and diffs (unset override keys left out)."""
        data = self.model_dump(mode="json", exclude_unset=True)
        data["seed"] = self.seed
        return data


def shift(day: dt.date, period: str) -> dt.date:
    """``day`` moved forward by ``period`` (``3d``, ``2w``, ``6m``, ``1y``; month ends clamp)."""
    match = PERIOD.match(period)
    if match is None:
        raise ValueError(f"period {period!r} is not like 1y, 6m, 2w or 30d")
    n, unit = int(match.group(1)), match.group(2)
    if unit == "d":
        return day + dt.timedelta(days=n)
    if unit == "w":
        return day + dt.timedelta(weeks=n)
    months = n * (12 if unit == "y" else 1)
    y, m = divmod(day.month - 1 + months, 12)
    year, month = day.year + y, m + 1
    import calendar

    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def parse_spec(data: Any, source: str, base_dir: Path | None = None, *, check_files: bool = True) -> GridSpec:
    """Validate ``data`` (parsed YAML); :class:`ConfigError` names the key path and ``source``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a grid spec is a mapping (data:, windows:, strategies:, ...)")
    try:
        spec = GridSpec.model_validate(data)
    except ValidationError as exc:
        loc, msg, more = describe_validation_error(exc, GridSpec)
        key = ".".join(p for p in loc if p not in _TAGS) or "spec"
        msg = msg.removeprefix("Value error, ")
        raise ConfigError(f"{source}: {key}: {msg}{more}; see {EXAMPLE} for valid keys") from None
    if base_dir is not None:
        files = [p if p.is_absolute() else (base_dir / p) for p in spec.data.files]
        news = {
            item: where
            if where == "yahoo" or Path(where).is_absolute()
            else str((base_dir / where).resolve())
            for item, where in spec.data.news.items()
        }
        spec = spec.model_copy(
            update={
                "data": spec.data.model_copy(update={"files": [f.resolve() for f in files], "news": news})
            }
        )
    for path in spec.data.files if check_files else ():
        if not path.is_file():
            raise ConfigError(f"{source}: data.files: {path} does not exist; give a CSV of daily bars")
    for item, where in spec.data.news.items() if check_files else ():
        if where != "yahoo" and not Path(where).is_file():
            raise ConfigError(
                f"{source}: data.news.{item}: {where} does not exist; give a JSONL/CSV news file or 'yahoo'"
            )
    return spec


def load_spec(path: Path) -> GridSpec:
    """Read and validate the spec file at ``path`` (one-line :class:`ConfigError` otherwise)."""
    path = Path(path)
    try:
        data = read_yaml_config(path)
    except ConfigError as exc:
        raise ConfigError(
            exc.message.replace("--config", "the spec path").replace("sections", "keys")
        ) from None
    return parse_spec(data, str(path), base_dir=path.resolve().parent)


def spec_from_text(text: str, source: str = "spec", base_dir: Path | None = None) -> GridSpec:
    """Validate a spec given as YAML text (tests and the benchmark build specs this way)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML ({exc}); fix the YAML syntax") from None
    return parse_spec(data, source, base_dir)
