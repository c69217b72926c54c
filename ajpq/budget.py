"""Budgets and the action wall: push any policy inside a budget, deterministically.

After the agent's last step the policy is squeezed until it fits (HAQ and AMC's "action wall").
Moves are: one bit fewer for one channel (32 -> 8 for float channels), pruning one channel of a
coupling group (0 bits in every member), one bit fewer for a layer's activations (2 at the least).
Each move's damage is estimated from channel importance and the quantization error of its bits
(error ~ 2^-bits, 1 for a pruned channel); the move with the least damage per unit of cost saved
goes first, until the budget holds.
"""

from __future__ import annotations

import enum
import heapq
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ajpq.configtypes import Rate, config_type
from ajpq.cost import CostModel, measure_latency
from ajpq.graph import ModelGraph
from ajpq.policy import CompressionPolicy, LayerPolicy
from ajpq.quantize import FLOAT_BITS
from ajpq.validation import validate_policy

__all__ = [
    "BudgetKind",
    "Budget",
    "LatencyModel",
    "fit_latency_model",
    "enforce_budget",
    "budget_value",
]

logger = logging.getLogger(__name__)

MIN_ACT_BITS = 2
QUANT_TOP_BITS = 8


class BudgetKind(str, enum.Enum):
    SIZE = "size"  # ratio of fp32 size
    BITOPS = "bitops"  # ratio of fp32 BitOps
    LATENCY = "latency"  # ceiling in milliseconds


@config_type
class Budget:
    """What the compressed network must meet (``budget:``): a ratio of the fp32 network's size
    or BitOps in (0, 1], or a latency ceiling in milliseconds."""

    kind: BudgetKind = BudgetKind.SIZE
    value: Rate = 0.1

    def __post_init__(self) -> None:
        if self.kind is not BudgetKind.LATENCY and self.value > 1:
            raise ValueError(
                f"value: {self.value} must be in (0, 1] for a {self.kind.value} ratio of fp32"
            )

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind.value, "value": self.value}


@dataclass(frozen=True)
class LatencyModel:
    """Latency predicted as intercept + slope x MACs (fitted on the materialized model)."""

    intercept_ms: float
    ms_per_mac: float

    def predict(self, macs: float) -> float:
        return self.intercept_ms + self.ms_per_mac * macs


def fit_latency_model(
    model: nn.Module,
    graph: ModelGraph,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    sparsities: tuple[float, ...] = (0.0, 0.5, 0.75),
) -> LatencyModel:
    """Measure the physically pruned model at a few uniform sparsities and fit a line in MACs."""
    from ajpq.builder import LayerKnobs, build_policy
    from ajpq.materialize import materialize

    costs = CostModel(graph)
    macs, times = [], []
    for sparsity in sparsities:
        policy = build_policy(model, graph, LayerKnobs(sparsity, FLOAT_BITS, FLOAT_BITS))
        small = materialize(model, policy, graph)
        macs.append(costs.cost(policy).macs)
        times.append(measure_latency(small, graph.input_shape, batch_size, device))
    slope, intercept = np.polyfit(np.array(macs), np.array(times), 1)
    return LatencyModel(
        intercept_ms=float(max(intercept, 0.0)), ms_per_mac=float(max(slope, 1e-15))
    )


def _error(bits: int) -> float:
    if bits == 0:
        return 1.0
    if bits >= FLOAT_BITS:
        return 0.0
    return 2.0 ** (-bits)


def _next_bits(bits: int) -> int | None:
    if bits >= FLOAT_BITS:
        return QUANT_TOP_BITS
    if bits >= 2:
        return bits - 1
    return None


def _next_act(bits: int) -> int | None:
    if bits >= FLOAT_BITS:
        return QUANT_TOP_BITS
    return bits - 1 if bits > MIN_ACT_BITS else None


class _Squeezer:
    """Mutable policy state plus the greedy move queue."""

    def __init__(
        self, policy: CompressionPolicy, costs: CostModel, importance: list[np.ndarray], metric: str
    ) -> None:
        self.graph = costs.graph
        self.costs = costs
        self.importance = importance
        self.metric = metric
        self.bits = [np.array(lp.weight_bits, dtype=np.int64) for lp in policy.layers]
        self.act = [lp.act_bits for lp in policy.layers]
        self.pruned = costs.pruned_per_group(self.bits)
        self.heap: list[tuple[float, int, tuple]] = []
        self.counter = 0

    # --- cost accounting -------------------------------------------------------------------
    def total(self) -> float:
        size, bitops, macs = self.costs.cost_arrays(self.bits, self.act, self.pruned)
        return {"size": size, "bitops": bitops, "macs": macs}[self.metric]

    def _channel_cost(self, index: int, bits: int, wpc: int) -> float:
        layer = self.graph.layers[index]
        if self.metric == "size":
            scale = 32 if 0 < bits < FLOAT_BITS else 0
            bias = 32 if (layer.has_bias and bits > 0) else 0
            return bits * wpc + scale + bias
        macs = wpc * layer.output_positions
        if self.metric == "bitops":
            return bits * macs * self.act[index]
        return macs if bits > 0 else 0.0

    def _input_channel_cost(self, index: int, multiplicity: int) -> float:
        layer = self.graph.layers[index]
        taps = layer.kernel[0] * layer.kernel[1] * multiplicity
        bits = self.bits[index]
        if self.metric == "size":
            return float(bits.sum()) * taps
        macs = taps * layer.output_positions
        if self.metric == "bitops":
            return float(bits.sum()) * macs * self.act[index]
        return float((bits > 0).sum()) * macs

    # --- moves -----------------------------------------------------------------------------
    def _evaluate(self, move: tuple) -> tuple[float, float] | None:
        """(damage, saving) of a move in the current state, or None when no longer possible."""
        kind = move[0]
        if kind == "bit":
            _, index, channel, expected = move
            current = int(self.bits[index][channel])
            target = _next_bits(current)
            if current != expected or target is None:
                return None
            wpc = self.costs.weights_per_channel(index, self.pruned)
            saving = self._channel_cost(index, current, wpc) - self._channel_cost(
                index, target, wpc
            )
            damage = self.importance[index][channel] * (_error(target) - _error(current))
            return damage, saving
        if kind == "prune":
            _, group_index, channel = move
            group = self.graph.groups[group_index]
            if self.bits[group.members[0]][channel] == 0:
                return None
            if group.channels - self.pruned[group_index] <= 1:
                return None
            saving = damage = 0.0
            for m in group.members:
                wpc = self.costs.weights_per_channel(m, self.pruned)
                current = int(self.bits[m][channel])
                saving += self._channel_cost(m, current, wpc)
                damage += self.importance[m][channel] * (1.0 - _error(current))
            for consumer, index_map in group.consumers.items():
                saving += self._input_channel_cost(consumer, index_map.shape[1])
            return damage, saving
        _, index, expected = move
        current = self.act[index]
        target = _next_act(current)
        if current != expected or target is None or self.metric != "bitops":
            return None
        layer = self.graph.layers[index]
        wpc = self.costs.weights_per_channel(index, self.pruned)
        bits = self.bits[index]
        saving = float(bits.sum()) * wpc * layer.output_positions * (current - target)
        kept = bits > 0
        damage = float(self.importance[index][kept].sum()) * (_error(target) - _error(current))
        return damage, saving

    def push(self, move: tuple) -> None:
        evaluated = self._evaluate(move)
        if evaluated is None:
            return
        damage, saving = evaluated
        if saving <= 0:
            return
        self.counter += 1
        heapq.heappush(self.heap, (damage / saving, self.counter, move))

    def _apply(self, move: tuple) -> None:
        kind = move[0]
        if kind == "bit":
            _, index, channel, current = move
            target = _next_bits(current)
            self.bits[index][channel] = target
            self.push(("bit", index, channel, target))
            group = self.graph.layer_group[index]
            if self.graph.groups[group].prunable:
                self.push(("prune", group, channel))
        elif kind == "prune":
            _, group_index, channel = move
            for m in self.graph.groups[group_index].members:
                self.bits[m][channel] = 0
            self.pruned[group_index] += 1
        else:
            _, index, current = move
            target = _next_act(current)
            self.act[index] = target
            self.push(("act", index, target))

    def squeeze(self, target: float) -> float:
        for layer in self.graph.layers:
            for channel, bits in enumerate(self.bits[layer.index]):
                self.push(("bit", layer.index, channel, int(bits)))
            self.push(("act", layer.index, self.act[layer.index]))
        for group in self.graph.groups:
            if group.prunable:
                for channel in range(group.channels):
                    self.push(("prune", group.index, channel))
        total = self.total()
        while total > target and self.heap:
            ratio, _, move = heapq.heappop(self.heap)
            evaluated = self._evaluate(move)
            if evaluated is None or evaluated[1] <= 0:
                continue
            new_ratio = evaluated[0] / evaluated[1]
            if self.heap and new_ratio > self.heap[0][0] + 1e-12:
                self.counter += 1
                heapq.heappush(self.heap, (new_ratio, self.counter, move))
                continue
            self._apply(move)
            total -= evaluated[1]
            if move[0] == "prune":
                total = self.total()  # pruning changes consumers' widths: recount exactly
        return self.total()

    def policy(self, like: CompressionPolicy) -> CompressionPolicy:
        layers = [
            LayerPolicy(lp.name, tuple(int(b) for b in bits), act)
            for lp, bits, act in zip(like.layers, self.bits, self.act)
        ]
        return like.replace_layers(layers)


def _floor_policy(
    policy: CompressionPolicy, graph: ModelGraph, importance: list[np.ndarray]
) -> CompressionPolicy:
    """The cheapest policy reachable: 1 channel per prunable group, 1-bit weights, 2-bit inputs."""
    layers = []
    group_keep = {}
    for group in graph.groups:
        if group.prunable:
            score = np.mean([importance[m] for m in group.members], axis=0)
            group_keep[group.index] = int(np.argmax(score))
    for layer, lp in zip(graph.layers, policy.layers):
        bits = np.ones(layer.out_channels, dtype=np.int64)
        group = graph.layer_group[layer.index]
        if group in group_keep:
            bits[:] = 0
            bits[group_keep[group]] = 1
        layers.append(LayerPolicy(lp.name, tuple(int(b) for b in bits), MIN_ACT_BITS))
    return policy.replace_layers(layers)


def budget_value(
    policy: CompressionPolicy,
    budget: Budget,
    costs: CostModel,
    latency_model: LatencyModel | None = None,
) -> float:
    """The policy's value in the budget's unit (ratio of fp32, or predicted ms)."""
    cost = costs.cost(policy)
    if budget.kind is BudgetKind.SIZE:
        return cost.size_ratio
    if budget.kind is BudgetKind.BITOPS:
        return cost.bitops_ratio
    if latency_model is None:
        raise ValueError("a latency budget needs a latency model; fit one with fit_latency_model()")
    return latency_model.predict(cost.macs)


def enforce_budget(
    policy: CompressionPolicy,
    budget: Budget,
    costs: CostModel,
    importance: list[np.ndarray],
    latency_model: LatencyModel | None = None,
) -> CompressionPolicy:
    """Return ``policy`` unchanged if it meets ``budget``, else the cheapest-damage squeeze of it.

    ``importance`` is the per-layer channel importance (see :func:`ajpq.importance.layer_importance`).
    Raises ValueError naming the smallest reachable value when no policy can meet the budget.
    """
    graph = costs.graph
    validate_policy(policy, graph)
    if budget.kind is BudgetKind.SIZE:
        metric, target = "size", budget.value * costs.fp32_size_bits
    elif budget.kind is BudgetKind.BITOPS:
        metric, target = "bitops", budget.value * costs.fp32_bitops
    else:
        if latency_model is None:
            raise ValueError(
                "a latency budget needs a latency model; fit one with fit_latency_model()"
            )
        metric = "macs"
        target = (budget.value - latency_model.intercept_ms) / latency_model.ms_per_mac
    if budget_value(policy, budget, costs, latency_model) <= budget.value:
        return policy
    floor = _floor_policy(policy, graph, importance)
    smallest = budget_value(floor, budget, costs, latency_model)
    if smallest > budget.value:
        unit = "ms (predicted)" if budget.kind is BudgetKind.LATENCY else "of fp32"
        raise ValueError(
            f"{budget.kind.value} budget {budget.value:g} is below the smallest reachable value "
            f"{smallest:.4g} {unit} (every layer at 1-bit weights, 2-bit activations, one channel "
            "per prunable group); raise the budget"
        )
    squeezer = _Squeezer(policy, costs, importance, metric)
    final = squeezer.squeeze(target)
    result = squeezer.policy(policy)
    if final > target * (1 + 1e-9):
        raise ValueError(
            f"could not meet the {budget.kind.value} budget {budget.value:g}: reached "
            f"{budget_value(result, budget, costs, latency_model):.4g}"
        )
    logger.debug(
        "budget %s: squeezed to %.4g", budget, budget_value(result, budget, costs, latency_model)
    )
    return result
