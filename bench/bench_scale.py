"""Orchestration throughput at scale: whole searches whose scorer only sleeps.

On a simulated multi-node cluster (``ray.cluster_utils.Cluster``: a head without GPUs and two
worker nodes with fake GPUs), runs a full search (DDPG with asynchronous sampling, evaluator
pool, MLflow on SQLite, checkpoints) with E evaluators (half a fake GPU each) and E env runners,
for E = 1, 2, 4, 8. The scorer (``ajpq.task.scoring:sleep_scorer``) sleeps a random 1-3 s and does no
work, so any shortfall is orchestration: efficiency = evaluations per second / (E / mean
duration) = the share of time evaluators were busy, measured from the first evaluation's start
to the last one's end. "steady" is the same share until the first evaluator runs out of work,
i.e. without the last round's tail (evaluators idle because the episode budget is spent), which
a longer search amortises. Start-up (Ray actors, env runners) is reported separately.

A last row runs the largest E with ``--extra-runners`` more env runners than evaluators.

Usage: python bench/bench_scale.py [--sizes 1 2 4 8] [--rounds 20] [--extra-runners 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from ajpq.run.driver import run_search
from ajpq.run.rundir import RunDir
from ajpq.search.config import SearchConfig


def measure(
    address: str, root: Path, evaluators: int, runners: int, rounds: int
) -> dict[str, float]:
    config = SearchConfig.from_dict(
        {
            "model": "digits_cnn",
            "budget": {"kind": "size", "value": 0.1},
            "agent": {
                "episodes": rounds * evaluators,
                "warmup_episodes": 2 * evaluators,
                "env_runners": runners,
                "seed": 0,
            },
            "evaluator": {
                "num_evaluators": evaluators,
                "num_cpus": 0.25,
                "num_gpus": 0.5,
                "scorer": "ajpq.task.scoring:sleep_scorer",
                "scorer_args": {"min_s": 1.0, "max_s": 3.0},
            },
            "tracking": {"uri": f"sqlite:///{root}/mlflow.db", "experiment": f"scale-{evaluators}"},
            "output_dir": str(root / "runs"),
            "ray_address": address,
        }
    )
    started = time.time()
    outcome = run_search(config)
    total = time.time() - started
    records = json.loads(RunDir(outcome.run_dir).records.read_text())
    starts = [r["eval_start_ts"] for r in records]
    ends = [r["eval_end_ts"] for r in records]
    durations = [e - s for s, e in zip(starts, ends)]
    span = max(ends) - min(starts)
    rate = len(records) / span
    ideal = evaluators / statistics.mean(durations)
    # steady state: until the first evaluator has nothing left to do (the last round's tail,
    # where evaluators idle because the episode budget is spent, is excluded)
    by_evaluator: dict[int, list[tuple[float, float]]] = {}
    for record in records:
        by_evaluator.setdefault(record["pid"], []).append(
            (record["eval_start_ts"], record["eval_end_ts"])
        )
    window_end = min(max(end for _, end in spans) for spans in by_evaluator.values())
    busy = sum(
        max(0.0, min(end, window_end) - start)
        for spans in by_evaluator.values()
        for start, end in spans
    )
    steady = busy / (evaluators * (window_end - min(starts)))
    return {
        "evaluations": len(records),
        "failed": sum(bool(r["failed"]) for r in records),
        "mean_s": statistics.mean(durations),
        "rate": rate,
        "ideal": ideal,
        "efficiency": rate / ideal,
        "steady": steady,
        "startup_s": min(starts) - started,
        "total_s": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=20, help="evaluations per evaluator")
    parser.add_argument("--extra-runners", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    gpus_per_node = max(1, (max(args.sizes) + 3) // 4)  # evaluators take half a GPU each
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=8, num_gpus=gpus_per_node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, namespace="ajpq")
    root = Path(tempfile.mkdtemp(prefix="ajpq-scale-"))
    runs = [(size, size) for size in args.sizes]
    if args.extra_runners:
        runs.append((max(args.sizes), max(args.sizes) + args.extra_runners))
    rows = {}
    try:
        for size, runners in runs:
            folder = root / f"e{size}-r{runners}"
            rows[size, runners] = measure(cluster.address, folder, size, runners, args.rounds)
            print(f"E={size} R={runners}: {rows[size, runners]}", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print()
    print(
        "sleep scorer 1-3 s, E evaluators (0.5 fake GPU each) + R env runners, "
        f"{args.rounds} evaluations per evaluator, 2 simulated GPU nodes"
    )
    print(
        f"{'E':>3} {'R':>3} {'evals':>6} {'mean s':>7} {'evals/s':>8} {'ideal/s':>8} {'efficiency':>11} "
        f"{'steady':>7} "
        f"{'start-up s':>11} {'total s':>8}"
    )
    for (size, runners), row in rows.items():
        print(
            f"{size:>3} {runners:>3} {row['evaluations']:>6} {row['mean_s']:>7.2f} {row['rate']:>8.2f} "
            f"{row['ideal']:>8.2f} {row['efficiency']:>11.2f} {row['steady']:>7.2f} "
            f"{row['startup_s']:>11.1f} "
            f"{row['total_s']:>8.1f}"
        )
    print("goal: efficiency >= 0.9 at E=8 with R=E")


if __name__ == "__main__":
    main()
