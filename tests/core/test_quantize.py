"""Fake quantization: the levels a channel may take, binary and pruned channels, the STE, and
the activation quantizer's calibration."""

import torch

from ajpq.core.quantize import (
    FLOAT_BITS,
    ActivationQuantizer,
    activation_grid,
    fake_quantize_weight,
    weight_qmax,
    weight_scales,
)


def test_each_channel_takes_at_most_its_own_levels():
    torch.manual_seed(0)
    weight = torch.randn(5, 3, 3, 3)
    bits = torch.tensor([2, 3, 4, 8, FLOAT_BITS])
    quant = fake_quantize_weight(weight, bits)
    for channel, b in enumerate(bits.tolist()):
        values = quant[channel].unique()
        if b == FLOAT_BITS:
            assert torch.equal(quant[channel], weight[channel])
        else:
            assert len(values) <= 2**b - 1  # symmetric: -qmax..qmax
            scale = weight_scales(weight, bits)[channel]
            codes = values / scale
            assert torch.allclose(codes, codes.round(), atol=1e-4)
            assert codes.abs().max() <= weight_qmax(torch.tensor(b)) + 1e-4


def test_grid_channels_equal_torchs_fused_per_channel_kernel():
    """The one-pass rounding is the arithmetic of ``fake_quantize_per_channel_affine`` (the
    reference it replaced for speed), values and gradients, bit for bit."""
    torch.manual_seed(1)
    weight = (torch.randn(16, 8, 3, 3) * torch.rand(16, 1, 1, 1) * 3).requires_grad_(True)
    bits = torch.tensor([2, 3, 4, 5, 6, 7, 8, 8] * 2)
    ours = fake_quantize_weight(weight, bits)
    (ours * torch.arange(16.0).view(16, 1, 1, 1)).sum().backward()
    ours_grad = weight.grad.clone()
    weight.grad = None
    flat = weight.reshape(16, -1)
    scale = weight_scales(weight, bits)
    zero = torch.zeros(16, dtype=torch.int32)
    torchs = torch.fake_quantize_per_channel_affine(flat, scale, zero, 0, -127, 127)
    (torchs.reshape_as(weight) * torch.arange(16.0).view(16, 1, 1, 1)).sum().backward()
    assert torch.equal(ours.reshape(16, -1), torchs)
    assert torch.equal(ours_grad, weight.grad)


def test_binary_is_sign_times_mean_and_pruned_is_zero():
    weight = torch.tensor([[1.0, -3.0, 2.0], [0.5, -0.5, 1.0]])
    quant = fake_quantize_weight(weight, torch.tensor([1, 0]))
    assert torch.allclose(quant[0], torch.tensor([2.0, -2.0, 2.0]))
    assert torch.equal(quant[1], torch.zeros(3))


def test_gradients_pass_straight_through_kept_channels_only():
    weight = torch.randn(3, 4, requires_grad=True)
    fake_quantize_weight(weight, torch.tensor([4, 1, 0])).sum().backward()
    assert torch.equal(weight.grad[0], torch.ones(4))
    assert torch.equal(weight.grad[1], torch.ones(4))
    assert torch.equal(weight.grad[2], torch.zeros(4))


def test_activation_grid_signed_and_unsigned():
    assert activation_grid(8, 2.55, signed=False) == (2.55 / 255, 0, 255)
    scale, low, high = activation_grid(4, 7.0, signed=True)
    assert (low, high) == (-7, 7) and abs(scale - 1.0) < 1e-12


def test_activation_quantizer_calibrates_in_training_and_keeps_the_range_in_eval():
    quantizer = ActivationQuantizer(bits=4)
    quantizer.train()
    quantizer(torch.tensor([0.0, 1.5, 3.0]))
    assert bool(quantizer.calibrated) and float(quantizer.max_abs) == 3.0
    assert not bool(quantizer.signed)
    quantizer.eval()
    out = quantizer(torch.tensor([0.1, 10.0]))  # the range stays 3.0: 10 clips to it
    assert float(out.max()) == 3.0
    assert len(quantizer(torch.linspace(0, 3, 100)).unique()) <= 16
