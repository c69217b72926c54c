"""DDPG in the search's regime: ~100 episodes, a reward only at the end, noise above the signal.

A compression search gives DDPG 20-75 learning episodes of one step per coupling group (4 knobs
each), and each episode's reward is a noisy validation score. This runs the agent on
``HiddenTargetsEnv`` shaped like the digits demo (7 steps x 4 knobs; the random policy averages
-0.03, the optimum is 0; reward noise sd 0.007, about twice the spread of random policies'
scores) with the demo's schedule (100 episodes, 25 warm-up, noise decaying to 0.05), for a few
agent variants and seeds, and prints per variant: the mean noise-free score per quarter of the
episodes and the greedy policy's score at the end, as the share of the random policy's gap to
the optimum that it closed (0: random, 1: optimal).

Usage: python bench/bench_ddpg_few_episodes.py [--seeds 4] [--episodes 100]
"""

from __future__ import annotations

import argparse
import logging
import statistics

import numpy as np
import ray
import torch
from ray.rllib.algorithms.callbacks import DefaultCallbacks

from ajpq.agent import DDPGConfig, greedy_action
from ajpq.agent.toy_env import HiddenTargetsEnv

LENGTH, KNOBS, NOISE = 7, 4, 0.007
SCALE = 0.03 / (LENGTH * KNOBS / 6)  # the random policy averages -0.03
RANDOM_MEAN = -0.03

VARIANTS: dict[str, dict] = {
    "defaults (HAQ's)": {},
    "no reward noise": {"env": {"noise": 0.0}},
    "warm-up 10": {"warmup": 10},
    "actor lr 1e-3": {"actor_lr": 1e-3},
    "4 updates per step": {"updates_per_step": 4.0},
    "replay 1000": {"replay_buffer_config": {"capacity": 1000}},
    "replay 1000, baseline decay 0.9": {
        "replay_buffer_config": {"capacity": 1000},
        "baseline_decay": 0.9,
    },
    "64-64 networks, actor lr 1e-3": {
        "actor_hiddens": [64, 64],
        "critic_hiddens": [64, 64],
        "actor_lr": 1e-3,
    },
    "one-step TD credit": {"credit_assignment": "td", "replay_buffer_config": {"capacity": 1000}},
}


class _Scores(DefaultCallbacks):
    """Keeps every finished episode's noise-free score (the env's last ``info``)."""

    def on_episode_end(self, *, episode, **kwargs) -> None:  # noqa: ANN001 - RLlib's hook
        infos = episode.get_infos()
        if infos and "score" in infos[-1]:
            self.scores.append(float(infos[-1]["score"]))


def run(seed: int, episodes: int, variant: dict) -> tuple[float, list[float]]:
    variant = dict(variant)
    env_config = {
        "length": LENGTH,
        "knobs": KNOBS,
        "scale": SCALE,
        "noise": NOISE,
        "targets_seed": seed,
        "noise_seed": seed + 100,
        **variant.pop("env", {}),
    }
    warmup = variant.pop("warmup", 25)
    scores: list[float] = []
    callbacks = type("Scores", (_Scores,), {"scores": scores})
    training = {
        "warmup_episodes": warmup,
        "noise_sigma": 0.5,
        "noise_decay": (0.05 / 0.5) ** (1 / (episodes - warmup)),
        **variant,
    }
    config = (
        DDPGConfig()
        .environment(HiddenTargetsEnv, env_config=env_config, disable_env_checking=True)
        .env_runners(num_env_runners=0)
        .callbacks(callbacks)
        .training(**training)
        .debugging(seed=seed)
    )
    algo = config.build_algo()
    try:
        while algo.episodes_done < episodes:
            algo.train()
        obs = np.eye(LENGTH, dtype=np.float32)
        greedy = np.array([greedy_action(algo, obs[k]) for k in range(LENGTH)])
    finally:
        algo.stop()
    env = HiddenTargetsEnv(env_config)
    scores = scores[:episodes]
    quarter = len(scores) // 4
    quarters = [statistics.mean(scores[i * quarter : (i + 1) * quarter]) for i in range(4)]
    return env.score(greedy), quarters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # the learner shares 2 cores with Ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(
        f"HiddenTargetsEnv {LENGTH} steps x {KNOBS} knobs, reward noise sd {NOISE}, "
        f"{args.episodes} episodes, seeds 0-{args.seeds - 1}; score: random -0.030, optimum 0"
    )
    print(
        "| variant | mean score per quarter of the episodes | greedy score at the end | gap closed |"
    )
    print("|---|---|---|---|")
    for name, variant in VARIANTS.items():
        runs = [run(seed, args.episodes, variant) for seed in range(args.seeds)]
        greedy = statistics.mean(g for g, _ in runs)
        quarters = [statistics.mean(q) for q in zip(*(q for _, q in runs))]
        print(
            f"| {name} | {' / '.join(f'{q:.4f}' for q in quarters)} | {greedy:.4f} | "
            f"{1 - greedy / RANDOM_MEAN:.2f} |",
            flush=True,
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
