"""Latency predictors of a latency budget. A search measures a lookup table
(:mod:`ajpq.core.latency_table`); the straight line here (ms = intercept + slope x MACs, fitted
at a few uniform sparsities) is what earlier runs stored, loaded again on ``--resume``, and the
comparison the table's benchmark prints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.cost import CostModel, measure_latency
from ajpq.core.graph import ModelGraph
from ajpq.core.latency_table import LatencyTable
from ajpq.core.materialize import materialize
from ajpq.core.policy import CompressionPolicy
from ajpq.core.quantize import FLOAT_BITS

__all__ = ["LatencyModel", "LatencyPredictor", "fit_latency_model", "latency_from_dict"]


@dataclass(frozen=True)
class LatencyModel:
    """Latency predicted as intercept + slope x MACs (fitted on the materialized model)."""

    intercept_ms: float
    ms_per_mac: float

    def predict_macs(self, macs: float) -> float:
        return self.intercept_ms + self.ms_per_mac * macs

    def predict(self, policy: CompressionPolicy, costs: CostModel) -> float:
        """Predicted ms of ``policy`` (the same interface as the lookup table's)."""
        return self.predict_macs(costs.cost(policy).macs)

    def macs_for(self, ms: float, costs: CostModel) -> float:
        """The MACs that take ``ms``."""
        return (ms - self.intercept_ms) / self.ms_per_mac

    def to_dict(self) -> dict:
        return {"kind": "line", "intercept_ms": self.intercept_ms, "ms_per_mac": self.ms_per_mac}


LatencyPredictor = LatencyModel | LatencyTable  # what a latency budget predicts with


def latency_from_dict(data: dict) -> LatencyModel | LatencyTable:
    """The latency model a run's context stored (a line, or a lookup table)."""
    if data.get("kind") == "table":
        return LatencyTable.from_dict(data)
    return LatencyModel(float(data["intercept_ms"]), float(data["ms_per_mac"]))


def fit_latency_model(
    model: nn.Module,
    graph: ModelGraph,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    sparsities: tuple[float, ...] = (0.0, 0.5, 0.75),
    measure: Callable[[CompressionPolicy], float] | None = None,
    bits: int = FLOAT_BITS,
) -> LatencyModel:
    """Measure the model at a few uniform sparsities (weights and activations at ``bits``) and
    fit a line in MACs. ``measure(policy) -> ms`` times a policy (default: its physically
    pruned network in torch)."""
    costs = CostModel(graph)
    macs, times = [], []
    for sparsity in sparsities:
        policy = build_policy(model, graph, LayerKnobs(sparsity, bits, bits))
        macs.append(costs.cost(policy).macs)
        if measure is not None:
            times.append(measure(policy))
            continue
        small = materialize(model, policy, graph)
        times.append(measure_latency(small, graph.input_shape, batch_size, device))
    slope, intercept = np.polyfit(np.array(macs), np.array(times), 1)
    return LatencyModel(
        intercept_ms=float(max(intercept, 0.0)), ms_per_mac=float(max(slope, 1e-15))
    )
