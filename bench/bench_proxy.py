"""Which cheap score ranks policies like the long recipe does (issue 22, results/proxy.md).

Samples ``--policies`` policies as the random search proposes them (random actions, budget
enforced and filled), then scores every policy with every proxy setting and with the truth:
the final report's recipe (``--long-steps`` finetune steps, scored on the whole test split).
A proxy setting is a number of finetune steps (0 / 20 / 60 / 200), with or without BatchNorm
recalibration (``--bn-batches`` training batches) afterwards, scored on the first 2,000 or on
``--val-large`` validation images (the whole split when smaller). Prints, per setting, the rank
correlation with the truth (Spearman, its 95% bootstrap interval over policies, and Kendall)
and what one evaluation costs (finetune + recalibration + validation seconds, one thread,
median over policies; the latency measurement every setting shares is left out).

One finetune per step count serves both validation sizes and the with/without recalibration
pair (recalibration runs after the finetune, on a copy), so the bench composes the steps of
``score_policy`` (simulate, finetune, recalibrate_bn, evaluate); it checks once that its
60-step score equals ``score_policy``'s for the same policy.

Usage: python bench/bench_proxy.py [--config tune_configs/fmnist_baselines.yaml]
       [--budget 0.0625] [--policies 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ajpq.core.configtypes import ConfigError
from ajpq.core.policy import CompressionPolicy
from ajpq.core.pruned import simulate
from ajpq.run.fidelity import rank_correlations
from ajpq.search.config import load_config
from ajpq.search.context import SearchContext, prepare_context
from ajpq.search.env import CompressionEnv
from ajpq.search.methods import RandomProposer
from ajpq.search.sweep_config import load_sweep
from ajpq.task.data import load_dataset
from ajpq.task.scoring import score_policy
from ajpq.task.train import evaluate, finetune, recalibrate_bn

STEPS = (0, 20, 60, 200)


def sample_policies(context: SearchContext, count: int, seed: int) -> list[CompressionPolicy]:
    """``count`` policies as the random search proposes them (budget enforced and filled)."""
    captured: list[CompressionPolicy] = []

    def capture(policy: CompressionPolicy) -> dict[str, Any]:
        captured.append(policy)
        return {"reward": 0.0}

    env = CompressionEnv(context, capture)
    proposer = RandomProposer(len(env.order), seed)
    for _ in range(count):
        env.play(proposer.ask()[1])
    return captured


def _score_one(job: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """Every proxy setting and the truth of one policy (one thread, in a worker process)."""
    context_dir, policy_json, args = job
    torch.set_num_threads(1)
    context = SearchContext.load(context_dir)
    splits = load_dataset(context.config.data)
    policy = CompressionPolicy.from_json(policy_json)
    settings = context.config.scoring
    row: dict[str, Any] = {}
    started = time.perf_counter()
    model = simulate(context.model, policy, context.graph, pruned=settings.pruned)
    long = dataclasses.replace(settings.finetune, steps=args["long_steps"])
    finetune(model, splits.train, long, "cpu", **settings.compute)
    row["truth"] = evaluate(model, splits.test, "cpu", **settings.compute).top1
    row["truth_s"] = time.perf_counter() - started
    for steps in args["steps"]:
        recipe = dataclasses.replace(settings.finetune, steps=steps)
        started = time.perf_counter()
        model = simulate(context.model, policy, context.graph, pruned=settings.pruned)
        finetune(model, splits.train, recipe, "cpu", **settings.compute)
        row[f"ft{steps}_s"] = time.perf_counter() - started
        started = time.perf_counter()
        recal = copy.deepcopy(model)
        recalibrate_bn(
            recal, splits.train, args["bn_batches"], recipe.batch_size, "cpu", recipe.seed
        )
        row[f"bn{steps}_s"] = time.perf_counter() - started
        for tag, net in (("", model), ("+bn", recal)):
            for size in args["val_sizes"]:
                started = time.perf_counter()
                acc = evaluate(net, splits.val, "cpu", max_samples=size, **settings.compute).top1
                row[f"{steps}{tag}@{size}_s"] = time.perf_counter() - started
                row[f"{steps}{tag}@{size}"] = acc
    if args["check"]:  # the composed steps are score_policy's
        check = dataclasses.replace(
            settings,
            finetune=dataclasses.replace(settings.finetune, steps=60),
            val_samples=args["val_sizes"][0],
            bn_recalibration_batches=0,
        )
        real = score_policy(context.model, policy, context.graph, splits, check, "cpu").accuracy
        mine = row[f"60@{args['val_sizes'][0]}"]
        if abs(real - mine) > 1e-9:
            raise AssertionError(f"the bench's 60-step score {mine} != score_policy's {real}")
    return row


def _bootstrap(cheap: list[float], truth: list[float], seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    values = []
    n = len(cheap)
    for _ in range(1000):
        idx = rng.integers(0, n, n)
        rho, _ = rank_correlations([cheap[i] for i in idx], [truth[i] for i in idx])
        if not np.isnan(rho):
            values.append(rho)
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="tune_configs/fmnist_baselines.yaml")
    parser.add_argument("--budget", type=float, default=0.0625)
    parser.add_argument("--policies", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--long-steps", type=int, default=300)
    parser.add_argument("--bn-batches", type=int, default=50)
    parser.add_argument("--val-small", type=int, default=2000)
    parser.add_argument("--val-large", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    args = parser.parse_args()
    overrides = [f"budget.value={args.budget}"]
    try:
        config = load_config(args.config, overrides)
    except ConfigError:  # a sweep file: its search settings
        config = load_sweep(args.config, overrides).base
    started = time.time()
    context, splits = prepare_context(config)
    val_sizes = sorted({min(args.val_small, len(splits.val)), min(args.val_large, len(splits.val))})
    policies = sample_policies(context, args.policies, args.seed)
    shared = {
        "long_steps": args.long_steps,
        "bn_batches": args.bn_batches,
        "val_sizes": val_sizes,
        "steps": args.steps,
    }
    with tempfile.TemporaryDirectory() as tmp:
        context.save(Path(tmp) / "context")
        jobs = [
            (
                str(Path(tmp) / "context"),
                p.to_json(),
                {**shared, "check": i == 0 and 60 in args.steps},
            )
            for i, p in enumerate(policies)
        ]
        with ProcessPoolExecutor(args.workers) as pool:
            rows = list(pool.map(_score_one, jobs))
    truth = [r["truth"] for r in rows]
    print(
        f"{config.model} on {config.data.name.value}, budget {config.budget.kind.value} "
        f"{args.budget:g}: {len(rows)} random-search policies (seed {args.seed}); truth = "
        f"{args.long_steps} finetune steps, test split ({len(splits.test)} images); "
        f"truth spread sd {statistics.pstdev(truth):.4f}, range {min(truth):.4f}-"
        f"{max(truth):.4f}; {(time.time() - started) / 60:.0f} min\n"
    )
    print(
        "| proxy | val images | Spearman | 95% interval | Kendall | s / evaluation |\n"
        "|---|---:|---:|---|---:|---:|"
    )
    for steps in args.steps:
        for tag, label in (("", ""), ("+bn", f" + BN recal ({args.bn_batches} batches)")):
            for size in val_sizes:
                cheap = [r[f"{steps}{tag}@{size}"] for r in rows]
                rho, tau = rank_correlations(cheap, truth)
                low, high = _bootstrap(cheap, truth)
                cost = statistics.median(
                    r[f"ft{steps}_s"]
                    + (r[f"bn{steps}_s"] if tag else 0.0)
                    + r[f"{steps}{tag}@{size}_s"]
                    for r in rows
                )
                name = f"{steps} steps{label}"
                print(
                    f"| {name} | {size} | {rho:.2f} | {low:.2f} to {high:.2f} | {tau:.2f} "
                    f"| {cost:.1f} |"
                )


if __name__ == "__main__":
    main()
