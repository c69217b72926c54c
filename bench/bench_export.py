"""The reported size is the file: every zoo network, random mixed policies, exported.

For each zoo network (random weights, 3x64x64 inputs; the digits/FMNIST CNNs at their own input
sizes) and two random policies (sparsity 0..0.6, weight bits 1..8 or float, activations 4/8/32
bits, spread 0..2): bytes of ``export_compressed``'s file, ``size_bytes`` of the cost model, the
difference, the fp32 state dict file, the ratio of the two files, and the largest output
difference between the reloaded file and the materialized model (0: bit for bit).

Usage: ``python bench/bench_export.py [network ...]``
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ajpq import LayerKnobs, analyze, apply_policy, build_policy, load_compressed, materialize
from ajpq.core.cost import CostModel
from ajpq.export.packed import export_compressed
from ajpq.task.models import ModelName, build_model

SHAPE = {ModelName.DIGITS_CNN: (1, 16, 16), ModelName.FMNIST_CNN: (1, 28, 28)}


def main(names: list[str]) -> None:
    logging.basicConfig(level=logging.ERROR)
    torch.manual_seed(0)
    print(
        "| network | policy | file KB | size_bytes KB | file - size | fp32 file KB | file ratio "
        "| max abs(loaded - materialized) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in names or [m.value for m in ModelName]:
            shape = SHAPE.get(ModelName(name), (3, 64, 64))
            model = build_model(name, 10, shape[0]).eval()
            graph = analyze(model, torch.zeros(1, *shape))
            costs = CostModel(graph)
            rng = np.random.default_rng(0)
            x = torch.randn(4, *shape)
            for trial in range(2):
                knobs = [
                    LayerKnobs(
                        float(rng.uniform(0, 0.6)),
                        int(rng.choice([1, 2, 3, 4, 6, 8, 32])),
                        int(rng.choice([4, 8, 32])),
                        float(rng.uniform(0, 2)),
                    )
                    for _ in graph.layers
                ]
                policy = build_policy(model, graph, knobs, model_name=name)
                simulated = apply_policy(model, policy, graph).train()
                with torch.no_grad():
                    simulated(torch.randn(8, *shape))  # calibrate activation ranges
                simulated.eval()
                path = Path(folder) / f"{name}-{trial}.pt"
                report = export_compressed(simulated, policy, path, 10, graph)
                size = costs.cost(policy).size_bytes
                with torch.no_grad():
                    diff = (load_compressed(path)(x) - materialize(simulated, policy)(x)).abs()
                print(
                    f"| {name} | {trial} | {report.file_bytes / 1024:.1f} | {size / 1024:.1f} | "
                    f"{(report.file_bytes - size) / size:+.2%} | "
                    f"{report.fp32_file_bytes / 1024:.0f} | {report.file_ratio:.1f}x | "
                    f"{diff.max().item():.1e} |"
                )


if __name__ == "__main__":
    main(sys.argv[1:])
