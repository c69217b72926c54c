"""Evaluations per minute of the default scorer (apply, finetune, validate, latency) on one
device, measured as an evaluator runs them: shared by ``bench_eval_throughput.py`` (this CPU)
and ``gpu_check.py`` (a CUDA GPU). Data is generated (random images), policies are fixed.

Variants, all measured in the same run:
- ``before``: the hot loop as it was before issue 20: the loss read every step, each
  activation quantizer reading its state back every forward (3 reads), data gathered on the
  host and copied per batch;
- ``after``: no host reads in the loop, tensor data moved to the device once;
- ``after+amp``: the same with bf16 autocast (CUDA only);
- ``2 per device``: two evaluator processes sharing the device (half its threads / memory).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

import ajpq.task.train as train_module
from ajpq.core.analysis import analyze
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.quantize import ActivationQuantizer
from ajpq.task.data import DataSplits, on_device
from ajpq.task.models import build_model
from ajpq.task.scoring import ScoreSettings, score_policy
from ajpq.task.train import FinetuneConfig

SHAPES = {"fmnist_cnn": (1, 28, 28), "resnet18": (3, 64, 64), "mobilenet_v2": (3, 64, 64)}
KNOBS = [
    LayerKnobs(0.0, 8, 8),
    LayerKnobs(0.25, 6, 8),
    LayerKnobs(0.5, 4, 8),
    LayerKnobs(0.5, 4, 6),
]


@dataclass(frozen=True)
class Setup:
    model: str
    device: str
    steps: int = 20
    batch_size: int = 64
    val_samples: int = 512
    evaluations: int = 4


@contextlib.contextmanager
def legacy_syncs() -> Iterator[None]:
    """The pre-fix hot loop: the loss read every step, quantizer state read every forward."""
    forward = ActivationQuantizer.forward
    every = train_module.CHECK_EVERY

    def reading(self: ActivationQuantizer, x: torch.Tensor) -> torch.Tensor:
        if self.bits < 32:
            bool(self.calibrated), float(self.max_abs), bool(self.signed)
        return forward(self, x)

    ActivationQuantizer.forward = reading
    train_module.CHECK_EVERY = 1
    try:
        yield
    finally:
        ActivationQuantizer.forward = forward
        train_module.CHECK_EVERY = every


def _splits(model: str, seed: int = 0) -> DataSplits:
    shape = SHAPES[model]
    generator = torch.Generator().manual_seed(seed)

    def part(count: int) -> TensorDataset:
        x = torch.randn((count, *shape), generator=generator)
        return TensorDataset(x, torch.randint(0, 10, (count,), generator=generator))

    return DataSplits(part(2048), part(512), part(512), 10, shape, "random")


def run(setup: Setup, variant: str, threads: int, share: float = 1.0) -> tuple[int, float]:
    """Evaluations done and seconds taken by one evaluator process."""
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(0)
    device = setup.device
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        if share < 1:
            torch.cuda.set_per_process_memory_fraction(share, torch.device(device).index or 0)
    model = build_model(setup.model, 10, SHAPES[setup.model][0]).eval()
    graph = analyze(model, torch.zeros(1, *SHAPES[setup.model]))
    splits = _splits(setup.model)
    if variant != "before":
        splits = on_device(splits, device)
    model = model.to(device)
    settings = ScoreSettings(
        finetune=FinetuneConfig(steps=setup.steps, batch_size=setup.batch_size),
        val_samples=setup.val_samples,
        latency_repeats=5,
        amp="bf16" if variant.endswith("amp") else "off",
    )
    policies = [build_policy(model, graph, KNOBS[i % len(KNOBS)]) for i in range(setup.evaluations)]
    score_policy(model, policies[0], graph, splits, settings, device)  # warm-up (kernels, caches)
    context = legacy_syncs() if variant == "before" else contextlib.nullcontext()
    with context:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for policy in policies:
            score_policy(model, policy, graph, splits, settings, device)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
    return len(policies), time.perf_counter() - started


def _child(args: tuple) -> tuple[int, float]:
    return run(*args)


def per_minute(setup: Setup, variant: str, threads: int, processes: int = 1) -> float:
    """Evaluations per minute of ``processes`` evaluators sharing the device."""
    if processes == 1:
        done, seconds = run(setup, variant, threads)
        return 60.0 * done / seconds
    share = 1.0 / processes
    each = (setup, variant, max(1, threads // processes), share)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_child, [each] * processes)
    # the slowest process bounds the wall time; warm-up excluded (each timed its own loop)
    seconds = max(s for _, s in results)
    return 60.0 * sum(d for d, _ in results) / seconds


def table(models: list[str], device: str, threads: int, variants: list[str]) -> list[str]:
    """Markdown rows: model, then evaluations per minute per variant, and after/before."""
    head = "| model | " + " | ".join(variants) + " | after / before |"
    rows = [head, "|" + "---|" * (len(variants) + 2)]
    for model in models:
        setup = Setup(model, device)
        values = {}
        for variant in variants:
            processes = 2 if variant.startswith("2 per") else 1
            base = "after+amp" if "amp" in variant else "after"
            name = variant if processes == 1 else base
            values[variant] = per_minute(setup, name, threads, processes)
        ratio = values.get("after", float("nan")) / values.get("before", float("nan"))
        cells = " | ".join(f"{values[v]:.1f}" for v in variants)
        rows.append(f"| {model} | {cells} | {ratio:.2f}x |")
        print(rows[-1], flush=True)
    return rows
