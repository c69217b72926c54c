"""DDPG (ajpq.agent) vs RLlib's SAC on Pendulum-v1 at equal env steps, both seeded, same run.

Prints the mean training-episode return (last 5 episodes) at a few env-step checkpoints, plus
the random policy's mean return as the floor. Usage:
    python bench/bench_ddpg.py [--steps 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import ray
from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_RETURN_MEAN,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
)

from ajpq.agent.presets import pendulum_ddpg_config, random_policy_return


def run(name: str, algo, checkpoints: list[int]) -> tuple[dict[int, float], float]:
    reached: dict[int, float] = {}
    start = time.time()
    while len(reached) < len(checkpoints):
        result = algo.train()
        runners = result[ENV_RUNNER_RESULTS]
        steps = runners.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0)
        ret = runners.get(EPISODE_RETURN_MEAN, float("nan"))
        for point in checkpoints:
            if point not in reached and steps >= point:
                reached[point] = ret
                print(
                    f"{name}: {steps} env steps, return {ret:.1f}, {time.time() - start:.0f} s",
                    flush=True,
                )
    algo.stop()
    return reached, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    checkpoints = [args.steps // 5, args.steps // 2, args.steps]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ddpg, ddpg_s = run("DDPG", pendulum_ddpg_config(args.seed).build_algo(), checkpoints)
    sac_config = (
        SACConfig()
        .environment("Pendulum-v1")
        # one episode per iteration and the DDPG preset's 0.5 updates per env step:
        # training_intensity = 0.5 x batch 128 trained samples per sampled step
        .env_runners(num_env_runners=0, rollout_fragment_length=200)
        .reporting(metrics_num_episodes_for_smoothing=5)
        .training(
            training_intensity=64,
            actor_lr=1e-3,
            critic_lr=1e-3,
            train_batch_size_per_learner=128,
            replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer", "capacity": 100_000},
            num_steps_sampled_before_learning_starts=1000,
        )
        .debugging(seed=args.seed)
    )
    sac, sac_s = run("SAC", sac_config.build_algo(), checkpoints)
    floor = random_policy_return("Pendulum-v1", 20, args.seed)
    print(f"Pendulum-v1, seed {args.seed}, mean return of the last 5 training episodes")
    print(f"{'env steps':>10} {'ajpq DDPG':>12} {'RLlib SAC':>12} {'random':>10}")
    for point in checkpoints:
        print(f"{point:>10} {ddpg[point]:>12.1f} {sac[point]:>12.1f} {floor:>10.1f}")
    print(f"wall time: DDPG {ddpg_s:.0f} s, SAC {sac_s:.0f} s")


if __name__ == "__main__":
    main()
