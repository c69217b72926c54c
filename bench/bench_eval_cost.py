"""What a finetune step costs against fp32 (issue 22), masked (full-size network with masks)
vs physically pruned simulation, per model, channel sparsity and bit widths. One run, ratios of
medians measured side by side.

Then evaluations per hour before (masked, ``scoring.pruned: false``) and after (pruned): one
whole ``score_policy`` call (finetune ``--eval-steps`` steps, validate ``--val`` images, measure
latency) of a w4a8 policy per channel sparsity, on random data, timed side by side.

Usage: python bench/bench_eval_cost.py [--models digits_cnn fmnist_cnn resnet18] [--steps 12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from ajpq.core.analysis import analyze
from ajpq.core.apply import apply_policy
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.pruned import apply_pruned
from ajpq.task.data import DataSplits
from ajpq.task.models import build_model
from ajpq.task.scoring import ScoreSettings, score_policy
from ajpq.task.train import FinetuneConfig

SHAPE = {"digits_cnn": (1, 16, 16), "fmnist_cnn": (1, 28, 28)}
BITS = {"w8a8": (8, 8, 0.0), "w4a8": (4, 8, 0.0), "mixed w2-6 a4": (4, 4, 1.0)}


def _step_ms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    times = []
    for step in range(steps + 2):
        started = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 2:  # warm-up: allocator, calibration
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["digits_cnn", "fmnist_cnn", "resnet18"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--val", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"finetune step time / fp32's (batch {args.batch}, {args.threads} threads, median)\n")
    rows = [
        "| model | bits | channels pruned | MACs kept | fp32 ms | masked | pruned |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in args.models:
        model, graph, shape = _network(name)
        x = torch.randn(args.batch, *shape)
        y = torch.randint(0, 10, (args.batch,))
        fp32 = _step_ms(model, x, y, args.steps)
        total = sum(layer.macs for layer in graph.layers)
        for label, (wbits, abits, spread) in BITS.items():
            for sparsity in (0.0, 0.25, 0.5, 0.75):
                knobs = [
                    LayerKnobs(sparsity, wbits, abits, spread, min_bits=2, max_bits=6)
                    if spread
                    else LayerKnobs(sparsity, wbits, abits)
                    for _ in graph.layers
                ]
                policy = build_policy(model, graph, knobs, model_name=name)
                masked = _step_ms(apply_policy(model, policy, graph), x, y, args.steps)
                small = apply_pruned(model, policy, graph)
                pruned = _step_ms(small, x, y, args.steps)
                kept = _kept_macs(small, shape) / total
                rows.append(
                    f"| {name} | {label} | {sparsity:.0%} | {kept:.2f} | {fp32:.1f} | "
                    f"{masked / fp32:.2f}x | {pruned / fp32:.2f}x |"
                )
                print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    print("\n" + "\n".join(_per_hour(args)))


def _per_hour(args: argparse.Namespace) -> list[str]:
    """Evaluations per hour of the whole default scorer, masked (before) vs pruned (after)."""
    rows = [
        f"evaluations per hour (score_policy: {args.eval_steps} finetune steps of "
        f"{args.batch}, {args.val} validation images, latency; w4a8; median of 3)\n",
        "| model | channels pruned | masked (before) | pruned (after) | after / before |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in args.models:
        model, graph, shape = _network(name)
        data = TensorDataset(torch.randn(args.val, *shape), torch.randint(0, 10, (args.val,)))
        splits = DataSplits(data, data, data, 10, shape)
        tune = FinetuneConfig(steps=args.eval_steps, batch_size=args.batch)
        for sparsity in (0.0, 0.5, 0.75):
            knobs = [LayerKnobs(sparsity, 4, 8) for _ in graph.layers]
            policy = build_policy(model, graph, knobs, model_name=name)
            both = [
                ScoreSettings(finetune=tune, val_samples=args.val, latency_repeats=3, pruned=p)
                for p in (False, True)
            ]
            for settings in both:
                score_policy(model, policy, graph, splits, settings)  # warm-up
            seconds: list[list[float]] = [[], []]
            for _ in range(3):  # interleaved, so drifts in the machine's speed hit both
                for times, settings in zip(seconds, both):
                    started = time.perf_counter()
                    score_policy(model, policy, graph, splits, settings)
                    times.append(time.perf_counter() - started)
            per_hour = [3600 / statistics.median(times) for times in seconds]
            rows.append(
                f"| {name} | {sparsity:.0%} | {per_hour[0]:,.0f} | {per_hour[1]:,.0f} | "
                f"{per_hour[1] / per_hour[0]:.2f}x |"
            )
            print(rows[-1], flush=True)
    return rows


def _network(name: str) -> tuple[nn.Module, object, tuple[int, ...]]:
    """The zoo network (seeded), its graph and input shape."""
    shape = SHAPE.get(name, (3, 64, 64))
    torch.manual_seed(0)
    model = build_model(name, 10, shape[0])
    return model, analyze(model, torch.zeros(1, *shape)), shape


def _kept_macs(model: nn.Module, shape: tuple[int, ...]) -> float:
    """MACs of the pruned network's compressible layers (measured by tracing it again)."""
    from ajpq.core.apply import FakeQuantLayer

    wrapped = [m for m in model.modules() if isinstance(m, FakeQuantLayer)]
    macs = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        weight = module.layer.weight  # the wrapper computes the layer itself
        per_out = int(np.prod(weight.shape[1:]))
        spatial = int(np.prod(output.shape[2:])) if output.dim() > 2 else 1
        macs.append(weight.shape[0] * per_out * spatial)

    handles = [m.register_forward_hook(hook) for m in wrapped]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for handle in handles:
        handle.remove()
    return float(sum(macs))


if __name__ == "__main__":
    main()
