"""Costs of a policy: compressed size, BitOps, MACs, and measured latency.

Size is what :func:`ajpq.export.packed.export_compressed` writes: every kept channel's weights at its
bit width (input channels removed by upstream pruning are not counted), one fp32 scale per
quantized channel, an fp32 bias per kept channel where the layer has one or a BatchNorm folds
into it, the state of other modules pruned with the channels (an unfolded BatchNorm), the state
nothing prunes, the activation quantizers, and the file format's own bytes. The reference is
the fp32 model's state dict as torch.save writes it. BitOps = MACs x weight bits x activation
bits, per channel.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ajpq.core.graph import LayerKind, ModelGraph
from ajpq.core.policy import CompressionPolicy
from ajpq.core.quantize import FLOAT_BITS
from ajpq.core.validation import validate_policy

__all__ = [
    "PolicyCost",
    "CostModel",
    "Timing",
    "measure_latency",
    "time_calls",
    "time_windows",
    "time_forward",
    "MIN_TIMED_MS",
]

SCALE_BITS = 32
BIAS_BITS = 32
ACT_STATE_BITS = 48  # an activation quantizer's max |x| (fp32) and two flags
# the compressed file's format: torch.save's zip entries and the zlib-compressed header (policy,
# index, shapes); measured on the zoo by bench/bench_export.py, which prints file vs size
FORMAT_BASE_BYTES = 850
FORMAT_PER_LAYER_BYTES = 220
# a timing goes on past its repeats until its calls add up to this (at most MAX_CALLS calls): a
# 0.01 ms layer timed 30 times is a 0.3 ms window that one preemption spoils
MIN_TIMED_MS = 20.0
MAX_CALLS = 2000


@dataclass(frozen=True)
class PolicyCost:
    size_bytes: float
    fp32_size_bytes: float
    bitops: float
    fp32_bitops: float
    macs: float
    fp32_macs: float

    @property
    def compression_ratio(self) -> float:
        """fp32 size / compressed size (higher is smaller)."""
        return self.fp32_size_bytes / self.size_bytes

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / self.fp32_size_bytes

    @property
    def bitops_ratio(self) -> float:
        """compressed BitOps / fp32 BitOps (lower is cheaper)."""
        return self.bitops / self.fp32_bitops

    def to_dict(self) -> dict[str, float]:
        data = asdict(self)
        data.update(
            compression_ratio=self.compression_ratio,
            size_ratio=self.size_ratio,
            bitops_ratio=self.bitops_ratio,
        )
        return data


class CostModel:
    """Closed-form costs of policies for one model graph (no forward pass needed)."""

    def __init__(self, graph: ModelGraph) -> None:
        self.graph = graph
        # per layer: list of (group index, input channels per group channel) it consumes; after
        # a split a consumer reads only some parts (a mean below 1, exact per pruned unit)
        self.inputs_from: list[list[tuple[int, float]]] = [[] for _ in graph.layers]
        for group in graph.groups:
            for consumer, index_map in group.consumers.items():
                per_channel = float((index_map >= 0).sum()) / max(1, index_map.shape[0])
                self.inputs_from[consumer].append((group.index, per_channel))
        self.format_bits = 8.0 * (FORMAT_BASE_BYTES + FORMAT_PER_LAYER_BYTES * len(graph.layers))
        self.fixed_bits = 8.0 * graph.fixed_state_bytes + self.format_bits
        full = [np.full(layer.out_channels, FLOAT_BITS) for layer in graph.layers]
        fp32 = self.cost_arrays(full, [FLOAT_BITS] * len(graph.layers), [0] * len(graph.groups))
        self.fp32_size_bits, self.fp32_bitops, self.fp32_macs = fp32
        if graph.fp32_file_bytes:  # the file a user compares with
            self.fp32_size_bits = 8.0 * graph.fp32_file_bytes

    def kept_inputs(self, layer_index: int, pruned_per_group: list[int]) -> int:
        layer = self.graph.layers[layer_index]
        removed = sum(pruned_per_group[g] * k for g, k in self.inputs_from[layer_index])
        return layer.in_channels - int(round(removed))

    def weights_per_channel(self, layer_index: int, pruned_per_group: list[int]) -> int:
        layer = self.graph.layers[layer_index]
        taps = layer.kernel[0] * layer.kernel[1]
        if layer.kind is LayerKind.DEPTHWISE_CONV:
            return taps
        return self.kept_inputs(layer_index, pruned_per_group) // layer.groups * taps

    def layer_size_bits(self, index: int, bits: np.ndarray, wpc: int) -> float:
        layer = self.graph.layers[index]
        kept = bits > 0
        quantized = kept & (bits < FLOAT_BITS)
        bias = BIAS_BITS * int(kept.sum()) if layer.stores_bias else 0
        return float(bits.sum() * wpc + SCALE_BITS * quantized.sum() + bias)

    def channel_size_bits(self, index: int, bits: int, wpc: int) -> float:
        """Stored bits of one output channel of layer ``index`` at ``bits`` (0: pruned)."""
        if bits <= 0:
            return 0.0
        scale = SCALE_BITS if bits < FLOAT_BITS else 0
        bias = BIAS_BITS if self.graph.layers[index].stores_bias else 0
        return float(bits * wpc + scale + bias)

    def passenger_bits(self, group_index: int) -> float:
        """Bits other modules store per channel of the group (removed when it is pruned)."""
        return 8.0 * self.graph.groups[group_index].passenger_bytes

    def layer_cost_arrays(
        self, bits: list[np.ndarray], act_bits: list[int], pruned_per_group: list[int]
    ) -> np.ndarray:
        """Per layer (size bits, BitOps, MACs), shape (layers, 3)."""
        table = np.zeros((len(self.graph.layers), 3), dtype=np.float64)
        for layer in self.graph.layers:
            b = bits[layer.index]
            wpc = self.weights_per_channel(layer.index, pruned_per_group)
            per_channel_macs = wpc * layer.output_positions
            act_state = ACT_STATE_BITS if act_bits[layer.index] < FLOAT_BITS else 0
            table[layer.index] = (
                self.layer_size_bits(layer.index, b, wpc) + act_state,
                float(b.sum()) * per_channel_macs * act_bits[layer.index],
                float((b > 0).sum()) * per_channel_macs,
            )
        for group, pruned in zip(self.graph.groups, pruned_per_group):
            kept = group.channels - pruned
            table[group.members[0], 0] += self.passenger_bits(group.index) * kept
        return table

    def cost_arrays(
        self, bits: list[np.ndarray], act_bits: list[int], pruned_per_group: list[int]
    ) -> tuple[float, float, float]:
        size, bitops, macs = self.layer_cost_arrays(bits, act_bits, pruned_per_group).sum(axis=0)
        return float(size) + self.fixed_bits, float(bitops), float(macs)

    def layer_costs(self, policy: CompressionPolicy) -> np.ndarray:
        """Per layer (size bits, BitOps, MACs) of ``policy``, shape (layers, 3)."""
        bits = [np.asarray(lp.weight_bits, dtype=np.int64) for lp in policy.layers]
        return self.layer_cost_arrays(
            bits, [lp.act_bits for lp in policy.layers], self.pruned_per_group(bits)
        )

    def pruned_per_group(self, bits: list[np.ndarray]) -> list[int]:
        return [int((bits[g.members[0]] == 0).sum()) for g in self.graph.groups]

    def cost(self, policy: CompressionPolicy) -> PolicyCost:
        validate_policy(policy, self.graph)  # bits, layers, channels: one line naming the fix
        bits = [np.asarray(lp.weight_bits, dtype=np.int64) for lp in policy.layers]
        size, bitops, macs = self.cost_arrays(
            bits, [lp.act_bits for lp in policy.layers], self.pruned_per_group(bits)
        )
        return PolicyCost(
            size_bytes=size / 8,
            fp32_size_bytes=self.fp32_size_bits / 8,
            bitops=bitops,
            fp32_bitops=self.fp32_bitops,
            macs=macs,
            fp32_macs=self.fp32_macs,
        )


@dataclass(frozen=True)
class Timing:
    """Median and interquartile spread (ms) of one call, and what ran it."""

    median_ms: float
    spread_ms: float
    provider: str

    @classmethod
    def of(cls, times_ms: list[float], provider: str) -> Timing:
        """The median and interquartile spread of single calls' times."""
        quartiles = statistics.quantiles(times_ms, n=4) if len(times_ms) > 1 else [times_ms[0]] * 3
        return cls(statistics.median(times_ms), quartiles[2] - quartiles[0], provider)


def time_calls(
    call: Callable[[], object], warmup: int = 5, repeats: int = 20, min_ms: float = MIN_TIMED_MS
) -> list[float]:
    """Single calls' wall times (ms) after ``warmup`` calls: at least ``repeats`` of them, and
    more until they add up to ``min_ms`` (at most :data:`MAX_CALLS`)."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_ms and len(times) < MAX_CALLS):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def time_windows(
    call: Callable[[], object],
    windows: int = 1,
    gap_s: float = 0.0,
    warmup: int = 5,
    repeats: int = 20,
) -> list[float]:
    """The single calls' times (ms) of the fastest of ``windows`` timing windows
    (:func:`time_calls`, by median), ``gap_s`` apart. Load on a machine comes in bursts that slow
    every call inside them; the fastest window is the call's own time, as ``timeit`` keeps the
    fastest of its repeats."""
    best: list[float] = []
    for number in range(max(1, windows)):
        if number:
            time.sleep(gap_s)
        times = time_calls(call, warmup, repeats)
        if not best or statistics.median(times) < statistics.median(best):
            best = times
    return best


def time_forward(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    device: torch.device | str | None = None,
    warmup: int = 5,
    repeats: int = 20,
) -> Timing:
    """One forward pass timed after ``warmup`` passes (CUDA synchronised after each): median
    and interquartile spread over at least ``repeats`` single passes (:func:`time_calls`)."""
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn((batch_size, *input_shape), device=device)
    cuda = device.type == "cuda"

    def forward() -> None:
        model(x)
        if cuda:
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize(device)
        times = time_calls(forward, warmup, repeats)
    return Timing.of(times, f"torch {device.type}")


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    device: torch.device | str | None = None,
    warmup: int = 5,
    repeats: int = 20,
) -> float:
    """Median wall time in milliseconds of one forward pass, after ``warmup`` passes
    (:func:`time_forward`)."""
    return time_forward(model, input_shape, batch_size, device, warmup, repeats).median_ms
