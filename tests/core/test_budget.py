import numpy as np
import pytest
import torch

from ajpq.core.analysis import analyze
from ajpq.core.budget import (
    Budget,
    LatencyModel,
    Precision,
    WallRules,
    budget_value,
    check_precision,
    enforce_budget,
)
from ajpq.core.budget.fill import fill_budget
from ajpq.core.builder import LayerKnobs, build_policy, uniform_policy
from ajpq.core.cost import CostModel
from ajpq.core.importance import layer_importance
from ajpq.core.policy import LayerPolicy
from ajpq.core.validation import validate_policy
from ajpq.task.models import SmallResNet


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
        budget = Budget(kind, float(rng.uniform(0.05, 0.3)))
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
    fp_ms = latency_model.predict_macs(costs.fp32_macs)
    budget = Budget("latency", fp_ms * 0.5)
    squeezed = enforce_budget(uniform_policy(graph, 8, 8), budget, costs, importance, latency_model)
    assert budget_value(squeezed, budget, costs, latency_model) <= budget.value
    with pytest.raises(ValueError, match="latency model"):
        enforce_budget(uniform_policy(graph, 8, 8), budget, costs, importance)


@pytest.mark.parametrize("precision", [Precision.LAYER, Precision.FIXED])
def test_the_wall_keeps_the_precision_mode(setup, precision):
    model, graph, costs, importance = setup
    rng = np.random.default_rng(1)
    rules = WallRules(precision)
    network_bits = int(rng.choice([4, 8, 32]))
    for trial in range(30):
        knobs = [
            LayerKnobs(
                float(rng.uniform(0, 0.6)),
                network_bits if precision is Precision.FIXED else int(rng.choice([2, 4, 8, 32])),
                8 if precision is Precision.FIXED else int(rng.choice([4, 8, 32])),
                0.0,
            )
            for _ in graph.layers
        ]
        policy = build_policy(model, graph, knobs)
        budget = Budget(("size", "bitops")[trial % 2], float(rng.uniform(0.05, 0.3)))
        squeezed = enforce_budget(policy, budget, costs, importance, rules=rules)
        assert budget_value(squeezed, budget, costs) <= budget.value * (1 + 1e-9)
        check_precision(squeezed, precision)
        widths = [{b for b in lp.weight_bits if b} for lp in squeezed.layers]
        assert all(len(w) == 1 for w in widths)  # one bit width per layer
        if precision is Precision.FIXED:  # and one for the network, activations too
            assert len(set().union(*widths)) == 1
            assert len({lp.act_bits for lp in squeezed.layers}) == 1
    with pytest.raises(ValueError, match=f"{precision.value} precision|fixed precision uses"):
        enforce_budget(
            build_policy(model, graph, LayerKnobs(0.0, 4, 8, 2.0)),
            budget,
            costs,
            importance,
            rules=rules,
        )


def test_walls_that_only_prune_or_only_lower_bits(setup):
    model, graph, costs, importance = setup
    policy = uniform_policy(graph, 8, 8)
    budget = Budget("size", 0.12)
    pruned = enforce_budget(policy, budget, costs, importance, rules=WallRules(bits=False))
    assert {b for lp in pruned.layers for b in lp.weight_bits} == {0, 8}
    lowered = enforce_budget(policy, budget, costs, importance, rules=WallRules(prune=False))
    assert 0 not in {b for lp in lowered.layers for b in lp.weight_bits}
    with pytest.raises(ValueError, match=r"one channel per prunable group\); raise"):
        enforce_budget(policy, Budget("size", 0.02), costs, importance, rules=WallRules(bits=False))


@pytest.mark.parametrize("precision", list(Precision))
@pytest.mark.parametrize("kind", ["size", "bitops"])
def test_fill_spends_the_leftover_budget_on_bits(setup, precision, kind):
    model, graph, costs, importance = setup
    rng = np.random.default_rng(1)
    rules = WallRules(precision)
    budget = Budget(kind, 0.15)
    for _ in range(10):
        first = int(rng.integers(2, 5))
        knobs = [
            LayerKnobs(
                float(rng.uniform(0, 0.6)),
                first if precision is Precision.FIXED else int(rng.integers(2, 5)),
                4,
                float(rng.uniform(0, 2)) if precision is Precision.MIXED else 0.0,
            )
            for _ in graph.layers
        ]
        policy = enforce_budget(
            build_policy(model, graph, knobs), budget, costs, importance, rules=rules
        )
        filled = fill_budget(policy, budget, costs, importance, 8, 8, rules)
        before = budget_value(policy, budget, costs)
        after = budget_value(filled, budget, costs)
        assert after <= budget.value * (1 + 1e-9)
        check_precision(filled, precision)
        validate_policy(filled, graph)
        for old, new in zip(policy.layers, filled.layers):
            old_bits, new_bits = np.array(old.weight_bits), np.array(new.weight_bits)
            assert np.array_equal(old_bits == 0, new_bits == 0)  # nothing unpruned or pruned
            assert (new_bits >= old_bits).all() and new_bits.max() <= 8
            assert new.act_bits >= old.act_bits
        # the budget is spent: no single channel/layer/network bit more would still fit
        assert after > before or all(max(lp.weight_bits) == 8 for lp in filled.layers)
        if kind == "size":
            assert all(lp.act_bits == 8 for lp in filled.layers)  # free under a size budget
        assert fill_budget(policy, budget, costs, importance, 8, 8, rules) == filled
        if precision is Precision.MIXED:  # no single channel's bit more still fits
            for i, lp in enumerate(filled.layers):
                for c, b in enumerate(lp.weight_bits):
                    if 0 < b < 8:
                        bits = list(lp.weight_bits)
                        bits[c] += 1
                        layers = list(filled.layers)
                        layers[i] = LayerPolicy(lp.name, tuple(bits), lp.act_bits)
                        more = filled.replace_layers(layers)
                        assert budget_value(more, budget, costs) > budget.value


def test_fill_gives_bits_to_important_channels_first(setup):
    model, graph, costs, importance = setup
    policy = uniform_policy(graph, 2, 8)
    budget = Budget("size", budget_value(policy, budget=Budget("size", 1.0), costs=costs) * 1.05)
    filled = fill_budget(policy, budget, costs, importance, 8, 8)
    raised = [np.array(lp.weight_bits) > 2 for lp in filled.layers]
    assert any(r.any() for r in raised) and not all(r.all() for r in raised)
    for layer, r in zip(graph.layers, raised):
        if r.any() and not r.all():  # within a layer, raised channels outrank the others
            assert importance[layer.index][r].min() >= importance[layer.index][~r].max() - 1e-12


def test_a_scored_policy_is_admitted_by_what_was_measured():
    """The best policy must meet the budget as scored: a latency budget judges the measured
    latency (a policy the table let in but that ran slower is out); unmeasured ones stay in."""
    latency = Budget("latency", 2.0)
    assert latency.admits(1.0, 1.0, 1.9) and latency.admits(1.0, 1.0, 2.0)
    assert not latency.admits(100.0, 0.001, 2.1)
    assert latency.admits(1.0, 1.0, -1.0) and latency.admits(1.0, 1.0, None)
    size = Budget("size", 0.125)
    assert size.admits(8.0, 1.0) and not size.admits(7.9, 0.0, 0.0)
    bitops = Budget("bitops", 0.02)
    assert bitops.admits(1.0, 0.02) and not bitops.admits(100.0, 0.021)


def test_fill_refuses_a_policy_over_budget_and_leaves_latency_alone(setup):
    model, graph, costs, importance = setup
    policy = uniform_policy(graph, 8, 8)
    with pytest.raises(ValueError, match="enforce_budget"):
        fill_budget(policy, Budget("size", 0.05), costs, importance)
    assert fill_budget(policy, Budget("latency", 5.0), costs, importance) == policy
