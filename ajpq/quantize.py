"""Fake quantization with straight-through gradients.

Weights: per-output-channel symmetric linear quantization, each channel at its own bit width
(0 = pruned, 1 = binary sign x mean|w|, 2..8 = symmetric integer grid, 32 = float).
Activations: per-tensor linear quantization, unsigned when the input is non-negative
(after ReLU), symmetric otherwise, over a calibrated range (EMA of the batch max in training).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FLOAT_BITS", "fake_quantize_weight", "fake_quantize_activation", "ActivationQuantizer"]

FLOAT_BITS = 32


def fake_quantize_weight(weight: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Quantize ``weight`` (out, ...) channel by channel at ``bits`` (out,), with an STE.

    The forward value is the dequantized weight; the gradient passes straight through to the
    float weight for kept channels and is zero for pruned (0-bit) channels.
    """
    out = weight.shape[0]
    flat = weight.reshape(out, -1)
    bits = bits.to(flat.dtype).reshape(out, 1)
    max_abs = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    qmax = torch.clamp(torch.exp2(bits - 1) - 1, min=1.0)
    scale = max_abs / qmax
    integer = torch.maximum(torch.minimum(torch.round(flat / scale), qmax), -qmax) * scale
    binary = torch.sign(flat) * flat.abs().mean(dim=1, keepdim=True)
    quant = torch.where(bits >= 2, integer, binary)
    quant = torch.where(bits >= FLOAT_BITS, flat, quant)
    quant = torch.where(bits <= 0, torch.zeros_like(flat), quant)
    keep = (bits > 0).to(flat.dtype)
    ste = flat * keep + (quant - flat * keep).detach()
    return ste.reshape_as(weight)


def fake_quantize_activation(
    x: torch.Tensor, bits: int, max_abs: torch.Tensor, signed: bool
) -> torch.Tensor:
    """Linear fake quantization of ``x`` over [-max_abs, max_abs] (signed) or [0, max_abs]."""
    if bits >= FLOAT_BITS:
        return x
    levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    scale = max_abs.clamp_min(1e-8) / levels
    low = -levels if signed else 0
    q = torch.clamp(torch.round(x / scale), low, levels) * scale
    return x + (q - x).detach()


class ActivationQuantizer(nn.Module):
    """Per-tensor activation fake quantizer with a calibrated range.

    In training mode the range follows an exponential moving average of the batch's max |x|
    (the first batch sets it). In eval mode the calibrated range is used; an uncalibrated
    quantizer falls back to the batch's own range.
    """

    def __init__(self, bits: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.bits = int(bits)
        self.momentum = momentum
        self.register_buffer("max_abs", torch.zeros(()))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits >= FLOAT_BITS:
            return x
        if self.training or not bool(self.calibrated):
            with torch.no_grad():
                batch_max = x.detach().abs().amax()
                batch_signed = bool((x.detach() < 0).any())
            if self.training:
                with torch.no_grad():
                    if bool(self.calibrated):
                        self.max_abs.lerp_(batch_max, self.momentum)
                        self.signed.logical_or_(torch.tensor(batch_signed))
                    else:
                        self.max_abs.copy_(batch_max)
                        self.signed.fill_(batch_signed)
                        self.calibrated.fill_(True)
                return fake_quantize_activation(x, self.bits, self.max_abs, bool(self.signed))
            return fake_quantize_activation(x, self.bits, batch_max, batch_signed)
        return fake_quantize_activation(x, self.bits, self.max_abs, bool(self.signed))

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
