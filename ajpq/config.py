"""Typed search configuration, loaded from YAML and validated once at the edge.

Every section is a frozen dataclass with ``to_dict``/``from_dict``. Loading rejects unknown keys,
wrong types, unknown models or datasets and missing dataset paths with one-line messages that
name the key (``ConfigError``); the CLI prints them without a traceback.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ajpq.budget import BudgetKind
from ajpq.data import DatasetName
from ajpq.models import ModelName
from ajpq.train import OptimizerName

__all__ = [
    "ConfigError",
    "DataSection",
    "BudgetSection",
    "SpaceSection",
    "AgentSection",
    "EvaluatorSection",
    "TrackingSection",
    "SearchConfig",
    "RewardKind",
    "load_config",
    "find_config",
    "apply_overrides",
]


class ConfigError(ValueError):
    """A configuration problem, phrased for the user (one line, names the key)."""


class RewardKind(str, enum.Enum):
    ACCURACY_DELTA = "accuracy_delta"  # scale x (accuracy - fp32 accuracy)   (HAQ)
    RELATIVE = "relative"  # scale x (accuracy / fp32 accuracy - 1)


@dataclass(frozen=True)
class DataSection:
    name: DatasetName = DatasetName.DIGITS
    path: str | None = None
    image_size: int | None = None
    val_fraction: float = 0.1
    download: bool = False


@dataclass(frozen=True)
class BudgetSection:
    kind: BudgetKind = BudgetKind.SIZE
    value: float = 0.1


@dataclass(frozen=True)
class SpaceSection:
    """How the agent's action in [0, 1]^4 maps onto per-group knobs."""

    max_sparsity: float = 0.8
    min_weight_bits: int = 2
    max_weight_bits: int = 8
    min_act_bits: int = 4
    max_act_bits: int = 8
    max_spread: float = 2.0


@dataclass(frozen=True)
class AgentSection:
    """DDPG settings (HAQ defaults, warm-up and episode counts sized for the demo)."""

    episodes: int = 60
    warmup_episodes: int = 20
    env_runners: int = 2
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01
    hiddens: list[int] = field(default_factory=lambda: [300, 300])
    batch_size: int = 64
    noise_sigma: float = 0.5
    noise_decay: float = 0.99
    baseline_decay: float = 0.5
    credit_assignment: str = "episode_baseline"
    reward: RewardKind = RewardKind.ACCURACY_DELTA
    reward_scale: float = 1.0
    failed_reward: float = -1.0
    seed: int = 0


@dataclass(frozen=True)
class EvaluatorSection:
    num_evaluators: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    torch_threads: int = 1
    finetune_steps: int = 30
    finetune_lr: float = 0.01
    optimizer: OptimizerName = OptimizerName.SGD
    batch_size: int = 64
    val_samples: int | None = None
    latency_batch_size: int = 1
    latency_repeats: int = 10
    max_retries: int = 2
    timeout_s: float = 3600.0
    start_timeout_s: float = 300.0  # on a cluster: wait this long for a node that fits one
    # package.module:function scoring one policy (see ajpq.scoring.Scorer), and its kwargs
    scorer: str = "ajpq.scoring:score_policy"
    scorer_args: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrackingSection:
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "ajpq"
    run_name: str | None = None


@dataclass(frozen=True)
class SearchConfig:
    model: ModelName = ModelName.DIGITS_CNN
    weights: str | None = None
    data: DataSection = field(default_factory=DataSection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    space: SpaceSection = field(default_factory=SpaceSection)
    agent: AgentSection = field(default_factory=AgentSection)
    evaluator: EvaluatorSection = field(default_factory=EvaluatorSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    output_dir: str = "ajpq_runs"
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    # shared storage every node reads (s3://..., gs://..., a mounted path) for the search
    # context; None: Ray's object store
    context_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        config = _build(cls, data, "")
        _check_semantics(config)
        return config


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(m.value for m in tp)
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for option in options:
            try:
                return _coerce(option, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(item, v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            label = {"model": "model", "data.name": "dataset"}.get(key, key)
            raise ConfigError(f"{key}: unknown {label} {value!r}; use {_type_name(tp)}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}; known keys here: {', '.join(sorted(names))}"
        )
    kwargs = {name: _coerce(hints[name], value, prefix + name) for name, value in data.items()}
    return cls(**kwargs)


# ajpq.agent.CreditAssignment's values (not imported: RLlib is heavy for a config check;
# tests/search/test_config_cli.py keeps the two equal)
CREDIT_ASSIGNMENTS = ("episode_baseline", "td")
TRACKING_SCHEMES = (
    "http",
    "https",
    "sqlite",
    "file",
    "databricks",
    "postgresql",
    "mysql",
    "mssql",
)


def _require(checks: list[tuple[str, bool, str]]) -> None:
    for key, ok, need in checks:
        if not ok:
            raise ConfigError(f"{key}: must be {need}")


def _check_semantics(config: SearchConfig) -> None:
    data = config.data
    if data.name in (DatasetName.CIFAR10, DatasetName.IMAGEFOLDER) and not data.path:
        raise ConfigError(f"data.path: dataset {data.name.value} needs a local path")
    if data.path and not data.download and not Path(data.path).exists():
        raise ConfigError(f"data.path: {data.path} does not exist")
    if not 0 < data.val_fraction < 1:
        raise ConfigError("data.val_fraction: must lie in (0, 1)")
    budget = config.budget
    if budget.value <= 0 or (budget.kind is not BudgetKind.LATENCY and budget.value > 1):
        raise ConfigError(
            f"budget.value: {budget.value} must be in (0, 1] for a {budget.kind.value} ratio"
        )
    space = config.space
    if not 0 <= space.max_sparsity < 1:
        raise ConfigError("space.max_sparsity: must lie in [0, 1)")
    if not 1 <= space.min_weight_bits <= space.max_weight_bits <= 8:
        raise ConfigError("space.min_weight_bits/max_weight_bits: need 1 <= min <= max <= 8")
    if not 2 <= space.min_act_bits <= space.max_act_bits <= 8:
        raise ConfigError("space.min_act_bits/max_act_bits: need 2 <= min <= max <= 8")
    agent = config.agent
    evaluator = config.evaluator
    _require(
        [
            ("agent.episodes", agent.episodes >= 1, "at least 1"),
            ("agent.warmup_episodes", agent.warmup_episodes >= 0, ">= 0"),
            ("agent.env_runners", agent.env_runners >= 0, ">= 0"),
            ("agent.actor_lr", agent.actor_lr > 0, "> 0"),
            ("agent.critic_lr", agent.critic_lr > 0, "> 0"),
            ("agent.tau", 0 < agent.tau <= 1, "in (0, 1]"),
            ("agent.hiddens", bool(agent.hiddens) and min(agent.hiddens) >= 1, "sizes >= 1"),
            ("agent.batch_size", agent.batch_size >= 1, "at least 1"),
            ("agent.noise_sigma", agent.noise_sigma >= 0, ">= 0"),
            ("agent.noise_decay", 0 < agent.noise_decay <= 1, "in (0, 1]"),
            ("agent.baseline_decay", 0 <= agent.baseline_decay < 1, "in [0, 1)"),
            ("agent.reward_scale", agent.reward_scale > 0, "> 0"),
            ("agent.seed", agent.seed >= 0, ">= 0"),
            ("evaluator.num_evaluators", evaluator.num_evaluators >= 1, "at least 1"),
            ("evaluator.num_cpus", evaluator.num_cpus > 0, "> 0"),
            ("evaluator.num_gpus", evaluator.num_gpus >= 0, ">= 0"),
            ("evaluator.torch_threads", evaluator.torch_threads >= 1, "at least 1"),
            ("evaluator.finetune_steps", evaluator.finetune_steps >= 0, ">= 0"),
            ("evaluator.finetune_lr", evaluator.finetune_lr > 0, "> 0"),
            ("evaluator.batch_size", evaluator.batch_size >= 1, "at least 1"),
            (
                "evaluator.val_samples",
                evaluator.val_samples is None or evaluator.val_samples >= 1,
                "at least 1 (or unset: the whole split)",
            ),
            ("evaluator.latency_batch_size", evaluator.latency_batch_size >= 1, "at least 1"),
            ("evaluator.latency_repeats", evaluator.latency_repeats >= 1, "at least 1"),
            ("evaluator.max_retries", evaluator.max_retries >= 0, ">= 0"),
            ("evaluator.timeout_s", evaluator.timeout_s > 0, "> 0 seconds"),
            ("evaluator.start_timeout_s", evaluator.start_timeout_s >= 0, ">= 0 seconds"),
            ("space.max_spread", config.space.max_spread >= 0, ">= 0"),
            (
                "data.image_size",
                data.image_size is None or data.image_size >= 8,
                "at least 8 (or unset: the dataset's own)",
            ),
            (
                "ray_num_cpus",
                config.ray_num_cpus is None or config.ray_num_cpus >= 1,
                "at least 1",
            ),
        ]
    )
    if agent.credit_assignment not in CREDIT_ASSIGNMENTS:
        raise ConfigError(
            f"agent.credit_assignment: unknown {agent.credit_assignment!r}; use one of "
            + ", ".join(CREDIT_ASSIGNMENTS)
        )
    uri = config.tracking.uri
    if uri and "://" in uri and uri.split("://")[0] not in TRACKING_SCHEMES:
        raise ConfigError(
            f"tracking.uri: unknown scheme {uri.split('://')[0]!r}; use http(s)://host:port, "
            "sqlite:///path/mlflow.db, file:///folder or a database URI"
        )
    if Path(config.output_dir).exists() and not Path(config.output_dir).is_dir():
        raise ConfigError(f"output_dir: {config.output_dir} is a file; give a folder")
    from ajpq.scoring import load_scorer

    try:
        load_scorer(evaluator.scorer)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if (
        config.weights
        and not Path(config.weights).exists()
        and config.model
        in (
            ModelName.DIGITS_CNN,
            ModelName.FMNIST_CNN,
        )
    ):
        raise ConfigError(f"weights: {config.weights} does not exist")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping."""
    data = dict(data)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"--set {override!r}: expected key=value, e.g. agent.episodes=10")
        key, raw = override.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def find_config(path: str | Path) -> Path:
    """``path`` as given, or, when relative and missing here, inside the installed project
    (``ray submit`` runs scripts from the head's home folder, the project lives in ~/ajpq)."""
    path = Path(path)
    if path.exists():
        return path
    project = Path(__file__).resolve().parents[1] / path
    if not path.is_absolute() and project.exists():
        return project
    raise ConfigError(f"config file {path} does not exist")


def load_config(path: str | Path, overrides: list[str] | None = None) -> SearchConfig:
    """Read a YAML config, apply overrides, validate. Raises ConfigError with a clear message."""
    path = find_config(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give a YAML file in it")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if raw is None:
        raise ConfigError(f"{path} is empty; start from tune_configs/digits_demo.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return SearchConfig.from_dict(apply_overrides(raw, overrides or []))
