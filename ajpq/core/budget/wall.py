"""The budget wall: push any policy inside a budget, deterministically.

After the agent's last step the policy is squeezed until it fits (HAQ and AMC's "action wall").
Moves are: one bit fewer for one channel (32 -> 8 for float channels), pruning one channel of a
coupling group (0 bits in every member), one bit fewer for a layer's activations (2 at the least).
Each move's damage is estimated from channel importance and the quantization error of its bits
(error ~ 2^-bits, 1 for a pruned channel); the move with the least damage per unit of cost saved
goes first, until the budget holds.
"""

from __future__ import annotations

import logging

import numpy as np

from ajpq.core.budget.state import PolicyState, quant_error
from ajpq.core.budget.types import (
    QUANT_TOP_BITS,
    Budget,
    BudgetKind,
    Precision,
    WallRules,
    budget_value,
    check_precision,
)
from ajpq.core.cost import CostModel
from ajpq.core.graph import ModelGraph
from ajpq.core.importance import group_importance
from ajpq.core.latency import LatencyPredictor
from ajpq.core.policy import CompressionPolicy, LayerPolicy
from ajpq.core.quantize import FLOAT_BITS
from ajpq.core.validation import validate_policy

__all__ = ["Squeezer", "enforce_budget", "floor_policy"]

logger = logging.getLogger(__name__)


def _damage_per_saving(evaluated: tuple[float, float]) -> float | None:
    """A lowering move's key: estimated damage per unit of cost saved (None saves nothing)."""
    damage, saving = evaluated
    return damage / saving if saving > 0 else None


class Squeezer(PolicyState):
    """The wall's lowering moves. Moves follow ``rules``: a bit move lowers one channel (mixed),
    every kept channel of a layer (layer) or of the network (fixed); an activation move lowers
    one layer (the whole network when fixed)."""

    def _next_bits(self, bits: int) -> int | None:
        """One weight bit fewer (a float channel goes to 8 bits), never below the minimum."""
        if bits >= FLOAT_BITS:
            return QUANT_TOP_BITS
        return bits - 1 if bits > self.rules.min_weight_bits else None

    def _next_act(self, bits: int) -> int | None:
        if bits >= FLOAT_BITS:
            return QUANT_TOP_BITS
        return bits - 1 if bits > self.rules.min_act_bits else None

    def _lower_channels(self, index: int, channels: np.ndarray) -> tuple[float, float] | None:
        """(damage, saving) of one bit fewer for ``channels`` of layer ``index``."""
        wpc = self.costs.weights_per_channel(index, self.pruned)
        damage = saving = 0.0
        for channel in channels:
            current = int(self.bits[index][channel])
            target = self._next_bits(current)
            if target is None:
                return None
            saving += self.channel_cost(index, current, wpc) - self.channel_cost(index, target, wpc)
            damage += self.importance[index][channel] * (quant_error(target) - quant_error(current))
        return damage, saving

    def _lower_act(self, index: int) -> tuple[float, float] | None:
        current = self.act[index]
        target = self._next_act(current)
        if target is None:
            return None
        layer = self.graph.layers[index]
        wpc = self.costs.weights_per_channel(index, self.pruned)
        bits = self.bits[index]
        saving = float(bits.sum()) * wpc * layer.output_positions * (current - target)
        kept = bits > 0
        damage = float(self.importance[index][kept].sum()) * (
            quant_error(target) - quant_error(current)
        )
        return damage, saving

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
            kept = self.kept(index)
            if int(self.bits[index][kept[0]]) != expected:
                return None
            return self._lower_channels(index, kept)
        if kind == "netbit":
            return self.add(
                [
                    self._lower_channels(layer.index, self.kept(layer.index))
                    for layer in self.graph.layers
                ]
            )
        if kind == "netact":
            if self.metric != "bitops":
                return None
            return self.add([self._lower_act(layer.index) for layer in self.graph.layers])
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
                    saving += self.channel_cost(m, current, wpc)
                    damage += self.importance[m][channel] * (1.0 - quant_error(current))
            for consumer, index_map in group.consumers.items():
                saving += self.input_channel_cost(consumer, index_map.shape[1]) * len(unit)
            if self.metric == "size":
                saving += self.costs.passenger_bits(group_index) * len(unit)
            return damage, saving
        _, index, expected = move
        if self.act[index] != expected or self.metric != "bitops":
            return None
        return self._lower_act(index)

    def push(self, move: tuple) -> None:
        self.enqueue(move, self._evaluate, _damage_per_saving)

    def _lower(self, index: int, channels: np.ndarray) -> None:
        for channel in channels:
            self.bits[index][channel] = self._next_bits(int(self.bits[index][channel]))

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
            kept = self.kept(index)
            self._lower(index, kept)
            self.push(("layerbit", index, int(self.bits[index][kept[0]])))
        elif kind == "netbit":
            for layer in self.graph.layers:
                self._lower(layer.index, self.kept(layer.index))
            self.push(("netbit",))
        elif kind == "netact":
            for layer in self.graph.layers:
                self.act[layer.index] = self._next_act(self.act[layer.index])
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
            self.act[index] = self._next_act(current)
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
                            int(self.bits[layer.index][self.kept(layer.index)[0]]),
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
        for move, (_, saving) in self.best_moves(self._evaluate, _damage_per_saving):
            self._apply(move)
            total -= saving
            if move[0] in ("prune", "netbit", "netact"):
                total = self.total()  # many widths changed: recount exactly
            if total <= target:
                break
        return self.total()


def floor_policy(
    policy: CompressionPolicy,
    graph: ModelGraph,
    importance: list[np.ndarray],
    rules: WallRules | None = None,
) -> CompressionPolicy:
    """The cheapest policy the wall can reach from ``policy``: with pruning, one channel per
    prunable group; with bit moves, the rules' smallest weight and activation bits."""
    rules = rules or WallRules()
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
            bits = np.where(bits > 0, np.minimum(bits, rules.min_weight_bits), 0)
            act = min(act, rules.min_act_bits)
        group = graph.layer_group[layer.index]
        if group in group_keep:
            keep = graph.groups[group].member_unit(len(bits), group_keep[group])
            value = bits[keep]
            bits[:] = 0
            bits[keep] = value
        layers.append(LayerPolicy(lp.name, tuple(int(b) for b in bits), act))
    return policy.replace_layers(layers)


def enforce_budget(
    policy: CompressionPolicy,
    budget: Budget,
    costs: CostModel,
    importance: list[np.ndarray],
    latency_model: LatencyPredictor | None = None,
    rules: WallRules | None = None,
) -> CompressionPolicy:
    """Return ``policy`` unchanged if it meets ``budget``, else the cheapest-damage squeeze of it.

    ``importance`` is the per-layer channel importance (see :func:`ajpq.core.importance.layer_importance`).
    ``rules`` says which moves the wall may make; the squeezed policy keeps ``rules.precision``
    (``policy`` must already keep it). Raises ValueError naming the smallest reachable value
    when no policy can meet the budget.
    """
    rules = rules or WallRules()
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
        target = latency_model.macs_for(budget.value, costs)
    if budget_value(policy, budget, costs, latency_model) <= budget.value:
        return policy
    floor = floor_policy(policy, graph, importance, rules)
    smallest = budget_value(floor, budget, costs, latency_model)
    if smallest > budget.value:
        unit = "ms (predicted)" if budget.kind is BudgetKind.LATENCY else "of fp32"
        how = ", ".join(
            part
            for part, allowed in (
                (
                    f"every layer at {rules.min_weight_bits}-bit weights, "
                    f"{rules.min_act_bits}-bit activations",
                    rules.bits,
                ),
                ("one channel per prunable group", rules.prune),
            )
            if allowed
        )
        raise ValueError(
            f"{budget.kind.value} budget {budget.value:g} is below the smallest reachable value "
            f"{smallest:.4g} {unit} ({how or 'no move allowed'}); raise the budget"
        )
    squeezer = Squeezer(policy, costs, importance, metric, rules)
    final = squeezer.squeeze(target)
    result = squeezer.policy(policy)
    # a latency table is not linear in MACs: squeeze the MACs further until the prediction fits
    for _ in range(20 if budget.kind is BudgetKind.LATENCY else 0):
        predicted = budget_value(result, budget, costs, latency_model)
        if predicted <= budget.value or final > target * (1 + 1e-9):
            break
        target = final * max(0.5, min(0.98, budget.value / predicted))
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
