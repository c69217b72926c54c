"""The `make search` demo next to the other search methods at the same number of episodes.

Runs ``tune_configs/digits_demo.yaml`` once per method and seed (one after the other, in a
folder and MLflow store of its own), and prints per search: the mean validation accuracy per
quarter of the episodes (``ajpq.search.record.learning_curve``: a search that learns rises,
random search stays flat), the best policy's validation accuracy, episode and compression,
its test accuracy (the search's final report), and the wall time.

A method may carry the sample-efficiency levers after a ``+`` (``ddpg+prior``,
``ddpg+prior+screen+norm``): ``prior`` clones the uniform policy into the actor
(``agent.prior=uniform``), ``screen`` scores one proposal in 4 (``agent.screen=4``), ``norm``
normalises rewards (``agent.reward_normalize=true``).

Usage: python bench/bench_demo.py [--config tune_configs/digits_demo.yaml]
       [--methods ddpg,ddpg+prior,random,tpe] [--seeds 0,1,2] [--episodes N]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from ajpq.run.driver import run_search
from ajpq.run.report import SearchOutcome
from ajpq.search.config import load_config

LEVERS = {
    "prior": ["agent.prior=uniform"],
    "screen": ["agent.screen=4"],
    "norm": ["agent.reward_normalize=true"],
}
PLAIN = ["agent.prior=none", "agent.screen=1", "agent.reward_normalize=false"]


def search(
    config_path: str, root: Path, method: str, seed: int, episodes: int | None
) -> tuple[SearchOutcome, float]:
    name, *levers = method.split("+")
    overrides = [
        f"method={name}",
        *PLAIN,  # a method's label says every lever it runs with (the defaults have two)
        *[o for lever in levers for o in LEVERS[lever]],
        f"agent.seed={seed}",
        f"output_dir={root}/runs",
        f"tracking.uri=sqlite:///{root}/mlflow.db",
    ]
    if episodes:
        overrides.append(f"agent.episodes={episodes}")
    started = time.time()
    outcome = run_search(load_config(config_path, overrides))
    return outcome, time.time() - started


def row(method: str, seed: int, outcome: SearchOutcome, wall_s: float) -> str:
    best = outcome.best
    if best is None:
        return f"| {method} | {seed} | no successful evaluation (see {outcome.run_dir}) |"
    curve = " / ".join(f"{value:.4f}" for value in outcome.curve)
    return (
        f"| {method} | {seed} | {curve} | {best.accuracy:.4f} (episode {best.episode}) | "
        f"{best.compression_ratio:.1f}x | {outcome.best_test_accuracy:.4f} | "
        f"{outcome.stats.get('screened', 0)} | {wall_s:.0f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tune_configs/digits_demo.yaml")
    parser.add_argument("--methods", default="ddpg+prior+screen,random,tpe")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--episodes", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    methods = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, curves = [], {m: [] for m in methods}
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as folder:
        root = Path(folder)
        for method in methods:
            for seed in seeds:
                outcome, wall_s = search(args.config, root, method, seed, args.episodes)
                rows.append(row(method, seed, outcome, wall_s))
                curves[method].append(outcome.curve)
                print(rows[-1], flush=True)
    print(f"\n{args.config}, {len(seeds)} seed(s) per method")
    print(
        "| method | seed | mean val acc per quarter of the episodes | best val acc | ratio | "
        "best's test acc | proposals screened out | wall |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for line in rows:
        print(line)
    print("\nmean over seeds, per quarter:")
    for method, per_seed in curves.items():
        quarters = [statistics.mean(values) for values in zip(*per_seed)]
        print(f"  {method:8s} " + " / ".join(f"{value:.4f}" for value in quarters))


if __name__ == "__main__":
    main()
