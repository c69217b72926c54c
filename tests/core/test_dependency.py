"""Torch-Pruning's patched internals: present in the pinned version, and a missing one is named."""

import pytest
import torch
from torch import nn

from ajpq.core import dependency
from ajpq.core.dependency import build_dependency_graph, check_patched_internals


def test_the_pinned_torch_pruning_has_every_patched_internal():
    check_patched_internals()


def test_a_moved_internal_fails_loudly(monkeypatch):
    from torch_pruning.dependency import index_mapping

    monkeypatch.delattr(index_mapping, "update_split_index_mapping")
    with pytest.raises(RuntimeError, match="update_split_index_mapping"):
        check_patched_internals()


class _Chunked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.left = nn.Conv2d(4, 4, 1)
        self.right = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.stem(x).chunk(2, dim=1)
        return torch.cat([self.left(a), self.right(b)], dim=1)


def test_a_chunk_is_split_in_autograds_part_sizes():
    graph = build_dependency_graph(_Chunked(), torch.zeros(1, 3, 4, 4))
    splits = [n for n in graph.module2node.values() if n.type == dependency.tp.ops.OPTYPE.SPLIT]
    assert splits
    assert dependency.split_layout(splits[0]) == [(0, 4), (4, 8)]
