import io
import statistics
import time

import numpy as np
import pytest
import torch
from torch import nn

from ajpq.core.analysis import analyze
from ajpq.core.builder import uniform_policy
from ajpq.core.cost import (
    ACT_STATE_BITS,
    MAX_CALLS,
    CostModel,
    measure_latency,
    time_calls,
    time_forward,
    time_windows,
)
from ajpq.core.policy import LayerPolicy


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
    # the reference is the fp32 state dict as torch.save writes it
    reference = io.BytesIO()
    torch.save(model.state_dict(), reference)
    assert costs.fp32_size_bits == 8 * reference.tell()
    assert costs.fp32_macs == 4 * 18 * 16 + 3 * 4 * 16
    policy = uniform_policy(graph, 32, 32).replace_layers(
        [LayerPolicy("conv1", (8, 4, 0, 2), 8), LayerPolicy("conv2", (4, 4, 8), 6)]
    )
    cost = costs.cost(policy)
    # conv1: bits (8+4+2)*18, 3 scales; conv2: 3 kept input channels -> 3 weights/channel
    conv1_bits = (8 + 4 + 2) * 18 + 3 * 32
    conv2_bits = (4 + 4 + 8) * 3 + 3 * 32 + 3 * 32
    stored = conv1_bits + conv2_bits + 2 * ACT_STATE_BITS  # + both activation quantizers
    assert cost.size_bytes == pytest.approx((stored + costs.fixed_bits) / 8)
    conv1_bitops = (8 + 4 + 2) * 18 * 16 * 8
    conv2_bitops = (4 + 4 + 8) * 3 * 16 * 6
    assert cost.bitops == pytest.approx(conv1_bitops + conv2_bitops)
    assert cost.macs == 3 * 18 * 16 + 3 * 3 * 16
    assert cost.compression_ratio == pytest.approx(
        costs.fp32_size_bits / (stored + costs.fixed_bits)
    )
    assert cost.bitops_ratio == pytest.approx(
        (conv1_bitops + conv2_bitops) / (costs.fp32_macs * 1024)
    )


class FoldAndCarry(nn.Module):
    """conv1 -> bn1 folds; bn2 follows an add, so it stays and rides on the group's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return self.head(torch.relu(self.bn2(y + self.conv2(y))))


def test_folded_batchnorm_leaves_a_bias_and_an_unfolded_one_is_counted_per_channel():
    model = FoldAndCarry()
    graph = analyze(model, torch.zeros(1, 2, 4, 4))
    conv1, conv2, head = graph.layers
    assert conv1.bn == "bn1" and conv1.stores_bias and not conv1.has_bias
    assert conv2.bn is None and not conv2.stores_bias  # its output is added, not normalized
    group = graph.groups[graph.layer_group[conv1.index]]
    assert group.members == (0, 1) and group.passenger_bytes == 16  # bn2: 4 fp32 per channel
    assert graph.fixed_state_bytes == 8  # bn2.num_batches_tracked (bn1 folds away whole)
    costs = CostModel(graph)
    full = uniform_policy(graph, 8, 32)
    pruned = full.replace_layers(
        [
            LayerPolicy(lp.name, (8, 0, 8, 8) if lp.name != "head" else lp.weight_bits, 32)
            for lp in full.layers
        ]
    )
    saved = costs.cost(full).size_bytes - costs.cost(pruned).size_bytes
    # conv1's channel: 18 weights at 8 bits, scale, folded bias (26 bytes); conv2's channel and
    # its input from the pruned channel: 4 x 4 -> 3 x 3 weights at 8 bits and a scale (11);
    # head's input channel: 3 weights (3); bn2's row: weight, bias, mean, var (16)
    assert saved == pytest.approx(26 + 11 + 3 + 16)


def test_latency_is_positive_and_smaller_model_not_slower_by_much():
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)
    )
    latency = measure_latency(model, (3, 32, 32), batch_size=2, warmup=2, repeats=5)
    assert latency > 0 and np.isfinite(latency)


class _Sleeps(nn.Module):
    """A forward pass of a known length, that counts its calls."""

    def __init__(self, ms: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.ms, self.calls = ms, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.ms / 1000.0)
        return x


def test_time_forward_times_single_calls_after_warmup_and_reports_the_spread():
    model = _Sleeps(4.0)  # 7 calls take more than MIN_TIMED_MS: the repeats are enough
    timing = time_forward(model, (2,), warmup=4, repeats=7)
    assert model.calls == 4 + 7
    assert timing.median_ms >= 4.0  # a call is never shorter than its sleep
    assert timing.spread_ms >= 0.0 and timing.provider == "torch cpu"


def test_fast_calls_are_timed_until_they_add_up_to_the_minimum_window():
    calls = []
    times = time_calls(lambda: calls.append(time.sleep(0.001)), warmup=2, repeats=3, min_ms=12.0)
    assert len(calls) == 2 + len(times)
    assert len(times) > 3 and sum(times) >= 12.0  # past the repeats, until 12 ms were timed
    assert sum(times[:-1]) < 12.0  # and no further
    assert len(time_calls(lambda: None, warmup=0, repeats=3)) == MAX_CALLS  # capped


def test_time_windows_keeps_the_fastest_window():
    """A burst of load over the first window (every call 5 ms slower) is not the call's time:
    the fastest of three windows is kept."""
    calls: list[int] = []

    def call() -> None:
        calls.append(1)
        # the first window (3 warm-up calls and 5 timed ones, 25 ms) 5 ms a call, later 0.5 ms
        time.sleep(0.005 if len(calls) <= 8 else 0.0005)

    times = time_windows(call, windows=3, gap_s=0.0, warmup=3, repeats=5)
    assert len(calls) > 8 + 2 * (3 + 5)  # three windows, the later ones 20 ms of short calls
    assert len(times) >= 5 and statistics.median(times) < 2.5
    assert len(time_windows(call, windows=1, warmup=0, repeats=3)) >= 3
