"""The demo sweep with trials one at a time vs two at a time: wall time and evaluator busy share.

Runs ``tune_configs/sweep_demo.yaml`` (digits CNN, 2 budgets x 2 seeds, real finetune-and-score
evaluations) twice on this machine, with ``sweep.max_concurrent_trials`` 1 and 2, each in its own
folder and MLflow store, and prints a table from what MLflow recorded:

- wall: the whole sweep (``ajpq sweep`` minus process start-up), and its ratio to one-at-a-time;
- evaluations/min over the sweep;
- busy: the share of time evaluators were evaluating while their trial's search ran
  (sum of evaluation spans / sum over trials of search run time x evaluators per trial);
- best validation accuracy found, and the Pareto front's size.

Usage: python bench/bench_sweep.py [--config tune_configs/sweep_demo.yaml] [--episodes N]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient

from ajpq.run.sweep import run_sweep
from ajpq.search.sweep_config import load_sweep


def measure(config_path: str, root: Path, concurrent: int, episodes: int | None) -> dict:
    overrides = [
        f"sweep.max_concurrent_trials={concurrent}",
        f"output_dir={root}/runs",
        f"tracking.uri=sqlite:///{root}/mlflow.db",
    ]
    if episodes:
        overrides.append(f"agent.episodes={episodes}")
    config = load_sweep(config_path, overrides)
    started = time.time()
    outcome = run_sweep(config)
    wall = time.time() - started
    ray.shutdown()
    client = MlflowClient(config.base.tracking.uri)
    experiment = client.get_experiment_by_name(config.base.tracking.experiment)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`ajpq.sweep` = '{outcome.sweep_run_id}'",
        max_results=10000,
    )
    searches = [r for r in runs if r.data.tags.get("ajpq.role") == "search"]
    policies = [r for r in runs if r.data.tags.get("ajpq.role") == "policy"]
    busy = sum(
        float(r.data.tags.get("ajpq.eval_end_ts", 0.0))
        - float(r.data.tags.get("ajpq.eval_start_ts", 0.0))
        for r in policies
    )
    slots = sum(
        (r.info.end_time - r.info.start_time) / 1000.0 * config.base.evaluator.num_evaluators
        for r in searches
        if r.info.end_time
    )
    return {
        "concurrent": concurrent,
        "wall_s": wall,
        "policies": len(policies),
        "per_min": len(policies) / wall * 60.0,
        "busy": busy / slots if slots else float("nan"),
        "best": max((t["accuracy"] for t in outcome.trials), default=float("nan")),
        "front": len(outcome.front),
        "png": outcome.files.get("pareto_png"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tune_configs/sweep_demo.yaml")
    parser.add_argument("--episodes", type=int, default=None, help="override agent.episodes")
    parser.add_argument(
        "--out", default="ajpq_runs/bench_sweep", help="where the sweeps' runs and MLflow go"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    out = Path(args.out).resolve() / time.strftime("%Y%m%d-%H%M%S")
    for concurrent in (1, 2):
        root = out / f"c{concurrent}"
        root.mkdir(parents=True)
        rows.append(measure(args.config, root, concurrent, args.episodes))
        print(f"done: {concurrent} at a time, {rows[-1]['wall_s']:.0f} s", flush=True)
    base = rows[0]["wall_s"]
    print(f"\n{args.config}: 4 trials (2 budgets x 2 seeds), one evaluator and env runner each")
    print(
        "| trials at a time | wall | vs one at a time | policies | evals/min | evaluators busy "
        "| best val acc | Pareto points |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['concurrent']} | {row['wall_s']:.0f} s | {base / row['wall_s']:.2f}x "
            f"| {row['policies']} | {row['per_min']:.1f} | {row['busy']:.2f} | {row['best']:.4f} "
            f"| {row['front']} |"
        )
    print(f"\nPareto plots: {', '.join(str(row['png']) for row in rows)}")


if __name__ == "__main__":
    main()
