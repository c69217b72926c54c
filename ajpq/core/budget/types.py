"""Budget types: what a compressed network must meet, and how finely bits may vary."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ajpq.core.configtypes import Rate, config_type
from ajpq.core.cost import CostModel
from ajpq.core.latency import LatencyPredictor
from ajpq.core.policy import CompressionPolicy

__all__ = [
    "BudgetKind",
    "Precision",
    "WallRules",
    "Budget",
    "budget_value",
    "check_precision",
    "MIN_ACT_BITS",
    "QUANT_TOP_BITS",
]

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
    channel, a layer, the network), prune channels, lower activation bits; never below
    ``min_weight_bits`` / ``min_act_bits`` (the search space's lower ends)."""

    precision: Precision = Precision.MIXED
    prune: bool = True
    bits: bool = True
    min_weight_bits: int = 1
    min_act_bits: int = MIN_ACT_BITS


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

    def admits(
        self, compression_ratio: float, bitops_ratio: float, latency_ms: float | None = None
    ) -> bool:
        """Whether a scored policy (its fp32 / size and BitOps ratios, its measured latency)
        meets the budget; a latency budget judges the measured latency (not measured: < 0 or
        None, admitted: the prediction kept it in)."""
        if self.kind is BudgetKind.SIZE:
            return 1.0 / max(compression_ratio, 1e-12) <= self.value * (1 + 1e-9)
        if self.kind is BudgetKind.BITOPS:
            return bitops_ratio <= self.value * (1 + 1e-9)
        return latency_ms is None or latency_ms < 0 or latency_ms <= self.value


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
    latency_model: LatencyPredictor | None = None,
) -> float:
    """The policy's value in the budget's unit (ratio of fp32, or predicted ms)."""
    cost = costs.cost(policy)
    if budget.kind is BudgetKind.SIZE:
        return cost.size_ratio
    if budget.kind is BudgetKind.BITOPS:
        return cost.bitops_ratio
    if latency_model is None:
        raise ValueError("a latency budget needs a latency model; fit one with fit_latency_model()")
    return latency_model.predict(policy, costs)
