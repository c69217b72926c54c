"""Trained weights for a search, and where they come from: a weights file or torchvision's
weights (a head for another number of classes, or a stem for other input channels, trained
first: :class:`HeadRecipe`), else the small CNNs trained on the spot; both cached on disk,
keyed by what was trained, on which data, by which recipe. Planned without a device
(:func:`plan_pretraining`), trained where the device is (:func:`fit_reference`)."""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ajpq.core.configtypes import Count, NonNegativeInt, Rate, config_type
from ajpq.task.checks import check_model
from ajpq.task.data import DataConfig, DataSplits
from ajpq.task.models import ModelName, build_model, build_model_fresh, is_user_model
from ajpq.task.train import FinetuneConfig, evaluate, finetune

__all__ = [
    "HeadRecipe",
    "PretrainPlan",
    "PretrainResult",
    "default_cache_dir",
    "default_recipe",
    "fit_reference",
    "plan_pretraining",
    "pretrained_model",
    "store_pretrained",
    "train_fresh",
]

logger = logging.getLogger(__name__)


def default_recipe(name: ModelName | str) -> FinetuneConfig:
    """Pretraining recipe of a model trained on the spot (torchvision models: a short generic one)."""
    if not is_user_model(name) and ModelName(name) is ModelName.FMNIST_CNN:
        return FinetuneConfig(steps=2000, lr=0.05, weight_decay=5e-4, batch_size=128)
    return FinetuneConfig(steps=600, lr=0.05, weight_decay=5e-4, batch_size=64)


def default_cache_dir() -> Path:
    return Path(os.environ.get("AJPQ_CACHE", Path.home() / ".cache" / "ajpq"))


@dataclass(frozen=True)
class PretrainResult:
    model: nn.Module
    test_top1: float
    val_top1: float
    path: Path
    cached: bool


@config_type
class HeadRecipe:
    """How a new head (another number of classes than the weights') or stem (other input
    channels) is trained before the search (``head:``): the new modules alone for ``steps``,
    then the whole network for ``finetune_steps`` at a lower rate."""

    steps: NonNegativeInt = 300
    lr: Rate = 0.01
    finetune_steps: NonNegativeInt = 100
    finetune_lr: Rate = 0.001
    batch_size: Count = 64
    seed: NonNegativeInt = 0


@dataclass
class PretrainPlan:
    """What getting the trained network takes, decided without a device: the network built
    (its weights loaded when they exist: a file, torchvision's, the cache), the ``recipe`` to
    train it with when they do not (None: nothing to train), and the file its weights come
    from or go to (the cache entry)."""

    model: nn.Module
    label: str
    path: Path
    recipe: FinetuneConfig | None
    fresh: tuple[str, ...] = ()  # modules the weights did not cover, trained by ``head``
    head: HeadRecipe | None = None

    @property
    def cached(self) -> bool:
        return self.recipe is None and self.head is None


def plan_pretraining(
    name: ModelName | str,
    data_config: DataConfig,
    splits: DataSplits,
    recipe: FinetuneConfig | None = None,
    cache_dir: Path | None = None,
    weights: str | None = None,
    head: HeadRecipe | None = None,
) -> PretrainPlan:
    """Build the network and find its trained weights (``weights``, else the cache keyed by
    model, data and recipe); plain CPU work, where the caller's files are. Weights whose head
    (or stem) does not fit the data plan to train those first (``head``), cached likewise."""
    in_channels = splits.input_shape[0]
    label = str(name) if is_user_model(name) else ModelName(name).value
    if weights:
        model, fresh = build_model_fresh(name, splits.num_classes, in_channels, weights)
        check_model(model, label, tuple(splits.input_shape), splits.num_classes)
        if not fresh:
            return PretrainPlan(model, label, Path(weights), None)
        head = head or HeadRecipe()
        key = _key(
            {"model": label, "weights": _identity(weights), "fresh": list(fresh)},
            data_config,
            head,
        )
        path = Path(cache_dir or default_cache_dir()) / f"{_slug(label)}-head-{key}.pt"
        if _load_cached(model, path, label):
            return PretrainPlan(model, label, path, None)
        return PretrainPlan(model, label, path, None, fresh, head)
    recipe = recipe or default_recipe(name)
    key = _key({"model": label}, data_config, recipe)
    cache_dir = Path(cache_dir or default_cache_dir())
    path = cache_dir / f"{_slug(label)}-{data_config.name.value}-{key}.pt"
    model = build_model(name, splits.num_classes, in_channels)
    check_model(model, label, tuple(splits.input_shape), splits.num_classes)
    if _load_cached(model, path, label):
        return PretrainPlan(model, label, path, None)
    torch.manual_seed(recipe.seed)  # the same initial weights on every machine
    return PretrainPlan(build_model(name, splits.num_classes, in_channels), label, path, recipe)


def _load_cached(model: nn.Module, path: Path, label: str) -> bool:
    """Load the trained weights cached at ``path`` into ``model``, if there are any."""
    if not path.exists():
        return False
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    logger.info("loaded cached weights of %s from %s", label, path)
    return True


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", label)


def _plain(config: object) -> dict:
    return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(config).items()}


def _key(what: dict, data_config: DataConfig, recipe: object) -> str:
    """Cache key of trained weights: what was trained, on which data, by which recipe."""
    key_data = {
        **what,
        "data": {k: v for k, v in _plain(data_config).items() if k != "num_workers"},
        "recipe": _plain(recipe),
        "torch": torch.__version__.split("+")[0],
    }
    text = json.dumps(key_data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _identity(weights: str) -> str:
    """A weights file by its content (a torchvision weight by its name)."""
    path = Path(weights)
    if not path.exists():
        return weights
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train_fresh(
    model: nn.Module,
    fresh: tuple[str, ...],
    train: object,
    head: HeadRecipe,
    device: torch.device | str = "cpu",
) -> None:
    """Train the ``fresh`` modules (a new head or stem) alone, then the whole network briefly."""
    own = {id(p) for name in fresh for p in model.get_submodule(name).parameters()}
    common = {"batch_size": head.batch_size, "seed": head.seed}
    try:
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in own)
        finetune(model, train, FinetuneConfig(steps=head.steps, lr=head.lr, **common), device)
    finally:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    recipe = FinetuneConfig(steps=head.finetune_steps, lr=head.finetune_lr, **common)
    finetune(model, train, recipe, device)


def fit_reference(
    plan: PretrainPlan, splits: DataSplits, device: torch.device | str = "cpu"
) -> PretrainResult:
    """The device work of :func:`pretrained_model`: train when the plan says so, then the fp32
    validation and test accuracies (the reference every policy is compared with)."""
    model = plan.model
    if plan.head is not None:
        logger.info(
            "training the new %s of %s (%d + %d steps; cached afterwards)",
            ", ".join(plan.fresh),
            plan.label,
            plan.head.steps,
            plan.head.finetune_steps,
        )
        train_fresh(model, plan.fresh, splits.train, plan.head, device)
    if plan.recipe is not None:
        logger.info("training %s for %d steps (cached afterwards)", plan.label, plan.recipe.steps)
        finetune(model, splits.train, plan.recipe, device)
    val = evaluate(model, splits.val, device).top1
    test = evaluate(model, splits.test, device).top1
    return PretrainResult(model.cpu().eval(), test, val, plan.path, plan.cached)


def store_pretrained(plan: PretrainPlan, model: nn.Module) -> None:
    """Cache weights the plan had to train (atomically); nothing for weights that existed."""
    if plan.cached:
        return
    plan.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan.path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(plan.path)


def pretrained_model(
    name: ModelName | str,
    data_config: DataConfig,
    splits: DataSplits,
    recipe: FinetuneConfig | None = None,
    cache_dir: Path | None = None,
    weights: str | None = None,
    device: torch.device | str = "cpu",
    head: HeadRecipe | None = None,
) -> PretrainResult:
    """The model with trained weights: loaded from ``weights``, from the cache, or trained now
    (:func:`plan_pretraining`, :func:`fit_reference`, :func:`store_pretrained` in one)."""
    plan = plan_pretraining(name, data_config, splits, recipe, cache_dir, weights, head)
    result = fit_reference(plan, splits, device)
    store_pretrained(plan, result.model)
    return result
