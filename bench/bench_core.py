"""Benchmark of the compression core on this machine (digits CNN).

Prints a table: fp32 vs fake-quantized train-step time (goal: ratio <= 1.5x), and fp32 vs
materialized latency at 50% channel sparsity. Baselines are measured in the same run.
Usage: python bench/bench_core.py [--steps 60] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from ajpq.core.analysis import analyze
from ajpq.core.apply import apply_policy
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.cost import CostModel, measure_latency
from ajpq.core.materialize import materialize
from ajpq.task.data import DataConfig, load_dataset
from ajpq.task.pretrain import default_cache_dir, pretrained_model


def train_step_ms(
    models: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor, steps: int, block: int = 10
) -> list[float]:
    """Median train-step time of each model; models alternate in blocks so drift hits all alike."""
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]
    times: list[list[float]] = [[] for _ in models]
    for m in models:
        m.train()
    for round_index in range(steps // block + 1):
        for index, (model, optimizer) in enumerate(zip(models, optimizers)):
            for _ in range(block):
                start = time.perf_counter()
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if round_index > 0:  # the first round warms up
                    times[index].append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = DataConfig("digits")
    splits = load_dataset(config)
    cache = default_cache_dir() if default_cache_dir().parent.exists() else Path(tempfile.mkdtemp())
    model = pretrained_model("digits_cnn", config, splits, cache_dir=cache).model
    graph = analyze(model, torch.zeros(1, *splits.input_shape))
    x, y = splits.train.tensors[0][: args.batch_size], splits.train.tensors[1][: args.batch_size]

    rows = []
    quant_policy = build_policy(model, graph, LayerKnobs(0.0, 4, 8, spread=1.0))
    joint_policy = build_policy(model, graph, LayerKnobs(0.5, 4, 8, spread=1.0))
    fp32_step, fq_step, joint_step = train_step_ms(
        [
            copy.deepcopy(model),
            apply_policy(model, quant_policy, graph),
            apply_policy(model, joint_policy, graph),
        ],
        x,
        y,
        args.steps,
    )
    rows.append(("train step, fp32 (baseline)", fp32_step, 1.0))
    rows.append(("train step, fake-quant w4/a8", fq_step, fq_step / fp32_step))
    rows.append(("train step, 50% pruned + w4/a8", joint_step, joint_step / fp32_step))

    sparse = build_policy(model, graph, LayerKnobs(0.5, 32, 32))
    small = materialize(model, sparse, graph)
    for batch in (1, 64):
        base = measure_latency(model, splits.input_shape, batch, "cpu", warmup=10, repeats=50)
        pruned = measure_latency(small, splits.input_shape, batch, "cpu", warmup=10, repeats=50)
        rows.append((f"latency bs={batch}, fp32 (baseline)", base, 1.0))
        rows.append((f"latency bs={batch}, materialized 50% sparsity", pruned, pruned / base))
    cost = CostModel(graph).cost(sparse)

    print(f"digits_cnn, {args.threads} threads, batch {args.batch_size}, torch {torch.__version__}")
    print(f"{'measurement':<44} {'ms':>10} {'ratio':>8}")
    for name, ms, ratio in rows:
        print(f"{name:<44} {ms:>10.3f} {ratio:>7.2f}x")
    print(
        f"50% sparsity: MACs ratio {cost.macs / cost.fp32_macs:.3f}, params ratio "
        f"{sum(p.numel() for p in small.parameters()) / sum(p.numel() for p in model.parameters()):.3f}"
    )
    verdict = "meets" if fq_step / fp32_step <= 1.5 else "misses"
    print(f"goal fake-quant train step <= 1.5x fp32: {verdict} ({fq_step / fp32_step:.2f}x)")


if __name__ == "__main__":
    main()
