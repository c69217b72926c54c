"""Seeded finetuning and evaluation that work on plain and simulated (fake-quantized) models."""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from ajpq.core.configtypes import (
    Count,
    Flag,
    Fraction,
    NonNegative,
    NonNegativeInt,
    Rate,
    config_type,
)
from ajpq.task.data import batches

__all__ = [
    "OptimizerName",
    "FinetuneConfig",
    "FinetuneResult",
    "EvalResult",
    "finetune",
    "evaluate",
]

logger = logging.getLogger(__name__)


class OptimizerName(str, enum.Enum):
    SGD = "sgd"
    ADAM = "adam"


@config_type
class FinetuneConfig:
    """How a compressed network is finetuned (``scoring.finetune:``)."""

    steps: NonNegativeInt = 100
    lr: Rate = 0.01
    optimizer: OptimizerName = OptimizerName.SGD
    momentum: Fraction = 0.9
    weight_decay: NonNegative = 0.0
    batch_size: Count = 64
    seed: NonNegativeInt = 0
    cosine: Flag = True


@dataclass(frozen=True)
class FinetuneResult:
    steps: int
    final_loss: float
    diverged: bool


@dataclass(frozen=True)
class EvalResult:
    top1: float
    top5: float
    loss: float
    samples: int


def _make_optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer is OptimizerName.ADAM:
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def finetune(
    model: nn.Module,
    train: Dataset,
    config: FinetuneConfig,
    device: torch.device | str = "cpu",
) -> FinetuneResult:
    """Train ``model`` in place for ``config.steps`` steps; stops early (diverged) on a NaN loss."""
    device = torch.device(device)
    torch.manual_seed(config.seed)
    model.to(device).train()
    if config.steps == 0:
        return FinetuneResult(0, float("nan"), False)
    optimizer = _make_optimizer(model, config)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
        if config.cosine
        else None
    )
    step, epoch, loss_value = 0, 0, float("nan")
    while step < config.steps:
        for x, y in batches(
            train, config.batch_size, shuffle=True, seed=config.seed + epoch, drop_last=True
        ):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                logger.warning("finetune diverged at step %d (loss %s)", step, loss_value)
                return FinetuneResult(step, loss_value, True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            if step >= config.steps:
                break
        epoch += 1
    return FinetuneResult(step, loss_value, False)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    max_samples: int | None = None,
) -> EvalResult:
    """Top-1 / top-5 accuracy (in [0, 1]) and mean cross-entropy of ``model`` on ``data``."""
    device = torch.device(device)
    model.to(device).eval()
    correct1 = correct5 = seen = 0
    total_loss = 0.0
    for x, y in batches(data, batch_size, shuffle=False):
        if max_samples is not None and seen >= max_samples:
            break
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        seen += len(y)
    if seen == 0:
        raise ValueError("evaluation data is empty")
    return EvalResult(correct1 / seen, correct5 / seen, total_loss / seen, seen)
