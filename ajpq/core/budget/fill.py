"""Fill a budget: spend what a policy leaves of a size or BitOps budget on bits.

The budget wall (:mod:`ajpq.core.budget`) only squeezes. Under a size budget accuracy grows with
size, so a policy the agent made smaller than the budget would be scored smaller than it may be.
Filling is the wall in reverse: one bit more where it buys the most estimated accuracy per bit
of cost (the same damage model: error ~ 2^-bits, weighted by channel importance), never
unpruning, until no move fits.
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
from ajpq.core.latency import LatencyPredictor
from ajpq.core.policy import CompressionPolicy, LayerPolicy
from ajpq.core.quantize import FLOAT_BITS
from ajpq.core.validation import validate_policy

__all__ = ["fill_budget"]

logger = logging.getLogger(__name__)


def _gain_per_cost(evaluated: tuple[float, float]) -> float | None:
    """A raising move's key (lowest first): minus the estimated gain per unit of cost (None
    gains nothing)."""
    gain, cost = evaluated
    return -gain / max(cost, 1e-12) if gain > 0 else None


class Filler(PolicyState):
    """The wall's policy state and cost accounting, with raising moves instead of lowering."""

    def _raise_channels(
        self, index: int, channels: np.ndarray, top: int
    ) -> tuple[float, float] | None:
        """(gain, cost) of one bit more for ``channels`` of layer ``index`` (None at ``top``)."""
        wpc = self.costs.weights_per_channel(index, self.pruned)
        gain = cost = 0.0
        for channel in channels:
            current = int(self.bits[index][channel])
            if current <= 0 or current >= top:
                return None
            cost += self.channel_cost(index, current + 1, wpc) - self.channel_cost(
                index, current, wpc
            )
            gain += self.importance[index][channel] * (
                quant_error(current) - quant_error(current + 1)
            )
        return gain, cost

    def _raise_act(self, index: int, top: int) -> tuple[float, float] | None:
        current = self.act[index]
        if current >= top:
            return None
        layer = self.graph.layers[index]
        cost = 0.0
        if self.metric == "bitops":
            wpc = self.costs.weights_per_channel(index, self.pruned)
            cost = float(self.bits[index].sum()) * wpc * layer.output_positions
        kept = self.bits[index] > 0
        gain = float(self.importance[index][kept].sum()) * (
            quant_error(current) - quant_error(current + 1)
        )
        return gain, cost

    def _evaluate_raise(self, move: tuple, top_bits: int, top_act: int) -> tuple | None:
        kind = move[0]
        if kind == "up":
            return self._raise_channels(move[1], np.array([move[2]]), top_bits)
        if kind == "layerup":
            return self._raise_channels(move[1], self.kept(move[1]), top_bits)
        if kind == "netup":
            return self.add(
                [
                    self._raise_channels(layer.index, self.kept(layer.index), top_bits)
                    for layer in self.graph.layers
                ]
            )
        if kind == "netactup":
            return self.add([self._raise_act(layer.index, top_act) for layer in self.graph.layers])
        return self._raise_act(move[1], top_act)

    def _apply_raise(self, move: tuple) -> None:
        kind = move[0]
        if kind == "up":
            self.bits[move[1]][move[2]] += 1
        elif kind == "layerup":
            self.bits[move[1]][self.kept(move[1])] += 1
        elif kind == "netup":
            for layer in self.graph.layers:
                self.bits[layer.index][self.kept(layer.index)] += 1
        elif kind == "netactup":
            for layer in self.graph.layers:
                self.act[layer.index] += 1
        else:
            self.act[move[1]] += 1

    def _raise_moves(self) -> list[tuple]:
        precision = self.rules.precision
        if precision is Precision.FIXED:
            return [("netup",), ("netactup",)]
        moves: list[tuple] = [("actup", layer.index) for layer in self.graph.layers]
        for layer in self.graph.layers:
            if precision is Precision.MIXED:
                moves += [("up", layer.index, int(c)) for c in self.kept(layer.index)]
            elif len(self.kept(layer.index)):
                moves.append(("layerup", layer.index))
        return moves

    def fill(self, target: float, top_bits: int, top_act: int) -> float:
        """Raise bits (never unprune) while the budget holds: the move with the most gain per
        unit of cost first; a move that no longer fits is dropped (costs only grow)."""

        def evaluate(move: tuple) -> tuple[float, float] | None:
            return self._evaluate_raise(move, top_bits, top_act)

        for move in self._raise_moves():
            self.enqueue(move, evaluate, _gain_per_cost)
        total = self.total()
        for move, (_, cost) in self.best_moves(evaluate, _gain_per_cost):
            if total + cost > target * (1 - 1e-9):
                continue
            self._apply_raise(move)
            total += cost
            self.enqueue(move, evaluate, _gain_per_cost)
        return self.total()


def fill_budget(
    policy: CompressionPolicy,
    budget: Budget,
    costs: CostModel,
    importance: list[np.ndarray],
    top_weight_bits: int = QUANT_TOP_BITS,
    top_act_bits: int = QUANT_TOP_BITS,
    rules: WallRules | None = None,
    latency_model: LatencyPredictor | None = None,
) -> CompressionPolicy:
    """Spend what ``policy`` leaves of a size or BitOps ``budget`` on bits: one bit more for the
    kept channels (in ``rules.precision``'s unit) and activations where that buys the most
    estimated accuracy per unit of cost, up to ``top_weight_bits`` / ``top_act_bits``, while the
    budget holds. Pruned channels stay pruned and no width is lowered, so a policy that meets
    the budget still does. Under a size budget activation bits cost nothing and rise to the top.

    The wall only squeezes, so without this a search that under-spends a budget scores a
    smaller network than it may have. Under a latency budget (with ``latency_model``) every kept
    channel and activation rises to the tops at once when the prediction still meets it (bits of
    8 and fewer run the same kernels); ``rules.bits=False`` returns ``policy`` unchanged.
    """
    rules = rules or WallRules()
    validate_policy(policy, costs.graph)
    check_precision(policy, rules.precision)
    if not rules.bits:
        return policy
    if budget.kind is BudgetKind.LATENCY:
        if latency_model is None:
            return policy
        raised = _at_tops(policy, top_weight_bits, top_act_bits)
        fits = budget_value(raised, budget, costs, latency_model) <= budget.value
        return raised if fits else policy
    if budget_value(policy, budget, costs) > budget.value:
        raise ValueError(
            f"the policy does not meet the {budget.kind.value} budget {budget.value:g}; "
            "enforce_budget() it before filling"
        )
    metric = "size" if budget.kind is BudgetKind.SIZE else "bitops"
    target = budget.value * (costs.fp32_size_bits if metric == "size" else costs.fp32_bitops)
    filler = Filler(policy, costs, importance, metric, rules)
    filler.fill(target, top_weight_bits, top_act_bits)
    result = filler.policy(policy)
    if budget_value(result, budget, costs) > budget.value:  # guard the float accounting
        logger.warning("filling overshot the %s budget; keeping the unfilled policy", budget)
        return policy
    return result


def _at_tops(policy: CompressionPolicy, top_weight: int, top_act: int) -> CompressionPolicy:
    """Every kept quantized channel at ``top_weight`` bits (none lowered), quantized
    activations at ``top_act`` (float ones stay float)."""
    layers = []
    for lp in policy.layers:
        bits = tuple(max(b, top_weight) if 0 < b < FLOAT_BITS else b for b in lp.weight_bits)
        act = lp.act_bits if lp.act_bits >= FLOAT_BITS else max(lp.act_bits, top_act)
        layers.append(LayerPolicy(lp.name, bits, act))
    return policy.replace_layers(layers)
