"""One evaluation reads a bounded number of validation images, whatever the split's size."""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.data import Dataset

from ajpq.core.analysis import analyze
from ajpq.core.builder import uniform_policy
from ajpq.task.data import DataSplits
from ajpq.task.models import build_model
from ajpq.task.scoring import ScoreSettings, score_policy
from ajpq.task.train import FinetuneConfig


class CountingImages(Dataset):
    """``count`` random digit-sized images; counts what was read."""

    def __init__(self, count: int) -> None:
        self.count, self.reads = count, 0

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return torch.full((1, 16, 16), float(index % 7)), index % 10


def test_the_default_val_samples_bounds_one_evaluation():
    model = build_model("digits_cnn", 10, 1)
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    policy = uniform_policy(graph, 8, 8, "digits_cnn")
    val = CountingImages(12_000)
    splits = DataSplits(CountingImages(64), val, CountingImages(8), 10, (1, 16, 16))
    settings = ScoreSettings(finetune=FinetuneConfig(steps=1, batch_size=32), latency_repeats=1)
    assert settings.val_samples == 10_000
    score_policy(model, policy, graph, splits, settings)
    assert 10_000 <= val.reads < 10_000 + 256  # one evaluation batch past the bound at most
    val.reads = 0
    score_policy(model, policy, graph, splits, dataclasses.replace(settings, val_samples=None))
    assert val.reads == 12_000  # None: the whole split (the final report's setting)
