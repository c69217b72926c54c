"""Fake quantization with straight-through gradients.

Weights: per-output-channel symmetric linear quantization, each channel at its own bit width
(0 = pruned, 1 = binary sign x mean|w|, 2..8 = symmetric integer grid, 32 = float).
Activations: per-tensor linear quantization, unsigned when the input is non-negative
(after ReLU), symmetric otherwise, over a calibrated range (EMA of the batch max in training).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "FLOAT_BITS",
    "weight_qmax",
    "weight_scales",
    "fake_quantize_weight",
    "fake_quantize_activation",
    "activation_grid",
    "ActivationQuantizer",
]

FLOAT_BITS = 32


def weight_qmax(bits: torch.Tensor) -> torch.Tensor:
    """Largest integer level per channel (2^(bits-1) - 1, at least 1)."""
    return torch.clamp(torch.exp2(bits.float() - 1) - 1, min=1.0)


def _grid_scale(flat: torch.Tensor, qmax: torch.Tensor) -> torch.Tensor:
    """Per-channel step of the integer grid (rows of ``flat`` are channels): max|w| / qmax
    (max|w| as max(max w, -min w): the same number without an |w| temporary)."""
    flat = flat.detach()
    max_abs = torch.maximum(flat.amax(dim=1), -flat.amin(dim=1))
    return (max_abs.clamp_min(1e-12) / qmax).float()


class _WeightToGrid(torch.autograd.Function):
    """Forward: round(w x (1 / scale)) x scale per row, in float32 -- the very arithmetic of
    ``torch.fake_quantize_per_channel_affine`` (its clamp is a no-op under a max-abs scale, where
    every code already lies within its channel's range), at a tenth of that kernel's CPU time.
    Backward: straight through (the kernel's clamp mask is all ones here)."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        column = scale.reshape(-1, 1)
        out = flat.float() * (1.0 / column)
        out.round_()
        return out.mul_(column).to(flat.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:  # noqa: ANN001
        return grad, None


def _mean_abs(flat: torch.Tensor, live: torch.Tensor | None) -> torch.Tensor:
    """mean |w| per row over its ``live`` columns (None: all; the rest are masked zeros)."""
    if live is None:
        return flat.abs().mean(dim=1)
    return flat.abs().sum(dim=1) / live.to(flat.dtype).clamp_min(1)


def weight_scales(
    weight: torch.Tensor, bits: torch.Tensor, live: torch.Tensor | None = None
) -> torch.Tensor:
    """The per-channel scale :func:`fake_quantize_weight` uses: the grid step for 2..8 bits,
    mean |w| for binary channels (what an exported file stores beside the integer codes)."""
    flat = weight.detach().reshape(weight.shape[0], -1).float()
    return torch.where(bits == 1, _mean_abs(flat, live), _grid_scale(flat, weight_qmax(bits)))


def fake_quantize_weight(
    weight: torch.Tensor,
    bits: torch.Tensor,
    qmax: torch.Tensor | None = None,
    has_special: bool | None = None,
    live: torch.Tensor | None = None,
) -> torch.Tensor:
    """Quantize ``weight`` (out, ...) channel by channel at ``bits`` (out,), with an STE.
    ``live`` (out,): how many weights of each channel are not masked zeros (a binary channel's
    magnitude is their mean |w|, as if the masked ones were removed).

    The forward value is the dequantized weight; the gradient passes straight through to the
    float weight for kept channels and is zero for pruned (0-bit) channels. Channels at 2..8 bits
    round to their grid in one pass (:class:`_WeightToGrid`): with a max-abs scale per channel,
    round(w / scale) already lies within that channel's own range, so no clamp is needed.
    """
    out = weight.shape[0]
    flat = weight.reshape(out, -1)
    if qmax is None:
        qmax = weight_qmax(bits)
    if has_special is None:
        has_special = bool(((bits < 2) | (bits >= FLOAT_BITS)).any())
    quant = _WeightToGrid.apply(flat, _grid_scale(flat, qmax))
    if has_special:
        bits = bits.to(flat.dtype)
        column = bits.reshape(out, 1)
        # +mean|w| where w > 0, else -mean|w| (an exported sign bit decodes the same); the
        # value is exactly that (flat - flat.detach() is exactly 0), the gradient straight through
        magnitude = _mean_abs(flat, live).unsqueeze(1)
        binary = torch.where(flat > 0, magnitude, -magnitude).detach() + (flat - flat.detach())
        quant = torch.where(column == 1, binary, quant)
        quant = torch.where(column >= FLOAT_BITS, flat, quant)
        quant = torch.where(column <= 0, torch.zeros_like(flat), quant)
    return quant.reshape_as(weight)


class _RoundToGrid(torch.autograd.Function):
    """Forward: clamp(round(x / scale), low, high) * scale, computed in float32 (also under
    autocast) with the grid as device tensors, so nothing is read back to the host.
    Backward: straight through."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale, low, high) -> torch.Tensor:  # noqa: ANN001
        out = x.float() * (1.0 / scale)
        out.round_()
        if isinstance(low, torch.Tensor):  # clamp_ with tensor bounds is 4x slower on CPU
            torch.maximum(out, low, out=out)
            torch.minimum(out, high, out=out)
        else:
            out.clamp_(low, high)
        return out.mul_(scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:  # noqa: ANN001
        return grad, None, None, None


def fake_quantize_activation(
    x: torch.Tensor, bits: int, max_abs: torch.Tensor | float, signed: torch.Tensor | bool
) -> torch.Tensor:
    """Linear fake quantization of ``x`` over [-max_abs, max_abs] (signed) or [0, max_abs].

    ``max_abs`` and ``signed`` may be device tensors (a calibrated quantizer's buffers): the
    grid is then computed on the device, without a host sync. The gradient passes straight
    through.
    """
    if bits >= FLOAT_BITS:
        return x
    if not isinstance(max_abs, torch.Tensor) and not isinstance(signed, torch.Tensor):
        return _RoundToGrid.apply(x, *activation_grid(bits, max_abs, signed))
    max_abs = torch.as_tensor(max_abs, dtype=torch.float32, device=x.device).float()
    signed = torch.as_tensor(signed, dtype=torch.bool, device=x.device)
    levels = torch.where(
        signed, max_abs.new_tensor(2.0 ** (bits - 1) - 1), max_abs.new_tensor(2.0**bits - 1)
    )
    scale = max_abs.clamp_min(1e-8) / levels
    low = torch.where(signed, -levels, torch.zeros_like(levels))
    return _RoundToGrid.apply(x, scale, low, levels)


def activation_grid(
    bits: int, max_abs: torch.Tensor | float, signed: bool
) -> tuple[float, int, int]:
    """(scale, low, high) of the activation grid: x -> clamp(round(x / scale), low, high) x scale
    over [-max_abs, max_abs] (signed) or [0, max_abs]. Reads ``max_abs`` on the host (export)."""
    levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return max(float(max_abs), 1e-8) / levels, -levels if signed else 0, levels


class ActivationQuantizer(nn.Module):
    """Per-tensor activation fake quantizer with a calibrated range.

    In training mode the range follows an exponential moving average of the batch's max |x|
    (the first batch sets it). In eval mode the calibrated range is used; an uncalibrated
    quantizer falls back to the batch's own range. The range and sign live in device buffers
    and are never read back during forward (whether it is calibrated is mirrored on the host,
    kept in step when a state dict is loaded).
    """

    def __init__(self, bits: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.bits = int(bits)
        self.momentum = momentum
        self.register_buffer("max_abs", torch.zeros(()))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.is_calibrated = False  # host mirror of ``calibrated``

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super()._load_from_state_dict(*args, **kwargs)
        self.is_calibrated = bool(self.calibrated)  # once per load, not per forward

    @staticmethod
    def _batch_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = torch.aminmax(x.detach())
        return torch.maximum(high, -low).float(), low < 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits >= FLOAT_BITS:
            return x
        if self.training:
            with torch.no_grad():
                batch_max, batch_signed = self._batch_range(x)
                if self.is_calibrated:
                    self.max_abs.lerp_(batch_max, self.momentum)
                    self.signed.logical_or_(batch_signed)
                else:
                    self.max_abs.copy_(batch_max)
                    self.signed.copy_(batch_signed)
                    self.calibrated.fill_(True)
                    self.is_calibrated = True
            return fake_quantize_activation(x, self.bits, self.max_abs, self.signed)
        if not self.is_calibrated:
            with torch.no_grad():
                batch_max, batch_signed = self._batch_range(x)
            return fake_quantize_activation(x, self.bits, batch_max, batch_signed)
        return fake_quantize_activation(x, self.bits, self.max_abs, self.signed)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
