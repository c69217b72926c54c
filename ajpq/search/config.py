"""The search configuration: one typed section per concept, validated once at the edge.

Each section IS the type the code uses (``data`` is :class:`ajpq.task.data.DataConfig`, ``budget``
:class:`ajpq.core.budget.Budget`, ``scoring`` :class:`ajpq.task.scoring.ScoreSettings` ...), declared
with ranges through :mod:`ajpq.core.configtypes`. Loading rejects unknown keys, wrong types, values
out of range, unknown models or datasets and missing files with one-line messages that name
the key (``ConfigError``); the CLI prints them without a traceback.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from ajpq.agent.defaults import HAQ, CreditAssignment
from ajpq.core.budget import Budget, BudgetKind, Precision
from ajpq.core.configtypes import (
    RESUMABLE,
    ConfigError,
    Count,
    Flag,
    Fraction,
    NonNegative,
    NonNegativeInt,
    Rate,
    Text,
    config_type,
    parse,
    to_plain,
)
from ajpq.core.redact import quote, redact
from ajpq.export.onnx import OnnxForm
from ajpq.search.bounded_yaml import MAX_BYTES, load_yaml
from ajpq.task.data import DataConfig
from ajpq.task.models import ModelName, check_model_name, is_user_model, load_factory
from ajpq.task.pretrain import HeadRecipe
from ajpq.task.scoring import DEFAULT_SCORER, LatencyRuntime, ScoreSettings

__all__ = [
    "ConfigError",
    "SpaceSection",
    "AgentSection",
    "EvaluatorSection",
    "TrackingSection",
    "SearchConfig",
    "RewardKind",
    "Method",
    "Prior",
    "load_config",
    "set_key",
    "read_mapping",
    "find_config",
    "apply_overrides",
]


class RewardKind(str, enum.Enum):
    ACCURACY_DELTA = "accuracy_delta"  # scale x (accuracy - fp32 accuracy)   (HAQ)
    RELATIVE = "relative"  # scale x (accuracy / fp32 accuracy - 1)


class Method(str, enum.Enum):
    """How policies are proposed (``method:``); every method uses the same env, evaluator pool,
    budget wall and MLflow records, and the same number of episodes (``agent.episodes``)."""

    DDPG = "ddpg"  # the joint search (the default)
    RANDOM = "random"  # uniformly random actions
    TPE = "tpe"  # Optuna's TPE sampler over the same per-group knobs (ask / tell)
    UNIFORM = "uniform"  # one bit width everywhere (no pruning, then + one uniform sparsity)
    STEPWISE = "stepwise"  # AMC-style pruning at 8 bits, then DDPG over bits on the best


class Prior(str, enum.Enum):
    """What the actor is cloned towards before DDPG learns (``agent.prior``)."""

    NONE = "none"  # a fresh actor; warm-up episodes are uniformly random (HAQ)
    # the importance-ranked uniform policy that meets the budget (one bit width everywhere,
    # unpruned when that fits); warm-up episodes explore with noise around it
    UNIFORM = "uniform"


LATENCY_CHANNEL_MULTIPLE = 16  # see SpaceSection.channel_multiple
WeightBits = Annotated[int, Field(strict=True, ge=1, le=8)]
ActBits = Annotated[int, Field(strict=True, ge=2, le=8)]


@config_type
class SpaceSection:
    """How the agent's action in [0, 1]^4 maps onto per-group knobs."""

    max_sparsity: Fraction = 0.8
    min_weight_bits: WeightBits = 2
    max_weight_bits: WeightBits = 8
    min_act_bits: ActBits = 4
    max_act_bits: ActBits = 8
    max_spread: NonNegative = 2.0
    # mixed: bits per channel by importance rank; layer: one per layer; fixed: one weight and
    # one activation bit width for the whole network (the first group's choice), pruning per
    # layer. The budget wall keeps the mode.
    precision: Precision = Precision.MIXED
    # After the wall, spend what the policy leaves of a size or BitOps budget on bits (one bit
    # more where it buys the most estimated accuracy, never unpruning), so every evaluated
    # policy uses its budget. The wall only squeezes; without this, searches under-spend.
    fill_budget: bool = True
    # Kept channels per group in whole multiples (rounded down after the wall): runtimes'
    # kernels work on channel blocks, and odd widths run up to 2x slower than wider even ones
    # (ajpq.core.snap). Unset: 16 for a latency budget (AVX-512's block; a multiple of AVX2's
    # and TensorRT's 8), 1 (any width) for size and BitOps budgets.
    channel_multiple: Count | None = None

    def multiple_for(self, kind: BudgetKind) -> int:
        """The channel multiple a search under a ``kind`` budget keeps."""
        if self.channel_multiple is not None:
            return self.channel_multiple
        return LATENCY_CHANNEL_MULTIPLE if kind is BudgetKind.LATENCY else 1

    def __post_init__(self) -> None:
        if self.min_weight_bits > self.max_weight_bits:
            raise ValueError("min_weight_bits: must not exceed max_weight_bits")
        if self.min_act_bits > self.max_act_bits:
            raise ValueError("min_act_bits: must not exceed max_act_bits")


@config_type
class AgentSection:
    """DDPG settings: HAQ's defaults from :data:`ajpq.agent.defaults.HAQ` (owned there), warm-up
    and episode counts sized for the demo; :meth:`training_kwargs` builds the agent's from them."""

    episodes: Annotated[Count, RESUMABLE] = 60
    warmup_episodes: NonNegativeInt = HAQ.warmup_episodes
    env_runners: Annotated[NonNegativeInt, RESUMABLE] = 2
    actor_lr: Rate = HAQ.actor_lr
    critic_lr: Rate = HAQ.critic_lr
    tau: Annotated[float, Field(strict=True, gt=0, le=1)] = HAQ.tau
    hiddens: Annotated[list[Count], Field(min_length=1)] = Field(
        default_factory=lambda: list(HAQ.hiddens)
    )
    batch_size: Count = HAQ.batch_size
    noise_sigma: NonNegative = HAQ.noise_sigma
    # per learning episode; unset: decays from noise_sigma to noise_final_sigma over the
    # episodes after warm-up (HAQ's 0.99 suits its 600 episodes: over 22-75 learning episodes
    # it leaves sigma at 0.24-0.40 of the action range, i.e. the search never stops exploring)
    noise_decay: Annotated[float, Field(strict=True, gt=0, le=1)] | None = None
    noise_final_sigma: NonNegative = 0.05
    baseline_decay: Fraction = HAQ.baseline_decay
    credit_assignment: CreditAssignment = HAQ.credit_assignment
    reward: RewardKind = RewardKind.ACCURACY_DELTA
    reward_scale: Rate = 1.0
    failed_reward: float = -1.0
    seed: NonNegativeInt = 0
    # sample-efficiency levers (ajpq.agent.prior, ajpq.search.predictor), on by default: with
    # them DDPG leads TPE on the Fashion-MNIST table and learns on the digits demo, without
    # them it does neither (results/fmnist.md, results/levers_demo.md)
    prior: Prior = Prior.UNIFORM
    prior_steps: NonNegativeInt = 300  # behaviour-cloning steps (full batch, Adam 1e-3)
    reward_normalize: Flag = False  # advantages divided by the std of the search's returns
    # DDPG's proposals per evaluation (ddpg, stepwise): an accuracy predictor fitted on the
    # search's records screens them and only the most promising are scored (1: all are)
    screen: Count = 4

    def training_kwargs(
        self, episodes: int | None = None, inherited: bool = False
    ) -> dict[str, Any]:
        """The keyword arguments of ``DDPGConfig.training`` for a search of ``episodes``
        episodes (default ``self.episodes``): the one translation of this section. An agent
        ``inherited`` from a sweep's earlier trial skips the warm-up."""
        episodes = episodes or self.episodes
        warmup = 0 if inherited else self.warmup_episodes
        return {
            "actor_hiddens": list(self.hiddens),
            "critic_hiddens": list(self.hiddens),
            "actor_lr": self.actor_lr,
            "critic_lr": self.critic_lr,
            "tau": self.tau,
            "train_batch_size_per_learner": self.batch_size,
            "warmup_episodes": warmup,
            "noise_sigma": self.noise_sigma,
            "noise_decay": self.decay_over(episodes, warmup),
            "baseline_decay": self.baseline_decay,
            "credit_assignment": self.credit_assignment.value,
            "max_episodes": episodes,
            "warmup_random": self.prior is Prior.NONE,
            "reward_normalize": self.reward_normalize,
        }

    def decay_over(self, episodes: int, warmup: int | None = None) -> float:
        """The per-episode noise decay of a search of ``episodes`` episodes (``warmup`` of
        them random; default ``warmup_episodes``): ``noise_decay`` when set, else the one
        that reaches ``noise_final_sigma`` at the last episode."""
        if self.noise_decay is not None:
            return self.noise_decay
        warmup = self.warmup_episodes if warmup is None else warmup
        learning = max(1, episodes - warmup)
        if self.noise_sigma <= 0 or self.noise_final_sigma >= self.noise_sigma:
            return 1.0
        return float((self.noise_final_sigma / self.noise_sigma) ** (1.0 / learning))


@config_type
class EvaluatorSection:
    """Where and how policies are scored: the actors, their resources, retries, the scorer."""

    # the fields marked RESUMABLE may change on --resume (how parallel, how patient)
    num_evaluators: Annotated[Count, RESUMABLE] = 2
    num_cpus: Annotated[Rate, RESUMABLE] = 1.0
    num_gpus: Annotated[NonNegative, RESUMABLE] = 0.0
    torch_threads: Annotated[Count, RESUMABLE] = 1
    max_retries: Annotated[NonNegativeInt, RESUMABLE] = 2
    timeout_s: Annotated[Rate, RESUMABLE] = 3600.0
    # on a cluster: wait this long for a node that fits one
    start_timeout_s: Annotated[NonNegative, RESUMABLE] = 300.0
    # package.module:function scoring one policy (see ajpq.task.scoring.Scorer), and its kwargs
    scorer: Text = DEFAULT_SCORER
    scorer_args: dict[str, float] = Field(default_factory=dict)


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


@config_type
class TrackingSection:
    uri: Text | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: Text = "ajpq"
    run_name: Text | None = None
    # extra tags on the search run and on every policy run (a sweep sets its id and the
    # trial's swept keys here), and the run to nest the search under (a sweep's run)
    tags: dict[str, str] = Field(default_factory=dict)
    parent_run_id: Text | None = None
    # the best policy's compressed file (finetuned as the search scores) as an artifact of the
    # search run, and, when named, a new version of that model in the MLflow Model Registry
    log_model: Annotated[Flag, RESUMABLE] = True
    register_model: Annotated[Text | None, RESUMABLE] = None
    # that file's ONNX beside it (integer: QDQ, what onnxruntime and TensorRT run fast; float;
    # tensorrt; null: none), checked and timed in onnxruntime against the fp32 network's ONNX
    model_onnx: Annotated[OnnxForm | None, RESUMABLE] = OnnxForm.INTEGER

    def __post_init__(self) -> None:
        uri = self.uri
        if uri and "://" in uri and uri.split("://")[0] not in TRACKING_SCHEMES:
            raise ValueError(
                f"uri: unknown scheme {uri.split('://')[0]!r}; use http(s)://host:port, "
                "sqlite:///path/mlflow.db, file:///folder or a database URI"
            )


@config_type
class SearchConfig:
    # a zoo model (ajpq.task.models.ModelName) or your own as package.module:factory
    model: Text = ModelName.DIGITS_CNN.value
    weights: Text | None = None
    # how a head (or stem) the weights do not fit is trained before the search
    head: HeadRecipe = Field(default_factory=HeadRecipe)
    method: Method = Method.DDPG
    data: DataConfig = Field(default_factory=DataConfig)
    budget: Budget = Field(default_factory=Budget)
    space: SpaceSection = Field(default_factory=SpaceSection)
    agent: AgentSection = Field(default_factory=AgentSection)
    scoring: ScoreSettings = Field(default_factory=ScoreSettings)
    evaluator: EvaluatorSection = Field(default_factory=EvaluatorSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    # RESUMABLE: may change between a run and its --resume (where things go, how parallel)
    output_dir: Annotated[Text, RESUMABLE] = "ajpq_runs"
    ray_address: Annotated[Text | None, RESUMABLE] = None
    ray_num_cpus: Annotated[Count | None, RESUMABLE] = None
    # shared storage every node reads (s3://..., gs://..., a mounted path) for the search
    # context; None: Ray's object store
    context_uri: Annotated[Text | None, RESUMABLE] = None
    # a sweep's shared experience folder (ajpq.run.experience), set on each trial by a sweep
    # with sweep.share_experience; None: the search learns and scores on its own
    experience_dir: Annotated[Text | None, RESUMABLE] = None

    def __post_init__(self) -> None:
        try:
            check_model_name(self.model)
        except ValueError as error:
            raise ValueError(f"model: {error}") from None
        if self.scoring.latency_runtime is LatencyRuntime.TENSORRT and self.evaluator.num_gpus <= 0:
            raise ValueError(
                "scoring.latency_runtime: tensorrt times policies on a GPU; set "
                "evaluator.num_gpus (> 0) or use latency_runtime onnxruntime or torch"
            )
        if self.method is Method.STEPWISE and self.budget.kind.value == "latency":
            raise ValueError(
                "method: stepwise splits a size or bitops budget between its stages; use "
                "budget.kind size or bitops, or another method"
            )

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """Validate ``data`` and check what it names on this machine (files, the scorer)."""
        config = parse(cls, data)
        _check_environment(config)
        return config


def _check_environment(config: SearchConfig) -> None:
    data = config.data
    if data.path and not data.download and not Path(data.path).exists():
        raise ConfigError(f"data.path: {redact(data.path)} does not exist")
    if "://" in config.output_dir:
        _check_storage_uri("output_dir", config.output_dir)
    elif Path(config.output_dir).exists() and not Path(config.output_dir).is_dir():
        raise ConfigError(f"output_dir: {redact(config.output_dir)} is a file; give a folder")
    if config.context_uri:
        _check_storage_uri("context_uri", config.context_uri)
    from ajpq.task.scoring import load_scorer

    try:
        load_scorer(config.evaluator.scorer)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    own = is_user_model(config.model)
    if own:
        try:
            load_factory(config.model)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    if (
        config.weights
        and not Path(config.weights).exists()
        and (own or config.model in (ModelName.DIGITS_CNN, ModelName.FMNIST_CNN))
    ):
        raise ConfigError(f"weights: {redact(config.weights)} does not exist")


def _check_storage_uri(key: str, uri: str) -> None:
    """``key`` names storage pyarrow can open (s3://, gs://, file://, a mounted path)."""
    from pyarrow import fs

    try:
        fs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
    except Exception as error:  # noqa: BLE001 - pyarrow raises several kinds; one line
        reason = redact(str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise ConfigError(
            f"{key}: {redact(uri)} is not storage pyarrow can open ({reason[:160]}); "
            "use s3://bucket/path, gs://bucket/path, file:///path or a mounted path"
        ) from None


def set_key(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of the raw config mapping ``data`` with dotted ``key`` (``budget.value``) set."""
    data = dict(data)
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    node[parts[-1]] = value
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(
                f"--set {quote(override)}: expected key=value, e.g. agent.episodes=10"
            )
        key, raw = override.split("=", 1)
        value = load_yaml(raw, f"--set {quote(key, 60)}") if raw != "" else None
        for section in ("sweep.grid.", "sweep.random."):  # the rest is one (dotted) key
            if key.startswith(section):
                name = section.split(".")[1]
                sweep = dict(data.get("sweep") or {})
                sweep[name] = {**(sweep.get(name) or {}), key[len(section) :]: value}
                data = {**data, "sweep": sweep}
                break
        else:
            data = set_key(data, key, value)
    return dict(data)


def find_config(path: str | Path) -> Path:
    """``path`` as given, or, when relative and missing here, inside the installed project
    (``ray submit`` runs scripts from the head's home folder, the project lives in ~/ajpq)."""
    path = Path(path)
    if path.exists():
        return path
    project = Path(__file__).resolve().parents[2] / path
    if not path.is_absolute() and project.exists():
        return project
    raise ConfigError(f"config file {path} does not exist")


def read_mapping(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The config file (found as :func:`find_config` does) and its top-level mapping."""
    path = find_config(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give a YAML file in it")
    size = path.stat().st_size
    if size > MAX_BYTES:  # refused before reading it
        raise ConfigError(f"{path}: {size} bytes, over the {MAX_BYTES}-byte limit of a config")
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    raw = load_yaml(text, str(path))
    if raw is None:
        raise ConfigError(f"{path} is empty; start from tune_configs/digits_demo.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return path, raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> SearchConfig:
    """Read a YAML config, apply overrides, validate. Raises ConfigError with a clear message."""
    path, raw = read_mapping(path)
    if "sweep" in raw:
        raise ConfigError(f"{path} is a sweep (it has a sweep: section); run it with ajpq sweep")
    return SearchConfig.from_dict(apply_overrides(raw, overrides or []))
