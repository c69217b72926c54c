"""Awkward topologies never break the analysis, and the core checks its inputs.

Channel split + concat (CSP/C2f), channel shuffle (ShuffleNet), squeeze-excitation and a grouped
conv fed by a residual add: ``analyze`` succeeds; whatever it marks prunable really prunes
(simulated = materialized outputs), everything else stays quantizable. Bad example inputs and
policies that do not fit the graph give ValueErrors that say what to change.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from ajpq.core import analysis as analysis_module
from ajpq.core.analysis import analyze
from ajpq.core.apply import apply_policy
from ajpq.core.budget import Budget, enforce_budget
from ajpq.core.builder import LayerKnobs, build_policy, uniform_policy
from ajpq.core.cost import CostModel
from ajpq.core.importance import layer_importance
from ajpq.core.materialize import materialize
from ajpq.core.policy import CompressionPolicy, LayerPolicy
from ajpq.core.validation import validate_policy


class SplitConcat(nn.Module):
    """A CSP/C2f-style block: split the channels, transform one half, concatenate."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.fuse = nn.Conv2d(16, 12, 1)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        left, right = x.chunk(2, dim=1)
        x = torch.cat([left, torch.relu(self.branch(right))], dim=1)
        x = torch.relu(self.fuse(x))
        return self.head(x.mean(dim=(2, 3)))


class C2f(nn.Module):
    """YOLOv8's C2f: split in two, chain convs on the second half, concatenate every output
    (the split's two parts are read by one concat). With ``shortcut`` each conv's output is
    added to its input: one half of the split coupled with narrower layers."""

    def __init__(self, shortcut: bool = False) -> None:
        super().__init__()
        self.cv1 = nn.Conv2d(3, 16, 1)
        self.m = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
            for _ in range(2)
        )
        self.cv2 = nn.Conv2d(32, 12, 1)
        self.head = nn.Linear(12, 5)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(y[-1] + m(y[-1]) if self.shortcut else m(y[-1]))
        return self.head(torch.relu(self.cv2(torch.cat(y, 1))).mean((2, 3)))


class LiteralSplit(SplitConcat):
    """The split's sizes are written in the code: it cannot shrink."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = torch.relu(self.stem(x)).split((8, 8), dim=1)
        x = torch.cat([left, torch.relu(self.branch(right))], dim=1)
        return self.head(torch.relu(self.fuse(x)).mean(dim=(2, 3)))


class SlicedConcat(SplitConcat):
    """Halves taken by slicing with literal indices: they cannot shrink, so nothing through
    them prunes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.cat([x[:, :8], torch.relu(self.branch(x[:, 8:]))], dim=1)
        return self.head(torch.relu(self.fuse(x)).mean(dim=(2, 3)))


class NegativeDimChunk(SplitConcat):
    """``chunk(2, dim=-3)``: the channel dim, counted from the end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = torch.relu(self.stem(x)).chunk(2, dim=-3)
        x = torch.cat([left, torch.relu(self.branch(right))], dim=1)
        return self.head(torch.relu(self.fuse(x)).mean(dim=(2, 3)))


class SpatialChunk(nn.Module):
    """A chunk along the height: every channel reaches both parts."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.top = nn.Conv2d(16, 8, 3, padding=1)
        self.bottom = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = torch.relu(self.stem(x)).chunk(2, dim=2)
        x = torch.cat([self.top(top), self.bottom(bottom)], dim=2)
        return self.head(torch.relu(x).mean(dim=(2, 3)))


class SwappedConcat(SplitConcat):
    """The transformed half comes first in the concat."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = torch.relu(self.stem(x)).chunk(2, dim=1)
        x = torch.cat([torch.relu(self.branch(right)), left], dim=1)
        return self.head(torch.relu(self.fuse(x)).mean(dim=(2, 3)))


class Shuffle(nn.Module):
    """A ShuffleNet-style channel shuffle between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = torch.relu(self.b(x))
        return self.head(x.mean(dim=(2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.squeeze = nn.Conv2d(16, 4, 1)
        self.excite = nn.Conv2d(4, 16, 1)
        self.out = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        scale = torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean((2, 3), keepdim=True)))))
        x = torch.relu(self.out(x * scale))
        return self.head(x.mean(dim=(2, 3)))


class GroupedAfterAdd(nn.Module):
    """A grouped conv fed by a residual add (ResNeXt/RegNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = x + torch.relu(self.body(x))
        x = torch.relu(self.grouped(x))
        return self.head(x.mean(dim=(2, 3)))


BLOCKS = {
    "split_concat": SplitConcat,
    "c2f": C2f,
    "c2f_shortcut": lambda: C2f(shortcut=True),
    "literal_split": LiteralSplit,
    "sliced_concat": SlicedConcat,
    "swapped_concat": SwappedConcat,
    "negative_dim_chunk": NegativeDimChunk,
    "spatial_chunk": SpatialChunk,
    "channel_shuffle": Shuffle,
    "squeeze_excite": SqueezeExcite,
    "grouped_after_add": GroupedAfterAdd,
    "shufflenet_v2_x0_5": lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=5),
}


def _random_policy(model: nn.Module, graph, seed: int) -> CompressionPolicy:
    rng = np.random.default_rng(seed)
    knobs = [
        LayerKnobs(float(rng.uniform(0.2, 0.6)), 32, 32, 0.0) for _ in range(len(graph.layers))
    ]
    return build_policy(model, graph, knobs, model_name="custom")


@pytest.mark.parametrize("name", list(BLOCKS))
def test_awkward_blocks_analyze_and_what_is_prunable_really_prunes(name):
    torch.manual_seed(0)
    model = BLOCKS[name]().eval()
    x = torch.randn(4, 3, 32, 32)
    graph = analyze(model, x[:1])
    # every layer in exactly one group
    assert sorted(i for g in graph.groups for i in g.members) == list(range(len(graph.layers)))
    assert all(graph.layer_group[i] == g.index for g in graph.groups for i in g.members)
    policy = _random_policy(model, graph, seed=1)
    simulated = apply_policy(model, policy, graph).eval()
    small = materialize(simulated, policy).eval()
    with torch.no_grad():
        reference = simulated(x)
        scale = reference.abs().max().item()
        assert (small(x) - reference).abs().max().item() <= 1e-4 * max(scale, 1.0)
    pruned = sum(lp.sparsity > 0 for lp in policy.layers)
    prunable = sum(graph.groups[graph.layer_group[i]].prunable for i in range(len(graph.layers)))
    assert (pruned > 0) == (prunable > 0)
    if pruned:
        assert sum(p.numel() for p in small.parameters()) < sum(
            p.numel() for p in model.parameters()
        )


def test_a_dependency_graph_that_cannot_be_built_leaves_every_layer_quantizable(
    monkeypatch, caplog
):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(analysis_module, "build_dependency_graph", broken)
    model = SplitConcat().eval()
    with caplog.at_level(logging.WARNING):
        graph = analyze(model, torch.zeros(1, 3, 32, 32))
    assert "none is pruned" in caplog.text
    assert len(graph.groups) == len(graph.layers)
    assert not any(group.prunable for group in graph.groups)
    policy = uniform_policy(graph, 4, 8, "custom")
    simulated = apply_policy(model, policy, graph)
    with torch.no_grad():
        assert simulated(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="cannot be pruned"):
        apply_policy(model, _pruned_everywhere(policy), graph)


def _pruned_everywhere(policy: CompressionPolicy) -> CompressionPolicy:
    layers = tuple(
        LayerPolicy(lp.name, (0, *lp.weight_bits[1:]), lp.act_bits) for lp in policy.layers
    )
    return dataclasses.replace(policy, layers=layers)


@pytest.fixture(scope="module")
def resnet():
    model = torchvision.models.resnet18(num_classes=10).eval()
    graph = analyze(model, torch.zeros(1, 3, 32, 32))
    return model, graph, CostModel(graph), layer_importance(model, graph)


def _with(policy: CompressionPolicy, index: int, **change) -> CompressionPolicy:
    layers = list(policy.layers)
    lp = layers[index]
    layers[index] = LayerPolicy(
        lp.name, change.get("weight_bits", lp.weight_bits), change.get("act_bits", lp.act_bits)
    )
    return dataclasses.replace(policy, layers=tuple(layers))


BAD_POLICIES = {
    "weight bits 9": (lambda p: _with(p, 3, weight_bits=(9,) * 64), "weight bits [9] not allowed"),
    "weight bits -1": (
        lambda p: _with(p, 3, weight_bits=(-1,) * 64),
        "weight bits [-1] not allowed",
    ),
    "activation bits 9": (lambda p: _with(p, 3, act_bits=9), "activation bits 9 not allowed"),
    "every channel pruned": (
        lambda p: _with(p, 3, weight_bits=(0,) * 64),
        "every output channel is pruned",
    ),
    "another head": (
        lambda p: _with(p, len(p.layers) - 1, weight_bits=(8,) * 1000),
        "policy gives bits for 1000 channels, the layer has 10",
    ),
    "a layer missing": (
        lambda p: dataclasses.replace(p, layers=p.layers[:-1]),
        "build the policy for this model",
    ),
    "another input": (
        lambda p: dataclasses.replace(p, input_shape=(3, 64, 64)),
        "built for input shape",
    ),
}


@pytest.mark.parametrize("case", list(BAD_POLICIES))
def test_cost_budget_and_apply_refuse_policies_that_do_not_fit(resnet, case):
    model, graph, costs, importance = resnet
    make, message = BAD_POLICIES[case]
    bad = make(uniform_policy(graph, 8, 8, "resnet18"))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        costs.cost(bad)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        enforce_budget(bad, Budget("size", 0.1), costs, importance)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        apply_policy(model, bad, graph)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((3, 32, 32), r"has no batch dimension; the model expects \(N, 3, H, W\)"),
        ((1, 1, 32, 32), r"has 1 channels, the first layer conv1 expects 3"),
        ((1, 3), r"cannot run on an example input of shape \(1, 3\)"),
    ],
)
def test_analyze_names_expected_and_given_input_shapes(resnet, shape, message):
    model = resnet[0]
    with pytest.raises(ValueError, match=message):
        analyze(model, torch.zeros(*shape))


def test_a_grouped_conv_prunes_the_same_positions_in_every_group():
    torch.manual_seed(0)
    model = GroupedAfterAdd().eval()
    x = torch.randn(4, 3, 32, 32)
    graph = analyze(model, x[:1])
    feeding = graph.groups[graph.layer_group[graph.layer_by_name("stem").index]]
    grouped = graph.groups[graph.layer_group[graph.layer_by_name("grouped").index]]
    assert feeding.prunable and feeding.blocks == 4  # stem + body (the add) feed 4 groups
    assert grouped.prunable and grouped.blocks == 4  # its own outputs, 4 per group
    policy = build_policy(model, graph, LayerKnobs(0.5, 32, 32), model_name="custom")
    for group in (feeding, grouped):
        kept = np.array(policy.layers[group.members[0]].weight_bits).reshape(4, 4) > 0
        assert (kept == kept[0]).all() and kept[0].sum() == 2
    small = materialize(apply_policy(model, policy, graph), policy).eval()
    conv = small.get_submodule("grouped")
    assert (conv.groups, conv.in_channels, conv.out_channels) == (4, 8, 8)
    costs = CostModel(graph)
    assert costs.cost(policy).size_bytes < costs.cost(uniform_policy(graph, 32, 32)).size_bytes
    # the wall prunes whole units too, and a policy that breaks the pattern is refused
    squeezed = enforce_budget(
        uniform_policy(graph, 8, 8), Budget("size", 0.2), costs, layer_importance(model, graph)
    )
    validate_policy(squeezed, graph)
    bits = list(policy.layers[feeding.members[0]].weight_bits)
    kept, pruned = bits[:4].index(32), bits[:4].index(0)  # in the first group only
    bits[kept], bits[pruned] = 0, 32
    broken = policy.replace_layers(
        [
            LayerPolicy(lp.name, tuple(bits), lp.act_bits) if i in feeding.members else lp
            for i, lp in enumerate(policy.layers)
        ]
    )
    with pytest.raises(ValueError, match="prune the same positions in every group"):
        validate_policy(broken, graph)


def test_shufflenet_prunes_inside_its_branches_not_across_the_shuffle():
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=5).eval()
    graph = analyze(model, torch.zeros(1, 3, 64, 64))
    prunable = {graph.layers[m].name for g in graph.groups if g.prunable for m in g.members}
    # a branch's 1x1 conv with its depthwise partner: their channels never meet the shuffle
    assert {"stage2.1.branch2.0", "stage2.1.branch2.3"} <= prunable
    # the branch's output is concatenated and shuffled: quantized, not pruned
    assert "stage2.1.branch2.5" not in prunable


@pytest.mark.parametrize(
    ("name", "split_prunable"),
    [
        ("split_concat", {"stem"}),
        ("swapped_concat", {"stem"}),
        ("negative_dim_chunk", {"stem"}),
        ("c2f", {"cv1"}),
        ("c2f_shortcut", {"cv1"}),  # the second half and the bottlenecks added to it
        ("literal_split", set()),  # split((8, 8)) cannot shrink: refused by the pruning proof
        ("sliced_concat", set()),  # x[:, :8] cannot shrink either: refused by the analysis
    ],
)
def test_a_split_prunes_the_same_positions_in_every_part(name, split_prunable):
    torch.manual_seed(0)
    model = BLOCKS[name]().eval()
    graph = analyze(model, torch.zeros(1, 3, 16, 16))
    split_groups = {graph.layers[g.members[0]].name: g for g in graph.groups if g.split}
    prunable = {lead for lead, g in split_groups.items() if g.prunable}
    assert prunable == split_prunable
    for lead in prunable:
        group = split_groups[lead]
        assert group.blocks == 2 and group.unit(1).tolist() == [1, 1 + group.channels // 2]
    # the cost model counts exactly the inputs the materialized network keeps
    rng = np.random.default_rng(3)
    for _ in range(3):
        policy = _random_policy(model, graph, seed=int(rng.integers(100)))
        small = materialize(apply_policy(model, policy, graph), policy).eval()
        costs = CostModel(graph)
        bits = [np.array(lp.weight_bits) for lp in policy.layers]
        pruned = costs.pruned_per_group(bits)
        for layer, layer_bits in zip(graph.layers, bits):
            kept = int((layer_bits > 0).sum())
            expected = kept * costs.weights_per_channel(layer.index, pruned)
            assert small.get_submodule(layer.name).weight.numel() == expected, layer.name
    # the wall prunes whole units (members one part wide lose the position itself)
    importance = layer_importance(model, graph)
    full = uniform_policy(graph, 32, 32)
    squeezed, value = full, 0.002
    while True:  # the tightest BitOps budget of 0.002 x 2^-k the wall still meets
        try:
            squeezed = enforce_budget(full, Budget("bitops", value), CostModel(graph), importance)
        except ValueError:
            break
        value /= 2
    validate_policy(squeezed, graph)
    x = torch.randn(2, 3, 16, 16)
    simulated = apply_policy(model, squeezed, graph).eval()
    with torch.no_grad():
        reference = simulated(x)
        error = (materialize(simulated, squeezed).eval()(x) - reference).abs().max().item()
    assert error <= 1e-4 * max(reference.abs().max().item(), 1.0)
    for lead in prunable:
        group = split_groups[lead]
        assert any(b == 0 for m in group.members for b in squeezed.layers[m].weight_bits)


def test_a_split_along_the_height_passes_every_channel():
    model = SpatialChunk().eval()
    graph = analyze(model, torch.zeros(1, 3, 16, 16))
    stem = graph.groups[graph.layer_group[0]]
    assert stem.prunable and not stem.split and stem.blocks == 1
    names = {graph.layers[c].name: m[:, 0].tolist() for c, m in stem.consumers.items()}
    assert names == {"top": list(range(16)), "bottom": list(range(16))}


def test_a_split_group_refused_after_analysis_still_takes_policies():
    """When the pruning proof refuses a group with members one part wide, policies for the
    network still build, validate and apply (nothing is pruned there)."""
    model = BLOCKS["c2f_shortcut"]().eval()
    graph = analyze(model, torch.zeros(1, 3, 16, 16))
    lead = next(g for g in graph.groups if g.split)
    groups = list(graph.groups)
    groups[lead.index] = dataclasses.replace(lead, prunable=False, blocks=1)
    refused = dataclasses.replace(graph, groups=tuple(groups))
    policy = _random_policy(model, refused, seed=2)
    validate_policy(policy, refused)
    assert all(b > 0 for m in lead.members for b in policy.layers[m].weight_bits)
    apply_policy(model, policy, refused)
