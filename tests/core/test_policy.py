import json

import numpy as np
import pytest
import torch

from ajpq.core.analysis import analyze
from ajpq.core.builder import LayerKnobs, build_policy, channel_bits_by_rank, uniform_policy
from ajpq.core.policy import CompressionPolicy, LayerPolicy
from ajpq.core.validation import validate_policy
from ajpq.task.models import SmallResNet


@pytest.fixture()
def model_and_graph():
    torch.manual_seed(0)
    model = SmallResNet(1, 10, width=8)
    return model, analyze(model, torch.zeros(1, 1, 16, 16))


def test_json_round_trip_is_exact(tmp_path, model_and_graph):
    model, graph = model_and_graph
    knobs = [LayerKnobs(0.3, 4, 6, spread=1.5) for _ in graph.layers]
    policy = build_policy(model, graph, knobs, model_name="tiny")
    again = CompressionPolicy.from_json(policy.to_json())
    assert again == policy
    assert again.to_json() == policy.to_json()
    path = policy.save(tmp_path / "policy.json")
    assert CompressionPolicy.load(path) == policy
    assert json.loads(path.read_text())["format"] == "ajpq.policy/1"


def test_builder_prunes_weakest_channels_and_ranks_bits(model_and_graph):
    model, graph = model_and_graph
    knobs = [LayerKnobs(0.5, 4, 8, spread=2.0) for _ in graph.layers]
    policy = build_policy(model, graph, knobs)
    validate_policy(policy, graph)
    stem = policy.layer("stem.0")
    assert stem.kept == 4  # half of 8 channels
    weight = model.stem[0].weight.detach().reshape(8, -1).norm(dim=1).numpy()
    # stem is coupled with block1's outputs; within the stem, kept channels with larger
    # norm never get fewer bits than weaker kept ones
    kept = [c for c, b in enumerate(stem.weight_bits) if b > 0]
    pairs = [(weight[c], stem.weight_bits[c]) for c in kept]
    pairs.sort()
    assert [b for _, b in pairs] == sorted(b for _, b in pairs)
    assert max(stem.weight_bits) == 6 and min(b for b in stem.weight_bits if b) == 2
    # the classifier is never pruned
    assert policy.layer("fc").kept == 10


def test_channel_bits_by_rank():
    bits = channel_bits_by_rank(np.array([0.1, 3.0, 1.0]), 4, 2.0)
    assert bits.tolist() == [2, 6, 4]
    assert channel_bits_by_rank(np.array([1.0, 2.0]), 32, 2.0).tolist() == [32, 32]


def _with_layer(policy: CompressionPolicy, index: int, layer: LayerPolicy) -> CompressionPolicy:
    layers = list(policy.layers)
    layers[index] = layer
    return policy.replace_layers(layers)


def test_invalid_policies_raise_actionable_errors(model_and_graph):
    model, graph = model_and_graph
    policy = uniform_policy(graph, 8, 8)
    with pytest.raises(ValueError, match="compressible layers"):
        validate_policy(policy.replace_layers(policy.layers[:-1]), graph)
    first = policy.layers[0]
    with pytest.raises(ValueError, match="weight bits \\[9\\] not allowed"):
        validate_policy(_with_layer(policy, 0, LayerPolicy(first.name, (9,) * 8, 8)), graph)
    with pytest.raises(ValueError, match="every output channel is pruned"):
        validate_policy(_with_layer(policy, 0, LayerPolicy(first.name, (0,) * 8, 8)), graph)
    with pytest.raises(ValueError, match="activation bits 1 not allowed"):
        validate_policy(_with_layer(policy, 0, LayerPolicy(first.name, (8,) * 8, 1)), graph)
    with pytest.raises(ValueError, match="output channels"):
        validate_policy(_with_layer(policy, 0, LayerPolicy(first.name, (8,) * 7, 8)), graph)
    with pytest.raises(ValueError, match="does not match model layer"):
        validate_policy(_with_layer(policy, 0, LayerPolicy("nope", (8,) * 8, 8)), graph)
    # stem is coupled with block1.conv2: pruning only one of them is rejected
    with pytest.raises(ValueError, match="coupled"):
        validate_policy(_with_layer(policy, 0, LayerPolicy(first.name, (0,) + (8,) * 7, 8)), graph)
    fc_index = graph.layer_by_name("fc").index
    with pytest.raises(ValueError, match="cannot be pruned"):
        validate_policy(_with_layer(policy, fc_index, LayerPolicy("fc", (0,) + (8,) * 9, 8)), graph)
    with pytest.raises(ValueError, match="format"):
        CompressionPolicy.from_dict({"model_name": "x"})
    with pytest.raises(ValueError, match="sparsity"):
        LayerKnobs(sparsity=1.0)


def test_apply_rejects_policy_of_another_model(model_and_graph):
    from ajpq.core.apply import apply_policy

    model, graph = model_and_graph
    other = SmallResNet(1, 10, width=4)
    other_graph = analyze(other, torch.zeros(1, *graph.input_shape))
    with pytest.raises(ValueError, match="another layer structure"):
        apply_policy(other, uniform_policy(graph, 8, 8), other_graph)
