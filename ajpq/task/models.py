"""Model zoo: torchvision classifiers by name, small residual CNNs, and the user's factories.

Weights come from a local file (``weights=/path/to/state_dict.pt``) or, where a network exists,
torchvision's weight enums (``weights=DEFAULT`` or e.g. ``IMAGENET1K_V1``); a head or stem the
weights do not cover is reported by :func:`build_model_fresh` (``ajpq.task.pretrain`` trains
it). The small CNNs for digits and Fashion-MNIST are trained by ``ajpq.task.pretrain``.
"""

from __future__ import annotations

import enum
import inspect
import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ajpq.core.apply import set_submodule
from ajpq.task.checks import cause, load_weights
from ajpq.task.loader import load_object

__all__ = [
    "ModelName",
    "SmallResNet",
    "is_user_model",
    "load_factory",
    "check_model_name",
    "build_model",
    "build_model_fresh",
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
) -> tuple[nn.Module, tuple[str, ...]]:
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
    fresh: list[str] = []
    if enum_weights is not None:
        model = builder(weights=enum_weights)  # downloads where a network exists
        if num_classes != 1000:
            fresh.append(_replace_head(model, num_classes))
    else:
        model = builder(num_classes=num_classes)
    if in_channels != 3:
        fresh.append(_replace_stem(model, in_channels))
    if weights and Path(weights).exists():
        # a state dict of the network with another head (1000 ImageNet classes) or stem loads
        # all but those, which are trained before the search
        fresh = list(load_weights(model, weights, _replaceable(model)))
    return model, tuple(sorted(set(fresh))) if weights else ()


def _head_name(model: nn.Module) -> str | None:
    """The classifier head: the last Linear (or, in SqueezeNet, the last 1x1 convolution)."""
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1] if layers else None


def _stem_name(model: nn.Module) -> str | None:
    """The stem: the first convolution."""
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _replaceable(model: nn.Module) -> tuple[str, ...]:
    """The modules a weights file may lack in shape: the stem (other input channels) and the
    head (another number of classes)."""
    return tuple(dict.fromkeys(n for n in (_stem_name(model), _head_name(model)) if n))


def _replace_head(model: nn.Module, num_classes: int) -> str:
    """The head gets ``num_classes``; returns its name."""
    name = _head_name(model)
    if name is None:
        raise ValueError("the network has no Linear or Conv2d classifier to replace")
    module = model.get_submodule(name)
    if isinstance(module, nn.Linear):
        head: nn.Module = nn.Linear(module.in_features, num_classes)
    else:
        head = nn.Conv2d(module.in_channels, num_classes, module.kernel_size)
    set_submodule(model, name, head)
    return name


def _replace_stem(model: nn.Module, in_channels: int) -> str:
    """The stem takes ``in_channels``; returns its name."""
    name = _stem_name(model)
    if name is None:
        raise ValueError("the network has no convolution to take the input")
    module = model.get_submodule(name)
    stem = nn.Conv2d(
        in_channels,
        module.out_channels,
        module.kernel_size,
        module.stride,
        module.padding,
        bias=module.bias is not None,
    )
    set_submodule(model, name, stem)
    return name


def build_model(
    name: ModelName | str, num_classes: int = 10, in_channels: int = 3, weights: str | None = None
) -> nn.Module:
    """A model by name; ``weights`` is a local state-dict file or a torchvision weight name.
    ``package.module:factory`` calls your factory (with ``num_classes``/``in_channels`` when it
    takes them); its ``weights`` is a state-dict file."""
    return build_model_fresh(name, num_classes, in_channels, weights)[0]


def build_model_fresh(
    name: ModelName | str, num_classes: int = 10, in_channels: int = 3, weights: str | None = None
) -> tuple[nn.Module, tuple[str, ...]]:
    """:func:`build_model`, and the modules its ``weights`` did not cover (a head for another
    number of classes, a stem for other input channels): they must be trained first."""
    if is_user_model(name):
        model = _user_model(str(name), num_classes, in_channels)
        return model, load_weights(model, weights, _replaceable(model)) if weights else ()
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
    return model, load_weights(model, weights, _replaceable(model)) if weights else ()
