"""Settings for every subsystem, validated by pydantic, layered like freqtrade's.

Precedence, lowest first:

1. defaults in this file;
2. a YAML file: ``--config FILE``, else ``$TRADING_AGENTS_CONFIG``, else ``configs/default.yaml``
   in the project checkout when it exists;
3. environment variables ``TRADING_AGENTS_<SECTION>__<KEY>`` (for example
   ``TRADING_AGENTS_LLM__N_CTX=4096``);
4. CLI flags, passed to :func:`load_settings` as ``overrides``.

Unknown keys and wrong types are errors that name the key and where it came from.
Secrets (the Hugging Face token, the server's API key) are ``SecretStr``: printed as ``**********``.
"""

from __future__ import annotations

import difflib
import os
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from trading_agents.errors import ConfigError
from utils.llm_integration.selector_limits import SelectorLimits
from utils.llm_integration.spec import LLMSpec, SamplingParams

ENV_PREFIX = "TRADING_AGENTS_"
CONFIG_ENV = "TRADING_AGENTS_CONFIG"
HOME_ENV = "TRADING_AGENTS_HOME"


@cache
def project_root() -> Path:
    """The checkout that holds ``configs/`` and ``models/`` (the package is installed editable)."""
    return Path(__file__).resolve().parents[2]


def default_home() -> Path:
    """State directory (ledger, caches, logs, locks): ``$TRADING_AGENTS_HOME`` or ``~/.trading-agents``."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".trading-agents"


class Section(BaseModel):
    """A settings section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsSettings(Section):
    home: Path = Field(default_factory=default_home, description="State: ledger, caches, logs, locks.")
    models_dir: Path = Field(
        default_factory=lambda: project_root() / "models" / "llm_models",
        description="Where downloaded GGUF files live; model paths may not escape it.",
    )
    registry: Path = Field(
        default_factory=lambda: project_root() / "configs" / "models.yaml",
        description="The model registry (aliases, repos, files, context, chat format).",
    )


class EndpointSettings(Section):
    """An external OpenAI-compatible server the desk runs on (llama.cpp's llama-server, vLLM,
    Ollama, a hosted API); see docs/endpoints.md."""

    base_url: str = Field(description="The server's base URL, http://host:port or .../v1.")
    model: str = Field(min_length=1, description="The model name the server lists.")
    api_key: SecretStr | None = Field(None, description="Bearer key, if the server wants one.")
    structured: Literal["json_schema", "json_object", "ollama"] = Field(
        "json_schema",
        description="How a schema is asked for: response_format json_schema (llama-server, vLLM,"
        " OpenAI), json_object (schema in the prompt only), or Ollama's native format.",
    )
    revision: str = Field(
        "", max_length=200, description="Names the model build (part of the replay key)."
    )
    replicas: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="More servers with the same model (one per node): grid agent cells are spread"
        " over base_url and these.",
    )
    max_in_flight: int = Field(4, ge=1, le=1024, description="Requests open at once from this process.")
    timeout_s: float = Field(300.0, gt=0.0, le=86400.0, description="Longest wait for one reply.")

    @model_validator(mode="after")
    def _http_url(self) -> EndpointSettings:
        for url in (self.base_url, *self.replicas):
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"llm.endpoint URL {url!r} must start with http:// or https://")
        return self


_SAMPLING_KEYS = {"max_tokens", "temperature", "top_p", "top_k", "repeat_penalty", "seed"}


class LLMSettings(Section):
    primary: str = Field("mixtral-8x7b-instruct", description="Registry alias or GGUF path.")
    fallback: str | None = Field("tinyllama-1.1b-chat", description="Alias or path; null for none.")
    n_ctx: int | None = Field(None, ge=256, le=131072, description="Context; null: the registry's.")
    # defaults: the LLM layer's LLMSpec and SamplingParams (declared once there); bounds: ours
    n_threads: Annotated[int, Field(ge=1, le=512)] | Literal["auto"] | None = Field(
        LLMSpec.n_threads,
        description="auto: the fastest count measured once per model file and CPU; null: physical cores.",
    )
    n_batch: int = Field(LLMSpec.n_batch, ge=8, le=8192)
    use_mmap: bool = LLMSpec.use_mmap
    use_mlock: bool = LLMSpec.use_mlock
    seed: int = Field(LLMSpec.seed, ge=0)
    temperature: float = Field(SamplingParams.temperature, ge=0.0, le=2.0)
    top_p: float = Field(SamplingParams.top_p, gt=0.0, le=1.0)
    top_k: int = Field(SamplingParams.top_k, ge=0, le=100_000, description="0: the whole vocabulary.")
    repeat_penalty: float = Field(
        SamplingParams.repeat_penalty, ge=1.0, le=2.0, description="1: off; on the last 64 tokens."
    )
    max_tokens: int = Field(SamplingParams.max_tokens, ge=16, le=8192, description="Cap for one agent reply.")
    fixed_text: bool = Field(
        SamplingParams.fixed_text,
        description="Evaluate a reply's fixed JSON text (keys, punctuation) in batches, sample only values.",
    )
    ram_cache_mb: int = Field(
        LLMSpec.ram_cache_mb, ge=0, le=65536, description="KV state cache shared by agents; 0: off."
    )
    server_url: str | None = Field(
        None, description="A `trading-agents serve` base URL (http://host:8000); null: load models here."
    )
    server_api_key: SecretStr | None = Field(None, description="The server's API key, if it has one.")
    endpoint: EndpointSettings | None = Field(
        None, description="An external OpenAI-compatible server to run on; null: see server_url."
    )
    n_gpu_layers: int = Field(
        LLMSpec.n_gpu_layers, ge=-1, le=100_000, description="Layers offloaded to the GPU; -1: all."
    )
    main_gpu: int | None = Field(
        LLMSpec.main_gpu, ge=0, le=63, description="Whole offload on this GPU; null: split."
    )
    tensor_split: list[Annotated[float, Field(ge=0.0)]] | None = Field(
        None, min_length=1, max_length=16, description="Share of the offloaded layers per GPU."
    )

    def sampling_options(self) -> dict[str, Any]:
        """The sampling settings every desk client takes, as :class:`SamplingParams` fields
        (``fixed_text`` aside: only an in-process client has it)."""
        return self.model_dump(include=_SAMPLING_KEYS)

    @model_validator(mode="after")
    def _one_placement(self) -> LLMSettings:
        if self.main_gpu is not None and self.tensor_split:
            raise ValueError("set llm.main_gpu (one GPU) or llm.tensor_split (several), not both")
        if self.tensor_split and not any(self.tensor_split):
            raise ValueError("llm.tensor_split needs at least one share above 0")
        return self


class HuggingFaceSettings(Section):
    token: SecretStr | None = Field(None, description="Only for gated or private repos.")
    endpoint: str | None = Field(None, description="Hub mirror URL; HF_ENDPOINT also works.")


class RiskSettings(Section):
    max_position_pct: float = Field(0.20, gt=0.0, le=1.0, description="Per symbol, of equity.")
    # Per-order caps; null: off. The fraction scales with the account, the absolute one does not.
    max_order_notional: float | None = Field(None, gt=0.0, description="Per order, in cash.")
    max_order_notional_pct: float | None = Field(None, gt=0.0, le=4.0, description="Per order, of equity.")
    max_gross_exposure_pct: float = Field(1.0, gt=0.0, le=4.0)
    max_daily_loss_pct: float = Field(0.05, gt=0.0, le=1.0, description="Kill switch: HALTED.")
    max_drawdown_pct: float = Field(0.20, gt=0.0, le=1.0, description="Kill switch: HALTED.")
    max_data_age_days: int = Field(5, ge=0, description="Refuse to trade on older bars.")
    allow_short: bool = False
    max_adv_pct: float | None = Field(
        0.025,
        gt=0.0,
        le=1.0,
        description="Largest order, of the 20-day average daily dollar volume; null: off.",
    )


class BrokerSettings(Section):
    cash: float = Field(100_000.0, gt=0.0)
    commission: float = Field(0.001, ge=0.0, lt=0.1, description="Fraction of traded value.")
    slippage_bps: float = Field(5.0, ge=0.0, le=1000.0)


class _SelectorSwitch(Section):
    enabled: bool = True  # a base so that it comes before the limits in dumps and error lists


class SelectorSettings(SelectorLimits, _SelectorSwitch):
    fallback_roles: list[Literal["analyst", "risk", "executor"]] = Field(
        default_factory=lambda: ["analyst", "risk", "executor"]
    )


class ServeSettings(Section):
    """``trading-agents serve``: where it listens and what it accepts."""

    host: str = Field("127.0.0.1", description="Bind address; a non-loopback one needs api_key.")
    port: int = Field(8000, ge=1, le=65535)
    api_key: SecretStr | None = Field(None, description="Bearer key clients must send; null: none.")
    request_timeout_s: float = Field(600.0, gt=0.0, description="A request running longer is stopped.")
    max_body_kb: int = Field(1024, ge=1, le=65536, description="Larger request bodies get 413.")


class PortfolioSettings(Section):
    """How the book across a universe is split (see :mod:`trading_agents.core.portfolio`)."""

    mode: Literal["off", "conviction", "llm"] = Field(
        "off", description="off: each ticker on its own; conviction: deterministic; llm: a portfolio manager."
    )
    min_trade_pct: float = Field(0.01, ge=0.0, le=1.0, description="No trade below this share of equity.")
    max_tokens: int = Field(
        256, ge=2, le=8192, description="Sampled tokens of the portfolio manager's reply."
    )


class CostsSettings(Section):
    """What the desk's own LLM calls cost, counted in the results."""

    # AWS on-demand, c7i.4xlarge (16 vCPU, 32 GiB), Linux, us-east-1: $0.714/h (price list of 2024-06).
    compute_usd_per_hour: float = Field(
        0.714, ge=0.0, description="Dollars per hour of a decision's wall time (local models)."
    )
    usd_per_1k_prompt_tokens: float = Field(0.0, ge=0.0, description="External endpoints: prompt price.")
    usd_per_1k_completion_tokens: float = Field(0.0, ge=0.0, description="External endpoints: reply price.")


class SessionSettings(Section):
    tickers: list[str] = Field(default_factory=lambda: ["GOOG"])
    days: int = Field(5, ge=1, le=5000, description="Bars to trade when no dates are given.")
    mode: Literal["paper"] = "paper"


class DataSettings(Section):
    news: str | None = Field(
        None, description="News for the agents: a JSONL/CSV file, 'yahoo' (live sessions), or null for none."
    )


class NewsSettings(Section):
    max_items: int = Field(5, ge=0, le=50, description="Most recent items per ticker in a prompt.")
    max_chars: int = Field(240, ge=40, le=2000, description="Each item is cut to this many characters.")
    exchange: str = Field("XNYS", description="Whose close cuts the news (ISO MIC).")
    names: dict[str, list[str]] = Field(
        default_factory=dict, description="Per ticker, names that --blind masks in news text."
    )


class MemorySettings(Section):
    enabled: bool = Field(True, description="Show the analyst the desk's track record for the ticker.")
    max_items: int = Field(3, ge=0, le=50, description="Latest BUY/SELL calls in the track record.")
    horizon_days: int | None = Field(
        5, ge=1, le=60, description="Bars after which a call's outcome is realised; null: the analyst's."
    )


class Settings(BaseSettings):
    """All settings. Build with :func:`load_settings`, not directly."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    paths: PathsSettings = Field(default_factory=PathsSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    huggingface: HuggingFaceSettings = Field(default_factory=HuggingFaceSettings)
    risk: RiskSettings = Field(default_factory=RiskSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    selector: SelectorSettings = Field(default_factory=SelectorSettings)
    session: SessionSettings = Field(default_factory=SessionSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    news: NewsSettings = Field(default_factory=NewsSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    portfolio: PortfolioSettings = Field(default_factory=PortfolioSettings)
    costs: CostsSettings = Field(default_factory=CostsSettings)

    # Set by load_settings: the file the YAML layer came from (None when there was none).
    _source_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_layer = _YamlLayer(settings_cls, _PENDING_YAML.get("data", {}))
        return (init_settings, env_settings, yaml_layer)

    @property
    def source_file(self) -> Path | None:
        return self._source_file

    def public_dict(self) -> dict[str, Any]:
        """JSON-safe dump with secrets masked (for summaries, ledgers and reports)."""
        return self.model_dump(mode="json")


class _YamlLayer(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


# pydantic-settings builds sources inside __init__; this hands the parsed YAML over.
_PENDING_YAML: dict[str, dict[str, Any]] = {}


def resolve_config_path(config: Path | str | None) -> Path | None:
    """``--config``, else ``$TRADING_AGENTS_CONFIG``, else ``configs/default.yaml`` if present."""
    if config:
        return Path(config).expanduser()
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    default = project_root() / "configs" / "default.yaml"
    return default if default.is_file() else None


def read_yaml_config(path: Path) -> dict[str, Any]:
    """Parse a YAML config file into a mapping, with one-line errors naming the file."""
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; pass an existing file with --config")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; pass a YAML file with --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: {problem}; fix the YAML syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (llm:, risk:, ...)")
    for section, body in data.items():
        keys = [section, *(body if isinstance(body, dict) else ())]
        bad = next((k for k in keys if not isinstance(k, str)), None)
        if any(not isinstance(k, str) for k in keys):
            where = "" if bad == section else f"{section}."
            raise ConfigError(f"{path}: {where}{bad!r}: keys must be names like n_ctx, not numbers or null")
    return data


def load_settings(config: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build validated settings from all layers. Raises :class:`ConfigError` naming key and source."""
    path = resolve_config_path(config)
    data = read_yaml_config(path) if path else {}
    overrides = _nest({k: v for k, v in (overrides or {}).items() if v is not None})
    _PENDING_YAML["data"] = data
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, data, overrides)) from None
    except SettingsError as exc:  # an environment variable holding a list or mapping that is not JSON
        raise ConfigError(_describe_env_error(exc)) from None
    finally:
        _PENDING_YAML.pop("data", None)
    settings._source_file = path
    return settings


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"llm.n_ctx": 1}`` -> ``{"llm": {"n_ctx": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def describe_validation_error(
    exc: ValidationError, model: type[BaseModel] | None = None
) -> tuple[list[str], str, str]:
    """The first error's key path, its message and ``" (and N more)"``: every validated file
    (the config, grid specs) names a bad key the same way.

    An unknown key comes first (a misspelt key also leaves the right one "missing", which is
    a consequence, not a second mistake) and gets a "did you mean" from the keys valid at its
    place in ``model`` (and the keys reported missing beside it).
    """
    errors = exc.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    err = unknown[0] if unknown else errors[0]
    loc = [str(p) for p in err["loc"]]
    rest = len(errors) - 1
    if err["type"] != "extra_forbidden":
        return loc, err["msg"], f" (and {rest} more)" if rest else ""
    parent = loc[:-1]
    missing = [
        str(e["loc"][-1])
        for e in errors
        if e["type"] == "missing" and [str(p) for p in e["loc"][:-1]] == parent
    ]
    candidates = sorted(set(_keys_at(model, parent)) | set(missing)) if model else missing
    guess = difflib.get_close_matches(loc[-1], candidates, n=1, cutoff=0.6)
    msg = "unknown key" + (f" (did you mean '{guess[0]}'?)" if guess else "")
    if guess and guess[0] in missing:
        rest -= 1  # the "missing" error of the key that was misspelt
    return loc, msg, f" (and {rest} more)" if rest else ""


def _keys_at(model: type[BaseModel] | None, path: list[str]) -> list[str]:
    """The field names (and aliases) valid at ``path`` inside ``model``; ``[]`` when unknown."""
    for part in path:
        if model is None:
            return []
        field = model.model_fields.get(part)
        if field is None:
            continue  # a union tag or a list index: stay on this model
        model = _model_in(field.annotation)
    if model is None:
        return []
    return [k for name, f in model.model_fields.items() for k in (name, f.alias) if k]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The one pydantic model an annotation holds (``X``, ``X | None``, ``Annotated[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    models = [m for arg in getattr(annotation, "__args__", ()) if (m := _model_in(arg)) is not None]
    return models[0] if len(models) == 1 else None


def _describe(exc: ValidationError, path: Path | None, data: dict[str, Any], flags: dict[str, Any]) -> str:
    loc, msg, more = describe_validation_error(exc, Settings)
    key = ".".join(p if p.isprintable() and p.strip() == p and p else repr(p) for p in loc)  # one line
    env_name = ENV_PREFIX + "__".join(p.upper() for p in loc)
    env_keys = {k.upper() for k in os.environ}
    # the layers from the top down: flags override the environment, which overrides the file
    if _has(flags, loc):
        source = "command-line flag"
    elif env_name in env_keys:
        source = "environment variable " + env_name
    elif _has(data, loc):
        source = str(path)
    elif any(k.startswith(ENV_PREFIX + loc[0].upper()) for k in env_keys):
        source = "environment variable " + env_name
    else:
        source = str(path) if path else "settings"
    return f"{source}: {key}: {msg}{more}; see configs/default.yaml for valid keys"


def _describe_env_error(exc: SettingsError) -> str:
    match = re.search(r'field "(\w+)"', str(exc))
    section = match.group(1).upper() if match else ""
    names = sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX + section)) if section else []
    where = "environment variable " + (names[0] if names else ENV_PREFIX + "...")
    return f'{where}: a list or mapping value must be JSON, e.g. \'["analyst", "risk"]\''


def _has(tree: Any, loc: list[str]) -> bool:
    node = tree
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
