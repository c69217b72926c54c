"""The physically pruned simulation equals the masked reference: outputs, gradients and the
weights after a few SGD steps, on every zoo network and every hand-written awkward block; its
exported file is the masked path's bit for bit; a network that cannot be pruned falls back.

The training comparisons run in float64: the pruned convolutions sum over fewer channels, and
in float32 that reordering moves a value by ~1e-7, enough to flip a fake-quantization rounding
now and then (a whole quantization step). In float64 such flips do not happen, so any
difference left would be a difference in what the two networks compute."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import StochasticDepth

from ajpq.core.analysis import analyze
from ajpq.core.apply import FakeQuantLayer, apply_policy
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.pruned import apply_pruned, is_pruned, simulate
from ajpq.export.packed import export_compressed
from ajpq.task.models import ModelName, build_model
from tests.core.test_topologies import BLOCKS

SHAPE = {ModelName.DIGITS_CNN: (1, 16, 16), ModelName.FMNIST_CNN: (1, 28, 28)}
# vgg11_bn's 4096-wide classifier costs a minute and a half of the default suite: it is a plain
# chain of convs (every path here is covered by the other networks), so it runs in `make test-slow`
NETWORKS = [
    pytest.param(m, marks=pytest.mark.slow) if m is ModelName.VGG11_BN else m for m in ModelName
]


def _policy(model: nn.Module, graph, seed: int, name: str):
    rng = np.random.default_rng(seed)
    knobs = [
        LayerKnobs(
            float(rng.uniform(0.2, 0.6)),
            int(rng.integers(2, 9)),
            int(rng.choice([4, 8, 32])),
            float(rng.uniform(0, 0.5)),
            min_bits=2,
            max_bits=8,
        )
        for _ in graph.layers
    ]
    return build_policy(model, graph, knobs, model_name=name)


def _kept_weight(masked: FakeQuantLayer, kept_out: torch.Tensor) -> torch.Tensor:
    """The masked layer's weight at the pruned layer's positions: kept rows, live columns."""
    weight = masked.layer.weight.detach()[kept_out]
    if masked.weight_mask is None:
        return weight
    mask = masked.weight_mask[kept_out].reshape(len(kept_out), -1).bool()
    rows = [w.reshape(mask.shape[1], -1)[m] for w, m in zip(weight, mask)]
    return torch.stack(rows)


def _pairs(masked: nn.Module, pruned: nn.Module):
    wrapped = dict(pruned.named_modules())
    for name, module in masked.named_modules():
        if isinstance(module, FakeQuantLayer):
            yield name, module, wrapped[name]


def _close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float) -> None:
    scale = max(a.abs().max().item(), 1e-6)
    diff = (a - b.reshape(a.shape)).abs().max().item()
    assert diff <= tol * scale, f"{what}: {diff:.3g} vs scale {scale:.3g}"


def _equal_training(model: nn.Module, shape: tuple[int, ...], name: str, classes: int) -> None:
    for module in model.modules():  # a random mask over fewer features is another draw
        if isinstance(module, (nn.Dropout, StochasticDepth)):
            module.p = 0.0
    model = model.double()
    graph = analyze(model, torch.zeros(1, *shape, dtype=torch.float64))
    policy = _policy(model, graph, 0, name)
    assert any(0 in lp.weight_bits for lp in policy.layers)
    masked = apply_policy(model, policy, graph).train()
    pruned = apply_pruned(model, policy, graph).train()
    assert is_pruned(pruned) and not is_pruned(masked)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in masked.parameters())
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, *shape, generator=generator, dtype=torch.float64)
    y = torch.randint(0, classes, (4,), generator=generator)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (masked, pruned)]
    for step in range(3):
        outputs = [m(x) for m in (masked, pruned)]
        _close(outputs[0], outputs[1], f"step {step} forward", 1e-9)
        for out, optimizer in zip(outputs, optimizers):
            optimizer.zero_grad()
            F.cross_entropy(out, y).backward()
        if step == 0:
            for layer, a, b in _pairs(masked, pruned):
                grad = a.layer.weight.grad
                kept = b.kept_out
                rows = grad[kept]
                if a.weight_mask is not None:
                    mask = a.weight_mask[kept].reshape(len(kept), -1).bool()
                    rows = torch.stack(
                        [g.reshape(mask.shape[1], -1)[m] for g, m in zip(rows, mask)]
                    )
                _close(rows, b.layer.weight.grad, f"{layer} gradient", 1e-6)
        for optimizer in optimizers:
            optimizer.step()
    for layer, a, b in _pairs(masked, pruned):
        _close(_kept_weight(a, b.kept_out), b.layer.weight.detach(), f"{layer} weight", 1e-6)
    masked.eval(), pruned.eval()
    with torch.no_grad():
        _close(masked(x), pruned(x), "eval forward", 1e-9)


@pytest.mark.parametrize("name", NETWORKS, ids=lambda m: m.value)
def test_zoo_network_pruned_equals_masked(name):
    torch.manual_seed(0)
    shape = SHAPE.get(name, (3, 32, 32))
    _equal_training(build_model(name, 10, shape[0]), shape, name.value, 10)


@pytest.mark.parametrize("block", list(BLOCKS))
def test_awkward_block_pruned_equals_masked(block):
    torch.manual_seed(0)
    _equal_training(BLOCKS[block](), (3, 32, 32), "custom", 5)


def _calibrate(simulated: nn.Module) -> None:
    """The same activation ranges in both paths (a calibrating forward would differ by float
    rounding between them, and so would the bytes)."""
    layers = [(n, m) for n, m in simulated.named_modules() if isinstance(m, FakeQuantLayer)]
    for index, (_, module) in enumerate(sorted(layers, key=lambda item: item[0])):
        module.act.max_abs.fill_(0.5 + 0.1 * index)
        module.act.signed.fill_(index % 2 == 0)
        module.act.calibrated.fill_(True)
        module.act.is_calibrated = True


def test_the_export_of_the_pruned_path_is_the_masked_paths_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3).eval()
    with torch.no_grad():  # BatchNorms as a trained network has them (they fold into the file)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
    graph = analyze(model, torch.zeros(1, 3, 32, 32))
    policy = _policy(model, graph, 3, "resnet18")
    files = []
    for label, simulated in (
        ("masked", apply_policy(model, policy, graph)),
        ("pruned", apply_pruned(model, policy, graph)),
    ):
        _calibrate(simulated)
        path = tmp_path / f"{label}.pt"
        export_compressed(simulated.eval(), policy, path, 10, graph)
        files.append(torch.load(path, weights_only=False))
    assert torch.equal(files[0]["blob"], files[1]["blob"])
    assert torch.equal(files[0]["header"], files[1]["header"])


def test_a_network_that_cannot_be_pruned_falls_back_to_masks(monkeypatch, caplog):
    from ajpq.core import pruned as pruned_module

    model = build_model("digits_cnn", 10, 1)
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    policy = _policy(model, graph, 0, "digits_cnn")

    def broken(model, policy):  # noqa: ANN001, ANN202
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(pruned_module, "prune_zero_channels", broken)
    with caplog.at_level(logging.INFO, logger="ajpq.core.pruned"):
        simulated = simulate(model, policy, graph)
    assert not is_pruned(simulated)
    assert sum("scoring it masked" in r.message for r in caplog.records) == 1
