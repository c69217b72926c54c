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
from ajpq.core.quantize import FLOAT_BITS, ActivationQuantizer
from ajpq.task.data import batches

__all__ = [
    "Amp",
    "autocast_dtype",
    "OptimizerName",
    "FinetuneConfig",
    "FinetuneResult",
    "EvalResult",
    "finetune",
    "evaluate",
    "recalibrate_bn",
]

logger = logging.getLogger(__name__)


CHECK_EVERY = 50  # finetune steps between reads of the loss (each read syncs with the device)


class Amp(str, enum.Enum):
    """Mixed precision for finetuning and evaluation (``scoring.amp``): ``auto`` is bf16
    autocast on CUDA and off on the CPU."""

    AUTO = "auto"
    OFF = "off"
    BF16 = "bf16"
    FP16 = "fp16"


def autocast_dtype(amp: Amp | str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device`` (None: full precision)."""
    amp, device = Amp(amp), torch.device(device)
    if amp is Amp.AUTO:
        return torch.bfloat16 if device.type == "cuda" else None
    return {Amp.OFF: None, Amp.BF16: torch.bfloat16, Amp.FP16: torch.float16}[amp]


def _prepare(model: nn.Module, device: torch.device, channels_last: bool) -> torch.memory_format:
    """Move ``model`` to ``device`` (channels-last when asked); the input layout to match."""
    model.to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=layout)
    return layout


def _inputs(x: torch.Tensor, device: torch.device, layout: torch.memory_format) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=layout) if x.dim() == 4 else x


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
    amp: Amp | str = Amp.AUTO,
    channels_last: bool = False,
) -> FinetuneResult:
    """Train ``model`` in place for ``config.steps`` steps; stops early (diverged) on a NaN loss.

    The loss stays on the device: it is read every ``CHECK_EVERY`` steps and at the end, so a
    step makes no host sync (bf16 autocast needs none; fp16 adds a gradient scaler, which does)."""
    device = torch.device(device)
    torch.manual_seed(config.seed)
    layout = _prepare(model, device, channels_last)
    model.train()
    if config.steps == 0:
        return FinetuneResult(0, float("nan"), False)
    dtype = autocast_dtype(amp, device)
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    optimizer = _make_optimizer(model, config)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
        if config.cosine
        else None
    )
    step, epoch, last, value = 0, 0, None, float("nan")
    pin = device.type == "cuda"
    while step < config.steps:
        for x, y in batches(
            train,
            config.batch_size,
            shuffle=True,
            seed=config.seed + epoch,
            drop_last=True,
            pin_memory=pin,
        ):
            x, y = _inputs(x, device, layout), y.to(device, non_blocking=True)
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                loss = F.cross_entropy(model(x), y)
            last = loss.detach()
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            if step % CHECK_EVERY == 0 or step >= config.steps:
                value = float(last)  # the one read of the loss
                if not math.isfinite(value):
                    logger.warning("finetune diverged by step %d (loss %s)", step, value)
                    return FinetuneResult(step, value, True)
            if step >= config.steps:
                break
        epoch += 1
    return FinetuneResult(step, value, False)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    max_samples: int | None = None,
    amp: Amp | str = Amp.AUTO,
    channels_last: bool = False,
) -> EvalResult:
    """Top-1 / top-5 accuracy (in [0, 1]) and mean cross-entropy of ``model`` on ``data``.
    Counts stay on the device until the end (one host read)."""
    device = torch.device(device)
    layout = _prepare(model, device, channels_last)
    model.eval()
    dtype = autocast_dtype(amp, device)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # top-1, top-5, loss
    seen = 0
    for x, y in batches(data, batch_size, shuffle=False, pin_memory=device.type == "cuda"):
        if max_samples is not None and seen + len(y) > max_samples:  # exactly max_samples
            x, y = x[: max_samples - seen], y[: max_samples - seen]
        x, y = _inputs(x, device, layout), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        totals[0] += (top[:, 0] == y).sum()
        totals[1] += (top == y[:, None]).any(dim=1).sum()
        totals[2] += F.cross_entropy(logits, y, reduction="sum")
        seen += len(y)
        if max_samples is not None and seen >= max_samples:
            break
    if seen == 0:
        raise ValueError("evaluation data is empty")
    top1, top5, loss = (float(v) / seen for v in totals.cpu())
    return EvalResult(top1, top5, loss, seen)


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    train: Dataset,
    num_batches: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    seed: int = 0,
    amp: Amp | str = Amp.AUTO,
    channels_last: bool = False,
) -> int:
    """Re-estimate every BatchNorm's running statistics on ``num_batches`` training batches
    (EagleEye's adaptive BN: a pruned network's statistics are stale). Only the statistics
    change: weights stay, and calibrated activation quantizers keep their ranges (the rest of
    the network runs in eval mode). A quantizer that was never calibrated (no finetune step
    ran) is calibrated on the same batches, so the network is scored as it would be exported.
    Returns the number of batches used."""
    device = torch.device(device)
    layout = _prepare(model, device, channels_last)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    fresh = [
        m
        for m in model.modules()
        if isinstance(m, ActivationQuantizer) and m.bits < FLOAT_BITS and not m.is_calibrated
    ]
    if not (norms or fresh) or num_batches <= 0:
        return 0
    model.eval()
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
        norm.train()
    for quantizer in fresh:
        quantizer.train()  # the first batch sets its range, the others move it (EMA)
    dtype = autocast_dtype(amp, device)
    used = 0
    try:
        for x, _ in batches(train, batch_size, shuffle=True, seed=seed, drop_last=True):
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                model(_inputs(x, device, layout))
            used += 1
            if used >= num_batches:
                break
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
    return used
