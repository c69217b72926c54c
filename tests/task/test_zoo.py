"""Every zoo network: analyze, a random pruning policy simulates = materializes, budgets are met,
the exported file reloads to what materialize returns (small inputs, random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ajpq.core.analysis import analyze
from ajpq.core.apply import apply_policy
from ajpq.core.budget import Budget, enforce_budget
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.cost import CostModel
from ajpq.core.importance import layer_importance
from ajpq.core.materialize import materialize
from ajpq.export.packed import export_compressed, load_compressed
from ajpq.task.models import ModelName, build_model

SHAPE = {ModelName.DIGITS_CNN: (1, 16, 16), ModelName.FMNIST_CNN: (1, 28, 28)}
# every zoo network prunes (ShuffleNet inside its branches; what passes the shuffle is refused)
QUANTIZE_ONLY: set[ModelName] = set()


# vgg11_bn's 4096-wide classifier (120 M weights) makes packing take a minute here; it is
# covered by tests/test_train_and_models.py and bench/bench_zoo.py
# shufflenet_v2_x1_0 analyses in about a minute here (Torch-Pruning maps its channel indices
# element by element), twice with the reload: two minutes of the default suite. Its pruning is
# covered by tests/core/test_pruned.py and test_topologies.py; the export round trip runs in
# `make test-slow`.
NETWORKS = [
    pytest.param(m, marks=pytest.mark.slow) if m is ModelName.SHUFFLENET_V2_X1_0 else m
    for m in ModelName
    if m is not ModelName.VGG11_BN
]


@pytest.mark.parametrize("name", NETWORKS, ids=lambda m: m.value)
def test_zoo_network_compresses_and_exports(name, tmp_path):
    torch.manual_seed(0)
    shape = SHAPE.get(name, (3, 64, 64))
    model = build_model(name, 10, shape[0]).eval()
    graph = analyze(model, torch.zeros(1, *shape))
    prunable = [g for g in graph.groups if g.prunable]
    assert bool(prunable) == (name not in QUANTIZE_ONLY)
    rng = np.random.default_rng(0)
    knobs = [LayerKnobs(float(rng.uniform(0.1, 0.5)), 32, 32) for _ in graph.layers]
    policy = build_policy(model, graph, knobs, model_name=name.value)
    simulated = apply_policy(model, policy, graph).eval()
    small = materialize(simulated, policy).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        reference = simulated(x)
        scale = max(reference.abs().max().item(), 1e-6)
        assert (small(x) - reference).abs().max().item() <= 1e-4 * scale
    params = sum(p.numel() for p in small.parameters())
    if prunable:
        assert params < sum(p.numel() for p in model.parameters())
    # a size budget is met after the squeeze, and the file reloads to exactly the network
    costs = CostModel(graph)
    squeezed = enforce_budget(
        build_policy(model, graph, LayerKnobs(0.2, 8, 32), model_name=name.value),
        Budget("size", 0.15),
        costs,
        layer_importance(model, graph),
    )
    assert costs.cost(squeezed).size_ratio <= 0.15 + 1e-9
    report = export_compressed(model, squeezed, tmp_path / "m.pt", 10, graph)
    loaded = load_compressed(report.path)
    expected = materialize(model, squeezed, graph).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected(x))
