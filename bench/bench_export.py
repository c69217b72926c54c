"""Size of the exported compressed file vs the fp32 model file, and a reload check.

For a small CNN and MobileNetV2 at 50% channel sparsity and 8 / 4 / 2-bit weights (8-bit
activations): bytes of ``export_compressed``'s file, of the fp32 state dict saved with
``torch.save``, of the weights as the cost model counts them, and the largest output difference
between the reloaded file and the materialized model. Usage: ``python bench/bench_export.py``
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ajpq import LayerKnobs, analyze, apply_policy, build_policy, load_compressed, materialize
from ajpq.export import export_compressed
from ajpq.models import build_model

MODELS = {"digits_cnn": (1, 16, 16), "mobilenet_v2": (3, 32, 32)}


def main() -> None:
    torch.manual_seed(0)
    print(
        f"{'model':<14}{'bits':>5}{'file KB':>10}{'fp32 KB':>10}{'ratio':>8}"
        f"{'cost-model KB':>15}{'max |diff|':>12}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for name, shape in MODELS.items():
            model = build_model(name, 10, shape[0]).eval()
            graph = analyze(model, torch.zeros(1, *shape))
            x = torch.randn(8, *shape)
            for bits in (8, 4, 2):
                knobs = [LayerKnobs(0.5, bits, 8)] * len(graph.layers)
                policy = build_policy(model, graph, knobs, model_name=name)
                simulated = apply_policy(model, policy, graph).train()
                with torch.no_grad():
                    simulated(torch.randn(16, *shape))  # calibrate activation ranges
                simulated.eval()
                path = Path(folder) / f"{name}-{bits}.pt"
                report = export_compressed(simulated, policy, path, 10, graph)
                with torch.no_grad():
                    diff = (load_compressed(path)(x) - materialize(simulated, policy)(x)).abs()
                print(
                    f"{name:<14}{bits:>5}{report.file_bytes / 1024:>10.1f}"
                    f"{report.fp32_file_bytes / 1024:>10.1f}{report.file_ratio:>8.1f}"
                    f"{report.policy_size_bytes / 1024:>15.1f}{diff.max().item():>12.1e}"
                )


if __name__ == "__main__":
    main()
