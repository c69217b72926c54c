"""A small episodic env with a known optimum, for testing and benchmarking the agent.

Episode of ``length`` steps; observation = the step index (one-hot); action in [0, 1];
reward 0 until the last step, then -sum_i (a_i - t_i)^2 for hidden targets t_i. Optimum 0;
the uniformly random policy averages -length/6.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["HiddenTargetsEnv"]


class HiddenTargetsEnv(gym.Env):
    def __init__(self, config: dict[str, Any] | None = None) -> None:
        config = config or {}
        self.length = int(config.get("length", 8))
        rng = np.random.default_rng(int(config.get("targets_seed", 0)))
        self.targets = rng.uniform(0.0, 1.0, self.length).astype(np.float32)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.length,), np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.step_index = 0
        self.error = 0.0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.length, dtype=np.float32)
        obs[min(self.step_index, self.length - 1)] = 1.0
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.step_index = 0
        self.error = 0.0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        value = float(np.clip(np.asarray(action).reshape(-1)[0], 0.0, 1.0))
        self.error += (value - float(self.targets[self.step_index])) ** 2
        self.step_index += 1
        done = self.step_index >= self.length
        reward = -self.error if done else 0.0
        return self._obs(), reward, done, False, {}

    def score(self, actions: np.ndarray) -> float:
        """The terminal reward of an episode that takes ``actions``."""
        return -float(np.sum((np.clip(actions, 0, 1) - self.targets) ** 2))
