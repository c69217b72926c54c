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
    assert 10_000 <= val.reads < 10_000 + 256  # the last batch is read whole, scored in part
    val.reads = 0
    score_policy(model, policy, graph, splits, dataclasses.replace(settings, val_samples=None))
    assert val.reads == 12_000  # None: the whole split (the final report's setting)


def _w4a4_digits():
    """The digits CNN at w4a4 as the scorer simulates it (no step taken yet), and its data."""
    from ajpq.core.apply import apply_policy
    from ajpq.task.data import DataConfig, load_dataset

    torch.manual_seed(0)
    model = build_model("digits_cnn", 10, 1)
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    splits = load_dataset(DataConfig("digits"))
    return apply_policy(model, uniform_policy(graph, 4, 4, "digits_cnn"), graph), splits


def test_bn_recalibration_changes_the_running_statistics_and_nothing_else():
    from ajpq.task.train import recalibrate_bn

    simulated, splits = _w4a4_digits()
    simulated.train()(splits.train.tensors[0][:64])  # calibrate the activation quantizers
    before = {k: v.clone() for k, v in simulated.state_dict().items()}
    assert recalibrate_bn(simulated, splits.train, 4, batch_size=32) == 4
    after = simulated.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    stats = {
        k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
    assert changed and changed <= stats
    assert not simulated.training


def test_zero_finetune_steps_with_bn_recalibration_scores_a_policy():
    from ajpq.task.data import DataConfig, load_dataset

    torch.manual_seed(0)
    model = build_model("digits_cnn", 10, 1)
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    splits = load_dataset(DataConfig("digits"))
    policy = uniform_policy(graph, 8, 8, "digits_cnn")
    settings = ScoreSettings(
        finetune=FinetuneConfig(steps=0), bn_recalibration_batches=5, latency_repeats=1
    )
    score = score_policy(model, policy, graph, splits, settings)
    assert not score.diverged and 0.0 <= score.accuracy <= 1.0
    assert score.latency_ms > 0 and score.latency_spread_ms >= 0  # torch's timing and spread


def test_recalibration_calibrates_quantizers_that_no_finetune_step_calibrated():
    from ajpq.core.quantize import ActivationQuantizer
    from ajpq.task.train import recalibrate_bn

    simulated, splits = _w4a4_digits()
    quantizers = [m for m in simulated.modules() if isinstance(m, ActivationQuantizer)]
    assert quantizers and not any(q.is_calibrated for q in quantizers)  # 0 finetune steps
    recalibrate_bn(simulated, splits.train, 3, batch_size=32)
    assert all(q.is_calibrated and float(q.max_abs) > 0 for q in quantizers)
    assert not any(q.training for q in quantizers)


def test_the_long_recipe_is_ten_times_the_search_finetune_unless_set():
    from ajpq.task.scoring import LONG_STEPS_WITHOUT_FINETUNE

    assert ScoreSettings(finetune=FinetuneConfig(steps=40)).long_finetune().steps == 400
    no_finetune = ScoreSettings(finetune=FinetuneConfig(steps=0), bn_recalibration_batches=50)
    assert no_finetune.long_finetune().steps == LONG_STEPS_WITHOUT_FINETUNE
    chosen = ScoreSettings(finetune=FinetuneConfig(steps=0, lr=0.02), long_steps=120)
    assert chosen.long_finetune() == FinetuneConfig(steps=120, lr=0.02)
