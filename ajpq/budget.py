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
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ajpq.configtypes import Rate, config_type
from ajpq.cost import CostModel, measure_latency
from ajpq.graph import LayerKind, ModelGraph
from ajpq.importance import group_importance
from ajpq.policy import CompressionPolicy, LayerPolicy
from ajpq.quantize import FLOAT_BITS
from ajpq.validation import validate_policy

__all__ = [
    "BudgetKind",
    "Precision",
    "WallRules",
    "Budget",
    "LatencyModel",
    "fit_latency_model",
    "enforce_budget",
    "budget_value",
    "check_precision",
]

logger = logging.getLogger(__name__)

MIN_ACT_BITS = 2
QUANT_TOP_BITS = 8


class BudgetKind(str, enum.Enum):
    SIZE = "size"  # ratio of fp32 size
    BITOPS = "bitops"  # ratio of fp32 BitOps
    LATENCY = "latency"  # ceiling in milliseconds


class Precision(str, enum.Enum):
    """How bit widths may vary (``space.precision``); the budget wall keeps the mode."""

    MIXED = "mixed"  # per channel, by importance rank (the paper's channel controller)
    LAYER = "layer"  # one weight bit width per layer (HAQ)
    FIXED = "fixed"  # one weight and one activation bit width for the whole network


@dataclass(frozen=True)
class WallRules:
    """Which moves the budget wall may make: lower bits in the ``precision`` mode's unit (a
    channel, a layer, the network), prune channels, lower activation bits."""

    precision: Precision = Precision.MIXED
    prune: bool = True
    bits: bool = True


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

    def admits(self, compression_ratio: float, bitops_ratio: float) -> bool:
        """Whether a scored policy (its fp32 / size and BitOps ratios) meets a size or BitOps
        budget; a latency budget is not judged from these (always True)."""
        if self.kind is BudgetKind.SIZE:
            return 1.0 / max(compression_ratio, 1e-12) <= self.value * (1 + 1e-9)
        if self.kind is BudgetKind.BITOPS:
            return bitops_ratio <= self.value * (1 + 1e-9)
        return True


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


Evaluate = Callable[[tuple], tuple[float, float] | None]
Priority = Callable[[tuple[float, float]], float | None]


def _damage_per_saving(evaluated: tuple[float, float]) -> float | None:
    """A lowering move's key: estimated damage per unit of cost saved (None saves nothing)."""
    damage, saving = evaluated
    return damage / saving if saving > 0 else None


class _Squeezer:
    """Mutable policy state plus the greedy move queue. Moves follow ``rules``: a bit move
    lowers one channel (mixed), every kept channel of a layer (layer) or of the network
    (fixed); an activation move lowers one layer (the whole network when fixed)."""

    def __init__(
        self,
        policy: CompressionPolicy,
        costs: CostModel,
        importance: list[np.ndarray],
        metric: str,
        rules: WallRules,
    ) -> None:
        self.graph = costs.graph
        self.costs = costs
        self.importance = importance
        self.metric = metric
        self.rules = rules
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
            return self.costs.channel_size_bits(index, bits, wpc)
        macs = wpc * layer.output_positions
        if self.metric == "bitops":
            return bits * macs * self.act[index]
        return macs if bits > 0 else 0.0

    def _input_channel_cost(self, index: int, multiplicity: int) -> float:
        """What one input channel of layer ``index`` costs (a grouped conv's input channel
        reaches only its group's outputs: the average over a unit of one channel per group)."""
        layer = self.graph.layers[index]
        groups = 1 if layer.kind is LayerKind.DEPTHWISE_CONV else layer.groups
        taps = layer.kernel[0] * layer.kernel[1] * multiplicity / groups
        bits = self.bits[index]
        if self.metric == "size":
            return float(bits.sum()) * taps
        macs = taps * layer.output_positions
        if self.metric == "bitops":
            return float(bits.sum()) * macs * self.act[index]
        return float((bits > 0).sum()) * macs

    def _lower_channels(self, index: int, channels: np.ndarray) -> tuple[float, float] | None:
        """(damage, saving) of one bit fewer for ``channels`` of layer ``index``."""
        wpc = self.costs.weights_per_channel(index, self.pruned)
        damage = saving = 0.0
        for channel in channels:
            current = int(self.bits[index][channel])
            target = _next_bits(current)
            if target is None:
                return None
            saving += self._channel_cost(index, current, wpc) - self._channel_cost(
                index, target, wpc
            )
            damage += self.importance[index][channel] * (_error(target) - _error(current))
        return damage, saving

    def _lower_act(self, index: int) -> tuple[float, float] | None:
        current = self.act[index]
        target = _next_act(current)
        if target is None:
            return None
        layer = self.graph.layers[index]
        wpc = self.costs.weights_per_channel(index, self.pruned)
        bits = self.bits[index]
        saving = float(bits.sum()) * wpc * layer.output_positions * (current - target)
        kept = bits > 0
        damage = float(self.importance[index][kept].sum()) * (_error(target) - _error(current))
        return damage, saving

    @staticmethod
    def _add(parts: list[tuple[float, float] | None]) -> tuple[float, float] | None:
        if not parts or any(p is None for p in parts):
            return None
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    def _kept(self, index: int) -> np.ndarray:
        return np.flatnonzero(self.bits[index] > 0)

    # --- moves -----------------------------------------------------------------------------
    def _evaluate(self, move: tuple) -> tuple[float, float] | None:
        """(damage, saving) of a move in the current state, or None when no longer possible."""
        kind = move[0]
        if kind == "bit":
            _, index, channel, expected = move
            if int(self.bits[index][channel]) != expected:
                return None
            return self._lower_channels(index, np.array([channel]))
        if kind == "layerbit":
            _, index, expected = move
            kept = self._kept(index)
            if int(self.bits[index][kept[0]]) != expected:
                return None
            return self._lower_channels(index, kept)
        if kind == "netbit":
            return self._add(
                [
                    self._lower_channels(layer.index, self._kept(layer.index))
                    for layer in self.graph.layers
                ]
            )
        if kind == "netact":
            if self.metric != "bitops":
                return None
            return self._add([self._lower_act(layer.index) for layer in self.graph.layers])
        if kind == "prune":
            _, group_index, position = move
            group = self.graph.groups[group_index]
            unit = group.unit(position)  # one channel, or one per block of a grouped conv
            if self.bits[group.members[0]][unit[0]] == 0:
                return None
            if group.block_size - self.pruned[group_index] // group.blocks <= 1:
                return None
            saving = damage = 0.0
            for m in group.members:
                wpc = self.costs.weights_per_channel(m, self.pruned)
                for channel in group.member_unit(len(self.bits[m]), position):
                    current = int(self.bits[m][channel])
                    saving += self._channel_cost(m, current, wpc)
                    damage += self.importance[m][channel] * (1.0 - _error(current))
            for consumer, index_map in group.consumers.items():
                saving += self._input_channel_cost(consumer, index_map.shape[1]) * len(unit)
            if self.metric == "size":
                saving += self.costs.passenger_bits(group_index) * len(unit)
            return damage, saving
        _, index, expected = move
        if self.act[index] != expected or self.metric != "bitops":
            return None
        return self._lower_act(index)

    # --- the greedy queue (shared with ajpq.fill's raising moves) ---------------------------
    def _enqueue(self, move: tuple, evaluate: Evaluate, priority: Priority) -> None:
        evaluated = evaluate(move)
        key = None if evaluated is None else priority(evaluated)
        if key is not None:
            self.counter += 1
            heapq.heappush(self.heap, (key, self.counter, move))

    def _best_moves(self, evaluate: Evaluate, priority: Priority) -> Iterator[tuple[tuple, tuple]]:
        """Queued moves, best (lowest key) first, each with its evaluation. Costs change as
        moves apply, so a popped move is evaluated again: one that no longer counts is dropped,
        one that now ranks below the next queued move is queued again."""
        while self.heap:
            _, _, move = heapq.heappop(self.heap)
            evaluated = evaluate(move)
            key = None if evaluated is None else priority(evaluated)
            if key is None:
                continue
            if self.heap and key > self.heap[0][0] + 1e-12:
                self.counter += 1
                heapq.heappush(self.heap, (key, self.counter, move))
                continue
            yield move, evaluated

    def push(self, move: tuple) -> None:
        self._enqueue(move, self._evaluate, _damage_per_saving)

    def _lower(self, index: int, channels: np.ndarray) -> None:
        for channel in channels:
            self.bits[index][channel] = _next_bits(int(self.bits[index][channel]))

    def _apply(self, move: tuple) -> None:
        kind = move[0]
        if kind == "bit":
            _, index, channel, current = move
            self._lower(index, np.array([channel]))
            self.push(("bit", index, channel, int(self.bits[index][channel])))
            group = self.graph.layer_group[index]
            if self.rules.prune and self.graph.groups[group].prunable:
                self.push(("prune", group, channel % self.graph.groups[group].block_size))
        elif kind == "layerbit":
            _, index, _ = move
            kept = self._kept(index)
            self._lower(index, kept)
            self.push(("layerbit", index, int(self.bits[index][kept[0]])))
        elif kind == "netbit":
            for layer in self.graph.layers:
                self._lower(layer.index, self._kept(layer.index))
            self.push(("netbit",))
        elif kind == "netact":
            for layer in self.graph.layers:
                self.act[layer.index] = _next_act(self.act[layer.index])
            self.push(("netact",))
        elif kind == "prune":
            _, group_index, position = move
            group = self.graph.groups[group_index]
            unit = group.unit(position)
            for m in group.members:
                self.bits[m][group.member_unit(len(self.bits[m]), position)] = 0
            self.pruned[group_index] += len(unit)
        else:
            _, index, current = move
            self.act[index] = _next_act(current)
            self.push(("act", index, self.act[index]))

    def _initial_moves(self) -> None:
        precision = self.rules.precision
        if self.rules.bits:
            if precision is Precision.FIXED:
                self.push(("netbit",))
                self.push(("netact",))
            for layer in self.graph.layers:
                if precision is Precision.MIXED:
                    for channel, bits in enumerate(self.bits[layer.index]):
                        self.push(("bit", layer.index, channel, int(bits)))
                elif precision is Precision.LAYER:
                    self.push(
                        (
                            "layerbit",
                            layer.index,
                            int(self.bits[layer.index][self._kept(layer.index)[0]]),
                        )
                    )
                if precision is not Precision.FIXED:
                    self.push(("act", layer.index, self.act[layer.index]))
        if self.rules.prune:
            for group in self.graph.groups:
                if group.prunable:
                    for position in range(group.block_size):
                        self.push(("prune", group.index, position))

    def squeeze(self, target: float) -> float:
        self._initial_moves()
        total = self.total()
        if total <= target:
            return total
        for move, (_, saving) in self._best_moves(self._evaluate, _damage_per_saving):
            self._apply(move)
            total -= saving
            if move[0] in ("prune", "netbit", "netact"):
                total = self.total()  # many widths changed: recount exactly
            if total <= target:
                break
        return self.total()

    def policy(self, like: CompressionPolicy) -> CompressionPolicy:
        layers = [
            LayerPolicy(lp.name, tuple(int(b) for b in bits), act)
            for lp, bits, act in zip(like.layers, self.bits, self.act)
        ]
        return like.replace_layers(layers)


def _floor_policy(
    policy: CompressionPolicy,
    graph: ModelGraph,
    importance: list[np.ndarray],
    rules: WallRules = WallRules(),
) -> CompressionPolicy:
    """The cheapest policy the wall can reach from ``policy``: with pruning, one channel per
    prunable group; with bit moves, 1-bit weights and 2-bit inputs."""
    layers = []
    group_keep = {}
    if rules.prune:
        for group in graph.groups:
            if group.prunable:
                score = group_importance(graph, importance)[group.index]
                kept = np.array(policy.layers[group.members[0]].weight_bits) > 0
                by_position = np.where(kept, score, -np.inf).reshape(group.blocks, -1).sum(axis=0)
                group_keep[group.index] = int(np.argmax(by_position))
    for layer, lp in zip(graph.layers, policy.layers):
        bits = np.array(lp.weight_bits, dtype=np.int64)
        act = lp.act_bits
        if rules.bits:
            bits[bits > 0] = 1
            act = MIN_ACT_BITS
        group = graph.layer_group[layer.index]
        if group in group_keep:
            keep = graph.groups[group].member_unit(len(bits), group_keep[group])
            value = bits[keep]
            bits[:] = 0
            bits[keep] = value
        layers.append(LayerPolicy(lp.name, tuple(int(b) for b in bits), act))
    return policy.replace_layers(layers)


def check_precision(policy: CompressionPolicy, precision: Precision) -> None:
    """Raise ValueError when ``policy`` varies bits more finely than ``precision`` allows."""
    if precision is Precision.MIXED:
        return
    per_layer = [{b for b in lp.weight_bits if b > 0} for lp in policy.layers]
    for lp, widths in zip(policy.layers, per_layer):
        if len(widths) > 1:
            raise ValueError(
                f"layer {lp.name}: kept channels have bits {sorted(widths)}; {precision.value} "
                "precision gives every kept channel of a layer one bit width"
            )
    if precision is Precision.FIXED:
        widths = set().union(*per_layer)
        acts = {lp.act_bits for lp in policy.layers}
        if len(widths) > 1 or len(acts) > 1:
            raise ValueError(
                f"weight bits {sorted(widths)} / activation bits {sorted(acts)} in one policy; "
                "fixed precision uses one of each for the whole network"
            )


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
    rules: WallRules = WallRules(),
) -> CompressionPolicy:
    """Return ``policy`` unchanged if it meets ``budget``, else the cheapest-damage squeeze of it.

    ``importance`` is the per-layer channel importance (see :func:`ajpq.importance.layer_importance`).
    ``rules`` says which moves the wall may make; the squeezed policy keeps ``rules.precision``
    (``policy`` must already keep it). Raises ValueError naming the smallest reachable value
    when no policy can meet the budget.
    """
    graph = costs.graph
    validate_policy(policy, graph)
    check_precision(policy, rules.precision)
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
    floor = _floor_policy(policy, graph, importance, rules)
    smallest = budget_value(floor, budget, costs, latency_model)
    if smallest > budget.value:
        unit = "ms (predicted)" if budget.kind is BudgetKind.LATENCY else "of fp32"
        how = ", ".join(
            part
            for part, allowed in (
                ("every layer at 1-bit weights, 2-bit activations", rules.bits),
                ("one channel per prunable group", rules.prune),
            )
            if allowed
        )
        raise ValueError(
            f"{budget.kind.value} budget {budget.value:g} is below the smallest reachable value "
            f"{smallest:.4g} {unit} ({how or 'no move allowed'}); raise the budget"
        )
    squeezer = _Squeezer(policy, costs, importance, metric, rules)
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
