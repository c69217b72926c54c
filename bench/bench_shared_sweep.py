"""A sweep learns once: DDPG searches of three budgets, independent vs sharing experience.

Independent: one DDPG search per budget, ``--episodes`` each. Shared: the same budgets one after
the other with one experience folder (what ``sweep.share_experience`` gives each trial of a
sweep run one trial at a time: the scores journal and the agent of the trial before), with
``--shared-episodes`` each, so the three together cost less than twice one independent search.
Prints, per budget and seed, each side's best policy (the search's own choice) and its test
accuracy from the search's final report, and the evaluations each side paid.

Usage: python bench/bench_shared_sweep.py [--config tune_configs/fmnist_table.yaml]
       [--budgets 0.125,0.0625,0.03125] [--episodes 48] [--shared-episodes 30] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from ajpq.run.driver import run_search
from ajpq.run.report import SearchOutcome
from ajpq.search.config import SearchConfig


def search(base: dict, root: Path, budget: float, seed: int, episodes: int, shared: Path | None):
    data = {
        **base,
        "method": "ddpg",
        "budget": {**base["budget"], "value": budget},
        "agent": {**base["agent"], "seed": seed, "episodes": episodes},
        "output_dir": str(root / "runs"),
        "tracking": {**base.get("tracking", {}), "uri": f"sqlite:///{root}/mlflow.db"},
        "experience_dir": str(shared) if shared else None,
    }
    started = time.time()
    outcome = run_search(SearchConfig.from_dict(data))
    return outcome, time.time() - started


def cell(outcome: SearchOutcome) -> str:
    best = outcome.best
    if best is None:
        return "none"
    return (
        f"{outcome.best_test_accuracy:.4f} (val {best.accuracy:.4f}, {best.compression_ratio:.1f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tune_configs/fmnist_table.yaml")
    parser.add_argument("--budgets", default="0.125,0.0625,0.03125")
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--shared-episodes", type=int, default=30)
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = yaml.safe_load(Path(args.config).read_text())
    base.pop("sweep", None)
    budgets = [float(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    lines, gains = [], []
    evaluations = {"independent": 0, "shared": 0}
    with tempfile.TemporaryDirectory(prefix="bench_shared_") as folder:
        root = Path(folder)
        for seed in seeds:
            shared = root / f"experience-{seed}"
            for budget in budgets:
                alone, alone_s = search(base, root, budget, seed, args.episodes, None)
                together, together_s = search(
                    base, root, budget, seed, args.shared_episodes, shared
                )
                evaluations["independent"] += alone.episodes
                evaluations["shared"] += together.episodes - together.stats["shared_hits"]
                gains.append(together.best_test_accuracy - alone.best_test_accuracy)
                lines.append(
                    f"| 1/{1 / budget:.0f} | {seed} | {cell(alone)} | {alone_s / 60:.1f} | "
                    f"{cell(together)} | {together.stats['shared_hits']} | "
                    f"{together_s / 60:.1f} |"
                )
                print(lines[-1], flush=True)
    print(
        f"\n{args.config}: independent {args.episodes} episodes per budget, shared "
        f"{args.shared_episodes} per budget ({len(budgets)} budgets x {len(seeds)} seeds)"
    )
    print(
        "| budget | seed | independent: test acc of best | min | shared: test acc of best | "
        "scores reused | min |"
    )
    print("|---|---|---|---|---|---|---|")
    for line in lines:
        print(line)
    per_sweep = {k: v / len(seeds) for k, v in evaluations.items()}
    print(
        f"\nevaluations per sweep of {len(budgets)} budgets: independent "
        f"{per_sweep['independent']:.0f}, shared {per_sweep['shared']:.0f} "
        f"({per_sweep['shared'] / args.episodes:.2f}x one search); test accuracy shared - "
        f"independent: mean {statistics.mean(gains):+.4f}, min {min(gains):+.4f}"
    )


if __name__ == "__main__":
    main()
