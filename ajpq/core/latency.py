"""The latency model behind a latency budget: predicted ms = intercept + slope x MACs, fitted
on the physically pruned (materialized) network."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.cost import CostModel, measure_latency
from ajpq.core.graph import ModelGraph
from ajpq.core.materialize import materialize
from ajpq.core.policy import CompressionPolicy
from ajpq.core.quantize import FLOAT_BITS

__all__ = ["LatencyModel", "fit_latency_model"]


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
