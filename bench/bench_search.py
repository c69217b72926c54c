"""Evaluator pool throughput and orchestration overhead on this machine (digits CNN).

Scores the same set of random in-budget policies through the EvaluatorPool with 1 and with 2
evaluators (as many concurrent clients as evaluators, like env runners), MLflow included.
Overhead per evaluation = the client's wall time minus the time inside finetune and evaluate.
Usage: python bench/bench_search.py [--policies 12] [--finetune-steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import ray

from ajpq.core.budget import Budget, enforce_budget
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.cost import CostModel
from ajpq.run.context_source import publish_context
from ajpq.run.pool import EvaluatorPool
from ajpq.run.tracking import Tracker
from ajpq.search.config import SearchConfig
from ajpq.search.context import data_source_for, prepare_context


def random_policies(context, count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    costs = CostModel(context.graph)
    out = []
    for _ in range(count):
        knobs = [
            LayerKnobs(float(rng.uniform(0, 0.5)), int(rng.integers(3, 9)), int(rng.integers(4, 9)))
            for _ in context.graph.layers
        ]
        policy = build_policy(context.model, context.graph, knobs, model_name="digits_cnn")
        out.append(enforce_budget(policy, Budget("size", 0.1), costs, context.importance).to_json())
    return out


def measure(root: Path, evaluators: int, policies: list[str], steps: int) -> dict[str, float]:
    config = SearchConfig.from_dict(
        {
            "evaluator": {"num_evaluators": evaluators},
            "scoring": {"finetune": {"steps": steps}, "latency_repeats": 5},
            "tracking": {"uri": f"sqlite:///{root}/mlflow-{evaluators}.db", "experiment": "bench"},
            "output_dir": str(root),
        }
    )
    context, splits = prepare_context(config)
    tracker = Tracker(config.tracking.uri, config.tracking.experiment)
    parent = tracker.start_search(f"bench-{evaluators}", {}, {})
    pool = EvaluatorPool.remote(publish_context(context, data_source_for(config, splits)), parent)
    ray.get(pool.wait_ready.remote())

    def client(policy_json: str) -> tuple[float, dict]:
        start = time.perf_counter()
        record = ray.get(pool.evaluate.remote(policy_json))
        return time.perf_counter() - start, record

    start = time.perf_counter()
    with ThreadPoolExecutor(evaluators) as executor:
        results = list(executor.map(client, policies))
    ray.get(pool.flush.remote())
    wall = time.perf_counter() - start
    ray.kill(pool)
    inside = [r["finetune_s"] + r["eval_s"] for _, r in results]
    overhead = [t - i for (t, _), i in zip(results, inside)]
    return {
        "per_minute": len(policies) / wall * 60,
        "eval_s": statistics.mean(inside),
        "overhead_s": statistics.mean(overhead),
        "share": statistics.mean(overhead) / statistics.mean(inside),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=12)
    parser.add_argument("--finetune-steps", type=int, default=40)
    args = parser.parse_args()
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="ajpq-bench-"))
    config = SearchConfig.from_dict({"output_dir": str(root)})
    context, _ = prepare_context(config)
    policies = random_policies(context, args.policies, seed=0)
    rows = {n: measure(root, n, policies, args.finetune_steps) for n in (1, 2)}
    print(
        f"digits_cnn, {args.policies} distinct policies, {args.finetune_steps} finetune steps, MLflow on SQLite"
    )
    print(
        f"{'evaluators':>10} {'evals/min':>10} {'ratio':>7} {'eval s':>8} {'overhead s':>11} {'overhead %':>11}"
    )
    for n, row in rows.items():
        ratio = row["per_minute"] / rows[1]["per_minute"]
        print(
            f"{n:>10} {row['per_minute']:>10.1f} {ratio:>6.2f}x {row['eval_s']:>8.3f} "
            f"{row['overhead_s']:>11.3f} {100 * row['share']:>10.1f}%"
        )
    print("goal: overhead <= 5% of evaluation time")


if __name__ == "__main__":
    main()
