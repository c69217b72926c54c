"""Model zoo: torchvision classifiers by name and small residual CNNs trained on the spot.

Weights come from a local file (``weights=/path/to/state_dict.pt``) or, where a network exists,
torchvision's weight enums (``weights=DEFAULT`` or e.g. ``IMAGENET1K_V1``). The small CNNs for
digits and Fashion-MNIST are trained once and cached on disk (keyed by model, data and recipe).
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ajpq.task.checks import cause, check_model, load_weights
from ajpq.task.data import DataConfig, DataSplits
from ajpq.task.loader import load_object
from ajpq.task.train import FinetuneConfig, evaluate, finetune

__all__ = [
    "ModelName",
    "SmallResNet",
    "is_user_model",
    "load_factory",
    "check_model_name",
    "build_model",
    "pretrained_model",
    "default_cache_dir",
    "default_recipe",
    "PretrainResult",
    "PretrainPlan",
    "plan_pretraining",
    "fit_reference",
    "store_pretrained",
]

logger = logging.getLogger(__name__)


class ModelName(str, enum.Enum):
    RESNET18 = "resnet18"
    RESNET50 = "resnet50"
    MOBILENET_V2 = "mobilenet_v2"
    VGG11_BN = "vgg11_bn"
    MOBILENET_V3_SMALL = "mobilenet_v3_small"
    MOBILENET_V3_LARGE = "mobilenet_v3_large"
    EFFICIENTNET_B0 = "efficientnet_b0"
    SHUFFLENET_V2_X1_0 = "shufflenet_v2_x1_0"
    RESNEXT50_32X4D = "resnext50_32x4d"
    REGNET_X_400MF = "regnet_x_400mf"
    DENSENET121 = "densenet121"
    SQUEEZENET1_1 = "squeezenet1_1"
    DIGITS_CNN = "digits_cnn"
    FMNIST_CNN = "fmnist_cnn"


USER_MODEL = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_user_model(name: ModelName | str) -> bool:
    """``package.module:factory`` names a user's model; anything else a zoo model."""
    return not isinstance(name, ModelName) and bool(USER_MODEL.match(str(name)))


def check_model_name(name: str) -> str:
    """``name`` when it is a zoo model or ``package.module:factory``; else a ValueError."""
    if is_user_model(name):
        return name
    try:
        return ModelName(name).value
    except ValueError:
        options = ", ".join(m.value for m in ModelName)
        raise ValueError(
            f"unknown model {name!r}; use one of {options}, or package.module:factory for your own"
        ) from None


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The function ``package.module:factory`` names (importable where the model is built)."""
    return load_object(
        spec, f"model {spec!r}", "install it or put it on PYTHONPATH (on a cluster: on every node)"
    )


def _user_model(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    """Call the factory with the keyword arguments it accepts (``num_classes``, ``in_channels``)."""
    factory = load_factory(spec)
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: offer nothing
        accepted = {}
    offered = {"num_classes": num_classes, "in_channels": in_channels}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    try:
        model = factory(**{k: v for k, v in offered.items() if takes_all or k in accepted})
    except Exception as error:  # noqa: BLE001 - the user's code: one line naming it
        raise ValueError(f"model {spec!r}: the factory raised {cause(error)}") from error
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model {spec!r}: the factory returned {type(model).__name__}, not a module"
        )
    return model


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem + three residual blocks (one downsampling) + linear head: fast on 2 CPU cores."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, width: int = 16, stem_stride: int = 1
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.block1 = _Block(width, width, 1)
        self.block2 = _Block(width, width * 2, 2)
        self.block3 = _Block(width * 2, width * 4, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _torchvision(
    name: ModelName, num_classes: int, in_channels: int, weights: str | None
) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, name.value)
    enum_weights = None
    if weights and not Path(weights).exists():
        try:
            enum_weights = getattr(torchvision.models.get_model_weights(name.value), weights)
        except (ValueError, KeyError, AttributeError) as error:
            raise ValueError(
                f"weights {weights!r} is neither a file nor a torchvision weight of {name.value} "
                "(e.g. DEFAULT, IMAGENET1K_V1)"
            ) from error
    if enum_weights is not None:
        model = builder(weights=enum_weights)  # downloads where a network exists
        if num_classes != 1000:
            _replace_head(model, num_classes)
    else:
        model = builder(num_classes=num_classes)
    if in_channels != 3:
        _replace_stem(model, in_channels)
    if weights and Path(weights).exists():
        load_weights(model, weights)
    return model


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """The last Linear (or, in SqueezeNet, the last 1x1 conv classifier) gets ``num_classes``."""
    for name, module in reversed(list(model.named_modules())):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if isinstance(module, nn.Linear):
                head: nn.Module = nn.Linear(module.in_features, num_classes)
            else:
                head = nn.Conv2d(module.in_channels, num_classes, module.kernel_size)
            setattr(parent, child, head)
            return


def _replace_stem(model: nn.Module, in_channels: int) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            stem = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                bias=module.bias is not None,
            )
            setattr(parent, child, stem)
            return


def build_model(
    name: ModelName | str, num_classes: int = 10, in_channels: int = 3, weights: str | None = None
) -> nn.Module:
    """A model by name; ``weights`` is a local state-dict file or a torchvision weight name.
    ``package.module:factory`` calls your factory (with ``num_classes``/``in_channels`` when it
    takes them); its ``weights`` is a state-dict file."""
    if is_user_model(name):
        model = _user_model(str(name), num_classes, in_channels)
        if weights:
            load_weights(model, weights)
        return model
    try:
        name = ModelName(name)
    except ValueError:
        options = ", ".join(m.value for m in ModelName)
        raise ValueError(f"unknown model {name!r}; choose one of: {options}") from None
    if name is ModelName.DIGITS_CNN:
        model: nn.Module = SmallResNet(in_channels, num_classes, width=16)
    elif name is ModelName.FMNIST_CNN:
        model = SmallResNet(in_channels, num_classes, width=32, stem_stride=2)
    else:
        return _torchvision(name, num_classes, in_channels, weights)
    if weights:
        load_weights(model, weights)
    return model


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

    @property
    def cached(self) -> bool:
        return self.recipe is None


def plan_pretraining(
    name: ModelName | str,
    data_config: DataConfig,
    splits: DataSplits,
    recipe: FinetuneConfig | None = None,
    cache_dir: Path | None = None,
    weights: str | None = None,
) -> PretrainPlan:
    """Build the network and find its trained weights (``weights``, else the cache keyed by
    model, data and recipe); plain CPU work, where the caller's files are."""
    in_channels = splits.input_shape[0]
    label = str(name) if is_user_model(name) else ModelName(name).value
    if weights:
        model = build_model(name, splits.num_classes, in_channels, weights)
        check_model(model, label, tuple(splits.input_shape), splits.num_classes)
        return PretrainPlan(model, label, Path(weights), None)
    recipe = recipe or default_recipe(name)
    key_data = {
        "model": label,
        "data": {
            k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(data_config).items()
        },
        "recipe": {
            k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(recipe).items()
        },
        "torch": torch.__version__.split("+")[0],
    }
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]
    cache_dir = Path(cache_dir or default_cache_dir())
    path = cache_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '-', label)}-{data_config.name.value}-{key}.pt"
    model = build_model(name, splits.num_classes, in_channels)
    check_model(model, label, tuple(splits.input_shape), splits.num_classes)
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        logger.info("loaded cached %s from %s", label, path)
        return PretrainPlan(model, label, path, None)
    torch.manual_seed(recipe.seed)  # the same initial weights on every machine
    return PretrainPlan(build_model(name, splits.num_classes, in_channels), label, path, recipe)


def fit_reference(
    plan: PretrainPlan, splits: DataSplits, device: torch.device | str = "cpu"
) -> PretrainResult:
    """The device work of :func:`pretrained_model`: train when the plan says so, then the fp32
    validation and test accuracies (the reference every policy is compared with)."""
    model = plan.model
    if plan.recipe is not None:
        logger.info("training %s for %d steps (cached afterwards)", plan.label, plan.recipe.steps)
        finetune(model, splits.train, plan.recipe, device)
    val = evaluate(model, splits.val, device).top1
    test = evaluate(model, splits.test, device).top1
    return PretrainResult(model.cpu().eval(), test, val, plan.path, plan.cached)


def store_pretrained(plan: PretrainPlan, model: nn.Module) -> None:
    """Cache weights the plan had to train (atomically); nothing for weights that existed."""
    if plan.recipe is None:
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
) -> PretrainResult:
    """The model with trained weights: loaded from ``weights``, from the cache, or trained now
    (:func:`plan_pretraining`, :func:`fit_reference`, :func:`store_pretrained` in one)."""
    plan = plan_pretraining(name, data_config, splits, recipe, cache_dir, weights)
    result = fit_reference(plan, splits, device)
    store_pretrained(plan, result.model)
    return result
