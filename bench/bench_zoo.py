"""Every zoo network as the analysis sees it: layers, coupling groups, prunable groups, and the
smallest reachable size (one channel per prunable group, 1-bit weights) as a share of fp32.
Random weights, 3x64x64 inputs (the digits/FMNIST CNNs at their own input sizes).

Usage: python bench/bench_zoo.py
"""

from __future__ import annotations

import logging
import time

import torch

from ajpq.core.analysis import analyze
from ajpq.core.budget import floor_policy
from ajpq.core.builder import uniform_policy
from ajpq.core.cost import CostModel
from ajpq.core.graph import LayerKind
from ajpq.core.importance import layer_importance
from ajpq.task.models import ModelName, build_model

SHAPE = {ModelName.DIGITS_CNN: (1, 16, 16), ModelName.FMNIST_CNN: (1, 28, 28)}


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="  %(message)s")
    print(
        "| network | layers | grouped convs | groups | prunable groups | smallest size (of fp32) | analyze s |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in ModelName:
        shape = SHAPE.get(name, (3, 64, 64))
        model = build_model(name, 10, shape[0]).eval()
        started = time.perf_counter()
        graph = analyze(model, torch.zeros(1, *shape))
        seconds = time.perf_counter() - started
        costs = CostModel(graph)
        base = uniform_policy(graph, 8, 8, name.value)
        floor = floor_policy(base, graph, layer_importance(model, graph))
        grouped = sum(layer.kind is LayerKind.GROUPED_CONV for layer in graph.layers)
        prunable = sum(group.prunable for group in graph.groups)
        print(
            f"| {name.value} | {len(graph.layers)} | {grouped} | {len(graph.groups)} | {prunable} "
            f"| {costs.cost(floor).size_ratio:.1e} | {seconds:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
