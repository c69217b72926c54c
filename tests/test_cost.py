import numpy as np
import pytest
import torch
from torch import nn

from ajpq.builder import uniform_policy
from ajpq.cost import CostModel, measure_latency
from ajpq.graph import analyze
from ajpq.policy import LayerPolicy


class TwoConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)  # 4x4 out, 18 weights/channel
        self.conv2 = nn.Conv2d(4, 3, 1, bias=True)  # 4 weights/channel + bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


def test_size_bitops_macs_of_hand_built_policies():
    model = TwoConv()
    graph = analyze(model, torch.zeros(1, 2, 4, 4))
    costs = CostModel(graph)
    # fp32: conv1 4*18*32 bits, conv2 3*4*32 + 3*32 bias
    assert costs.fp32_size_bits == 4 * 18 * 32 + 3 * 4 * 32 + 3 * 32
    assert costs.fp32_macs == 4 * 18 * 16 + 3 * 4 * 16
    policy = uniform_policy(graph, 32, 32).replace_layers(
        [LayerPolicy("conv1", (8, 4, 0, 2), 8), LayerPolicy("conv2", (4, 4, 8), 6)]
    )
    cost = costs.cost(policy)
    # conv1: bits (8+4+2)*18, 3 scales; conv2: 3 kept input channels -> 3 weights/channel
    conv1_bits = (8 + 4 + 2) * 18 + 3 * 32
    conv2_bits = (4 + 4 + 8) * 3 + 3 * 32 + 3 * 32
    assert cost.size_bytes == pytest.approx((conv1_bits + conv2_bits) / 8)
    conv1_bitops = (8 + 4 + 2) * 18 * 16 * 8
    conv2_bitops = (4 + 4 + 8) * 3 * 16 * 6
    assert cost.bitops == pytest.approx(conv1_bitops + conv2_bitops)
    assert cost.macs == 3 * 18 * 16 + 3 * 3 * 16
    assert cost.compression_ratio == pytest.approx(costs.fp32_size_bits / (conv1_bits + conv2_bits))
    assert cost.bitops_ratio == pytest.approx(
        (conv1_bitops + conv2_bitops) / (costs.fp32_macs * 1024)
    )


def test_latency_is_positive_and_smaller_model_not_slower_by_much():
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)
    )
    latency = measure_latency(model, (3, 32, 32), batch_size=2, warmup=2, repeats=5)
    assert latency > 0 and np.isfinite(latency)
