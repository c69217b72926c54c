"""Kept channels in whole multiples: only pruning, the weakest first, every group's members
agreeing, so no budget that held is broken."""

import numpy as np
import pytest
import torch

from ajpq.core.analysis import analyze
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.cost import CostModel
from ajpq.core.importance import group_importance, layer_importance
from ajpq.core.snap import build_snapped, snap_channels
from ajpq.task.models import build_model


def _case(name: str, shape: tuple[int, ...], seed: int):
    torch.manual_seed(0)
    model = build_model(name, 10, shape[0]).eval()
    graph = analyze(model, torch.zeros(1, *shape))
    importance = layer_importance(model, graph)
    rng = np.random.default_rng(seed)
    knobs = [LayerKnobs(float(rng.uniform(0.0, 0.7)), 6, 8, 2.0) for _ in graph.layers]
    return graph, importance, build_policy(model, graph, knobs, importance)


@pytest.mark.parametrize(
    ("name", "shape", "multiple"),
    [
        ("digits_cnn", (1, 16, 16), 4),
        ("digits_cnn", (1, 16, 16), 16),
        ("resnet18", (3, 32, 32), 16),
    ],
)
def test_snapped_groups_keep_whole_multiples_by_pruning_the_weakest(name, shape, multiple):
    for seed in range(3):
        graph, importance, policy = _case(name, shape, seed)
        snapped = snap_channels(policy, graph, importance, multiple)
        costs = CostModel(graph)
        # only pruning: what was pruned stays pruned, a kept channel keeps its bits
        for before, after in zip(policy.layers, snapped.layers):
            b, a = np.asarray(before.weight_bits), np.asarray(after.weight_bits)
            assert np.all(a[b == 0] == 0)
            assert np.all((a == b) | (a == 0))
            assert after.act_bits == before.act_bits
        after, before = costs.cost(snapped), costs.cost(policy)
        assert after.size_bytes <= before.size_bytes and after.bitops <= before.bitops
        snapped_any = False
        for group, score in zip(graph.groups, group_importance(graph, importance)):
            if not group.prunable:
                continue
            was = np.asarray(policy.layers[group.members[0]].weight_bits) > 0
            now = np.asarray(snapped.layers[group.members[0]].weight_bits) > 0
            kept_before = int(was[: group.block_size].sum())
            kept = int(now[: group.block_size].sum())
            if kept_before < multiple:
                assert kept == kept_before  # fewer than the multiple: left as it is
            else:
                assert kept % multiple == 0 and kept_before - kept < multiple
            snapped_any |= kept != kept_before
            # every member prunes the same channels
            for member in group.members:
                bits = np.asarray(snapped.layers[member].weight_bits)
                assert np.array_equal(bits > 0, group.member_mask(len(bits), now))
            # the dropped are the weakest of the kept (by the group's importance per position)
            by_position = np.asarray(score).reshape(group.blocks, group.block_size).sum(axis=0)
            dropped = was[: group.block_size] & ~now[: group.block_size]
            if dropped.any():
                assert by_position[dropped].max() <= by_position[now[: group.block_size]].min()
        assert snapped_any or multiple == 4  # the case would not test anything otherwise


def test_a_multiple_of_one_changes_nothing():
    graph, importance, policy = _case("digits_cnn", (1, 16, 16), 0)
    assert snap_channels(policy, graph, importance, 1) is policy


def test_build_snapped_is_the_built_policy_snapped():
    torch.manual_seed(0)
    model = build_model("digits_cnn", 10, 1).eval()
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    importance = layer_importance(model, graph)
    knobs = LayerKnobs(0.3, 6, 8, 2.0)
    built = build_policy(model, graph, knobs, importance, "digits_cnn")
    snapped = build_snapped(model, graph, knobs, importance, 4, "digits_cnn")
    assert snapped == snap_channels(built, graph, importance, 4) and snapped != built
