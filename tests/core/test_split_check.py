"""The split proof: a group through a channel split prunes only if pruning it for real gives
the simulation's outputs; one that cannot shrink (literal split sizes) is made unprunable."""

import torch
from torch import nn

from ajpq.core.analysis import analyze
from ajpq.core.split_check import check_split_groups


class _Split(nn.Module):
    def __init__(self, literal: bool) -> None:
        super().__init__()
        self.literal = literal
        self.stem = nn.Conv2d(3, 8, 1)
        self.left = nn.Conv2d(4, 4, 1)
        self.right = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        a, b = y.split((4, 4), dim=1) if self.literal else y.chunk(2, dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], dim=1))


def _stem_group(model: nn.Module, graph):
    index = next(layer.index for layer in graph.layers if layer.name == "stem")
    return graph.groups[graph.layer_group[index]]


def test_a_chunk_prunes_and_literal_sizes_do_not():
    x = torch.zeros(1, 3, 4, 4)
    chunked = _Split(literal=False)
    assert _stem_group(chunked, analyze(chunked, x)).prunable
    literal = _Split(literal=True)
    assert not _stem_group(literal, analyze(literal, x)).prunable


def test_the_check_keeps_a_group_that_prunes_exactly():
    x = torch.zeros(1, 3, 4, 4)
    model = _Split(literal=False)
    graph = analyze(model, x)
    assert check_split_groups(model, graph, x) == graph
