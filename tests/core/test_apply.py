import numpy as np
import pytest
import torch
import torchvision

from ajpq.core.analysis import analyze
from ajpq.core.apply import FakeQuantLayer, apply_policy
from ajpq.core.builder import LayerKnobs, build_policy, uniform_policy
from ajpq.core.materialize import materialize
from ajpq.task.train import evaluate


def _randomise_bn(model: torch.nn.Module) -> None:
    # non-trivial BN shifts: a pruned channel's constant output must still vanish downstream
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
            module.bias.data.copy_(torch.rand(module.num_features, generator=generator) - 0.5)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_materialized_equals_simulated_fp32(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    _randomise_bn(model)
    x = torch.randn(4, 3, 64, 64)
    graph = analyze(model, x[:1])
    rng = np.random.default_rng(1)
    for _ in range(2):
        knobs = [LayerKnobs(float(rng.uniform(0.1, 0.7)), 32, 32) for _ in graph.layers]
        policy = build_policy(model, graph, knobs, model_name=name)
        assert any(lp.kept < len(lp.weight_bits) for lp in policy.layers)
        simulated = apply_policy(model, policy, graph).eval()
        small = materialize(simulated, policy).eval()
        with torch.no_grad():
            diff = (simulated(x) - small(x)).abs().max().item()
        assert diff <= 1e-4
        params = sum(p.numel() for p in small.parameters())
        assert params < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_materialized_equals_simulated_predictions_quantized(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    x = torch.randn(8, 3, 64, 64)
    graph = analyze(model, x[:1])
    rng = np.random.default_rng(2)
    knobs = [
        LayerKnobs(float(rng.uniform(0.1, 0.6)), int(rng.integers(3, 9)), 8, 1.0)
        for _ in graph.layers
    ]
    policy = build_policy(model, graph, knobs)
    simulated = apply_policy(model, policy, graph)
    simulated.train()
    with torch.no_grad():
        simulated(torch.randn(16, 3, 64, 64))  # calibrate activation ranges
    simulated.eval()
    small = materialize(simulated, policy).eval()
    with torch.no_grad():
        a, b = simulated(x), small(x)
    assert torch.equal(a.argmax(1), b.argmax(1))
    # and quantization really changed the function compared to fp32 weights
    with torch.no_grad():
        fp = apply_policy(
            model,
            build_policy(model, graph, [LayerKnobs(k.sparsity, 32, 32) for k in knobs]),
            graph,
        ).eval()(x)
    assert (fp - a).abs().max().item() > 1e-3


def test_original_model_untouched_and_gradients_flow(digits_model):
    model = digits_model.model
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    policy = build_policy(model, graph, LayerKnobs(0.25, 4, 8))
    simulated = apply_policy(model, policy, graph)
    assert sum(isinstance(m, FakeQuantLayer) for m in simulated.modules()) == len(graph.layers)
    out = simulated(torch.randn(4, 1, 16, 16))
    out.sum().backward()
    grads = [m.layer.weight.grad for m in simulated.modules() if isinstance(m, FakeQuantLayer)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # pruned channels get no gradient; kept ones do
    stem = simulated.stem[0]
    pruned = stem.weight_bits == 0
    assert pruned.any()
    assert stem.layer.weight.grad[pruned].abs().sum() == 0
    assert stem.layer.weight.grad[~pruned].abs().sum() > 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    with pytest.raises(ValueError, match="already has a policy"):
        apply_policy(simulated, policy, graph)


def test_uniform_8bit_keeps_accuracy_and_2bit_loses_it(digits_model, digits):
    model = digits_model.model
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    fp32 = evaluate(model, digits.test).top1
    eight = apply_policy(model, uniform_policy(graph, 8, 8), graph)
    two = apply_policy(model, uniform_policy(graph, 2, 2), graph)
    for simulated in (eight, two):  # calibrate activation ranges on training data
        simulated.train()
        with torch.no_grad():
            simulated(digits.train.tensors[0][:256])
    acc8 = evaluate(eight, digits.test).top1
    acc2 = evaluate(two, digits.test).top1
    assert fp32 >= 0.97
    assert abs(acc8 - fp32) <= 0.01
    assert acc2 < fp32 - 0.05
