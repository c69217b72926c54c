"""The latency lookup table: layers timed alone, a policy's latency predicted from them."""

import numpy as np
import pytest
import torch
from torch import nn

from ajpq.core.analysis import analyze
from ajpq.core.budget import Budget, BudgetKind, budget_value, enforce_budget, fill_budget
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.cost import CostModel, measure_latency
from ajpq.core.importance import layer_importance
from ajpq.core.latency import latency_from_dict
from ajpq.core.latency_table import FLOAT, INTEGER, fit_latency_table, with_input_quantizer
from ajpq.core.materialize import materialize
from ajpq.task.models import build_model


def _digits():
    torch.manual_seed(0)
    model = build_model("digits_cnn", 10, 1).eval()
    return model, analyze(model, torch.zeros(1, 1, 16, 16))


def _macs(module: nn.Module, shape: tuple[int, ...]) -> float:
    """A stand-in timer: 1 ms per million MACs of the layer, + 0.01 ms overhead."""
    with torch.no_grad():
        out = module(torch.zeros(1, *shape))
    weights = module.weight.numel()
    spatial = out[0, 0].numel() if out.dim() > 2 else 1
    return 0.01 + weights * spatial / 1e6


def test_a_held_out_policy_is_predicted_within_a_loose_bound():
    """Timed in torch on this CPU: the table's prediction of a random policy's latency."""
    torch.set_num_threads(1)
    model, graph = _digits()
    batch = 32  # long enough a forward that timing noise stays small

    def time_layer(module, shape, form):
        layer = with_input_quantizer(module, shape) if form == INTEGER else module
        return measure_latency(layer, shape, batch, "cpu", repeats=10)

    def time_network(policy, form):
        return measure_latency(materialize(model, policy, graph), graph.input_shape, batch, "cpu")

    table = fit_latency_table(model, graph, time_layer, time_network, (FLOAT, INTEGER))
    costs = CostModel(graph)
    rng = np.random.default_rng(0)
    knobs = [LayerKnobs(float(rng.uniform(0.1, 0.6)), 8, 8) for _ in graph.layers]
    policy = build_policy(model, graph, knobs, model_name="digits_cnn")
    measured = np.median(
        [
            measure_latency(materialize(model, policy, graph), graph.input_shape, batch, "cpu")
            for _ in range(3)
        ]
    )
    predicted = table.predict(policy, costs)
    assert 0.5 <= predicted / measured <= 2.0, (predicted, measured)


def test_the_table_knows_depthwise_layers_forms_and_survives_a_round_trip():
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", 10, 3).eval()
    graph = analyze(model, torch.zeros(1, 3, 32, 32))
    shapes = []

    def time_layer(module, shape, form):
        shapes.append((type(module).__name__, getattr(module, "groups", 1), shape))
        return _macs(module, shape) * (0.5 if form == INTEGER else 1.0)

    costs = CostModel(graph)

    def time_network(policy, form):  # the stand-in's per-MAC rate, and 0.1 ms beyond layers
        return 0.1 + costs.cost(policy).macs / 1e6 * (0.5 if form == INTEGER else 1.0)

    table = fit_latency_table(model, graph, time_layer, time_network, (FLOAT, INTEGER))
    depthwise = [s for s in shapes if s[1] > 1]
    assert depthwise and all(groups == shape[0] for _, groups, shape in depthwise)
    full = build_policy(model, graph, LayerKnobs(0.0, 8, 8), model_name="mobilenet_v2")
    floats = build_policy(model, graph, LayerKnobs(0.0, 32, 32), model_name="mobilenet_v2")
    half = build_policy(model, graph, LayerKnobs(0.5, 8, 8), model_name="mobilenet_v2")
    # integer layers are faster here, pruned ones faster still
    assert table.predict(half, costs) < table.predict(full, costs) < table.predict(floats, costs)
    again = latency_from_dict(table.to_dict())
    assert again == table and again.predict(half, costs) == table.predict(half, costs)


def test_the_wall_squeezes_a_policy_under_a_latency_table_budget():
    model, graph = _digits()

    def time_layer(module, shape, form):
        return _macs(module, shape)

    costs = CostModel(graph)
    table = fit_latency_table(
        model, graph, time_layer, lambda policy, form: 0.05 + costs.cost(policy).macs / 1e6
    )
    full = build_policy(model, graph, LayerKnobs(0.0, 8, 8), model_name="digits_cnn")
    ceiling = 0.5 * table.predict(full, costs)
    budget = Budget(BudgetKind.LATENCY, ceiling)
    importance = layer_importance(model, graph)
    squeezed = enforce_budget(full, budget, costs, importance, table)
    assert budget_value(squeezed, budget, costs, table) <= ceiling
    # bits of 8 and fewer cost no time here: the fill raises them all, the prediction unchanged
    low = build_policy(model, graph, LayerKnobs(0.5, 3, 4), model_name="digits_cnn")
    filled = fill_budget(low, Budget(BudgetKind.LATENCY, 1e9), costs, importance, 8, 8, None, table)
    assert {b for lp in filled.layers for b in lp.weight_bits} == {0, 8}
    assert {lp.act_bits for lp in filled.layers} == {8}
    assert table.predict(filled, costs) == table.predict(low, costs)
    with pytest.raises(ValueError, match="below the smallest reachable"):
        enforce_budget(full, Budget(BudgetKind.LATENCY, 1e-9), costs, importance, table)


def test_each_entry_is_the_fastest_of_rounds_taken_in_turn():
    """Load on the machine (a few timings 100x too long in round 1, every timing 1.5x too long
    in rounds 1 and 2) moves no entry: each is the fastest of its rounds, and the rounds go
    over the whole table in turn. (A median of three would keep the 1.5x.)"""
    model, graph = _digits()
    costs = CostModel(graph)
    calls: list[str] = []
    entries = len(graph.layers) * 4 + 4  # every layer and the network, at four fractions

    def time_layer(module, shape, form):
        calls.append("layer")
        burst = 100.0 if 3 <= len(calls) <= 6 else 1.0  # a few timings of the first round
        slow = 1.5 if len(calls) <= 2 * entries else 1.0  # rounds 1 and 2
        return _macs(module, shape) * burst * slow

    def time_network(policy, form):
        calls.append("network")
        return 0.05 + costs.cost(policy).macs / 1e6

    table = fit_latency_table(model, graph, time_layer, time_network, rounds=3)
    quiet = fit_latency_table(model, graph, lambda m, s, f: _macs(m, s), time_network, rounds=1)
    assert table == quiet
    assert len(calls) == 3 * entries + 4  # and the quiet fit's four networks
    # round 2 starts only after round 1 has timed every entry
    assert calls[:entries].count("network") == 4
