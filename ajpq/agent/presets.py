"""Ready configs for standard control tasks (tests and benchmarks share them)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from ajpq.agent.config import DDPGConfig

__all__ = ["pendulum_ddpg_config", "random_policy_return"]


def pendulum_ddpg_config(seed: int = 0) -> DDPGConfig:
    """DDPG for Pendulum-v1: one-step TD (rewards every step), the usual continuous-control
    hyperparameters (Lillicrap et al.), a large replay buffer, 5 random warm-up episodes,
    half a gradient update per env step."""
    return (
        DDPGConfig()
        .environment("Pendulum-v1")
        .env_runners(num_env_runners=0)
        .reporting(metrics_num_episodes_for_smoothing=5)
        .training(
            credit_assignment="td",
            gamma=0.99,
            actor_lr=1e-3,
            critic_lr=1e-3,
            tau=0.005,
            actor_hiddens=[256, 256],
            critic_hiddens=[256, 256],
            train_batch_size_per_learner=128,
            warmup_episodes=5,
            noise_sigma=0.1,
            noise_decay=1.0,
            replay_buffer_config={"capacity": 100_000},
            # RLlib's episode replay + learner connector cost ~0.4 ms per sampled transition
            # here, so half an update per env step keeps a Pendulum run within minutes
            updates_per_step=0.5,
        )
        .debugging(seed=seed)
    )


def random_policy_return(env_id: str = "Pendulum-v1", episodes: int = 10, seed: int = 0) -> float:
    """Mean return of uniformly random actions (the floor a learner must clear)."""
    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        env.reset(seed=seed + i)
        env.action_space.seed(seed + i)
        done, total = False, 0.0
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))
