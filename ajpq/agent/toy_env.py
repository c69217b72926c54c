"""A small episodic env with a known optimum, for testing and benchmarking the agent.

Episode of ``length`` steps; observation = the step index (one-hot); action in [0, 1]^knobs;
reward 0 until the last step, then -scale x sum_i |a_i - t_i|^2 for hidden targets t_i, plus
Gaussian noise of sd ``noise`` (a search's reward is a noisy score too). Optimum 0; the
uniformly random policy averages -scale x length x knobs / 6.
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
        self.knobs = int(config.get("knobs", 1))
        self.scale = float(config.get("scale", 1.0))
        self.noise = float(config.get("noise", 0.0))
        rng = np.random.default_rng(int(config.get("targets_seed", 0)))
        self.targets = rng.uniform(0.0, 1.0, (self.length, self.knobs)).astype(np.float32)
        self.noise_rng = np.random.default_rng(int(config.get("noise_seed", 0)))
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.length,), np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, (self.knobs,), np.float32)
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
        value = np.clip(np.asarray(action, dtype=np.float32).reshape(-1), 0.0, 1.0)
        self.error += float(np.sum((value - self.targets[self.step_index]) ** 2))
        self.step_index += 1
        done = self.step_index >= self.length
        if not done:
            return self._obs(), 0.0, False, False, {}
        score = -self.scale * self.error
        noisy = score + (self.noise * float(self.noise_rng.normal()) if self.noise else 0.0)
        return self._obs(), noisy, True, False, {"score": score}

    def score(self, actions: np.ndarray) -> float:
        """The noise-free terminal reward of an episode that takes ``actions`` (one row per
        step)."""
        actions = np.asarray(actions, dtype=np.float32).reshape(self.length, self.knobs)
        return -self.scale * float(np.sum((np.clip(actions, 0, 1) - self.targets) ** 2))
