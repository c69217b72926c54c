"""The budget wall's and the filler's shared state: a policy's bits as mutable arrays, its cost
in one metric, and a greedy move queue (lowest key first, re-evaluated when popped).

:class:`PolicyState` is public so that moves in either direction (the wall's squeeze in
:mod:`ajpq.core.budget.wall`, the filler's raise in :mod:`ajpq.core.budget.fill`) subclass it
instead of reaching into each other's private names.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

import numpy as np

from ajpq.core.budget.types import WallRules
from ajpq.core.cost import CostModel
from ajpq.core.graph import LayerKind
from ajpq.core.policy import CompressionPolicy, LayerPolicy
from ajpq.core.quantize import FLOAT_BITS

__all__ = ["PolicyState", "Evaluate", "Priority", "quant_error"]

Evaluate = Callable[[tuple], tuple[float, float] | None]
Priority = Callable[[tuple[float, float]], float | None]


def quant_error(bits: int) -> float:
    """The damage model's error of a channel at ``bits`` (1 when pruned, 0 in float, 2^-bits)."""
    if bits == 0:
        return 1.0
    if bits >= FLOAT_BITS:
        return 0.0
    return 2.0 ** (-bits)


class PolicyState:
    """Mutable policy state (weight bits per channel, activation bits per layer, pruned units
    per group) with cost accounting in one ``metric`` (size, bitops or macs) and the greedy
    move queue. Subclasses define the moves."""

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

    def total(self) -> float:
        size, bitops, macs = self.costs.cost_arrays(self.bits, self.act, self.pruned)
        return {"size": size, "bitops": bitops, "macs": macs}[self.metric]

    def channel_cost(self, index: int, bits: int, wpc: int) -> float:
        layer = self.graph.layers[index]
        if self.metric == "size":
            return self.costs.channel_size_bits(index, bits, wpc)
        macs = wpc * layer.output_positions
        if self.metric == "bitops":
            return bits * macs * self.act[index]
        return macs if bits > 0 else 0.0

    def input_channel_cost(self, index: int, multiplicity: int) -> float:
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

    @staticmethod
    def add(parts: list[tuple[float, float] | None]) -> tuple[float, float] | None:
        if not parts or any(p is None for p in parts):
            return None
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    def kept(self, index: int) -> np.ndarray:
        return np.flatnonzero(self.bits[index] > 0)

    def enqueue(self, move: tuple, evaluate: Evaluate, priority: Priority) -> None:
        evaluated = evaluate(move)
        key = None if evaluated is None else priority(evaluated)
        if key is not None:
            self.counter += 1
            heapq.heappush(self.heap, (key, self.counter, move))

    def best_moves(self, evaluate: Evaluate, priority: Priority) -> Iterator[tuple[tuple, tuple]]:
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

    def policy(self, like: CompressionPolicy) -> CompressionPolicy:
        layers = [
            LayerPolicy(lp.name, tuple(int(b) for b in bits), act)
            for lp, bits, act in zip(like.layers, self.bits, self.act)
        ]
        return like.replace_layers(layers)
