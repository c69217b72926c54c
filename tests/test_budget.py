import numpy as np
import pytest
import torch

from ajpq.budget import Budget, LatencyModel, budget_value, enforce_budget
from ajpq.builder import LayerKnobs, build_policy, uniform_policy
from ajpq.cost import CostModel
from ajpq.graph import analyze
from ajpq.importance import layer_importance
from ajpq.models import SmallResNet
from ajpq.validation import validate_policy


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = SmallResNet(1, 10, width=8)
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    return model, graph, CostModel(graph), layer_importance(model, graph)


def test_random_policies_always_meet_their_budget(setup):
    model, graph, costs, importance = setup
    rng = np.random.default_rng(0)
    for trial in range(200):
        knobs = [
            LayerKnobs(
                float(rng.uniform(0, 0.8)),
                int(rng.choice([1, 2, 4, 6, 8, 32])),
                int(rng.choice([2, 4, 8, 32])),
                float(rng.uniform(0, 2)),
            )
            for _ in graph.layers
        ]
        policy = build_policy(model, graph, knobs)
        kind = ("size", "bitops")[trial % 2]
        budget = Budget(kind, float(rng.uniform(0.02, 0.3)))
        squeezed = enforce_budget(policy, budget, costs, importance)
        assert budget_value(squeezed, budget, costs) <= budget.value * (1 + 1e-9)
        validate_policy(squeezed, graph)
        # deterministic
        assert enforce_budget(policy, budget, costs, importance) == squeezed


def test_policy_inside_budget_is_unchanged(setup):
    model, graph, costs, importance = setup
    policy = uniform_policy(graph, 4, 8)
    assert enforce_budget(policy, Budget("size", 0.5), costs, importance) == policy


def test_squeeze_prefers_weak_channels(setup):
    model, graph, costs, importance = setup
    policy = uniform_policy(graph, 8, 8)
    squeezed = enforce_budget(policy, Budget("size", 0.08), costs, importance)
    for lp, imp in zip(squeezed.layers, importance):
        bits = np.array(lp.weight_bits)
        if len(set(bits)) > 1:
            # mean importance of channels at higher bits >= at lower bits
            hi = imp[bits == bits.max()].mean()
            lo = imp[bits == bits.min()].mean()
            assert hi >= lo - 1e-9


def test_unreachable_budget_names_smallest_value(setup):
    model, graph, costs, importance = setup
    with pytest.raises(ValueError, match=r"smallest reachable value [0-9.e-]+ of fp32"):
        enforce_budget(uniform_policy(graph, 8, 8), Budget("size", 1e-5), costs, importance)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\] for a size ratio"):
        Budget("size", 1.5)


def test_latency_budget_uses_latency_model(setup):
    model, graph, costs, importance = setup
    latency_model = LatencyModel(intercept_ms=0.1, ms_per_mac=1e-6)
    fp_ms = latency_model.predict(costs.fp32_macs)
    budget = Budget("latency", fp_ms * 0.5)
    squeezed = enforce_budget(uniform_policy(graph, 8, 8), budget, costs, importance, latency_model)
    assert budget_value(squeezed, budget, costs, latency_model) <= budget.value
    with pytest.raises(ValueError, match="latency model"):
        enforce_budget(uniform_policy(graph, 8, 8), budget, costs, importance)
