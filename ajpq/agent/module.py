"""DDPG's RLModule: deterministic bounded actor, Q critic, target copies of both."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, TargetNetworkAPI
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from torch import nn

__all__ = ["DDPGTorchRLModule", "mlp", "truncated_normal_noise"]


def mlp(sizes: list[int], out_activation: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if out_activation is not None:
        layers.append(out_activation)
    return nn.Sequential(*layers)


def truncated_normal_noise(
    mean: torch.Tensor, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sample N(mean, sigma) truncated to [-1, 1] (rejection, then clipping)."""
    sample = mean + sigma * torch.randn(mean.shape, generator=generator)
    for _ in range(20):
        outside = (sample < -1) | (sample > 1)
        if not outside.any():
            break
        fresh = mean + sigma * torch.randn(mean.shape, generator=generator)
        sample = torch.where(outside, fresh, sample)
    return sample.clamp(-1.0, 1.0)


class DDPGTorchRLModule(TorchRLModule, TargetNetworkAPI, InferenceOnlyAPI):
    """Actor pi(s) in [-1, 1]^k (RLlib maps it onto the Box bounds) and critic Q(s, a).

    ``model_config``: ``actor_hiddens``, ``critic_hiddens`` (lists of ints).
    Exploration (set by the algorithm before each sampling round through
    :meth:`set_exploration`): uniformly random actions during warm-up, otherwise
    truncated-normal noise of scale ``sigma`` (in [-1, 1] units) around pi(s).
    """

    def setup(self) -> None:
        if not isinstance(self.action_space, gym.spaces.Box):
            raise ValueError(f"DDPG needs a continuous Box action space, got {self.action_space}")
        obs_dim = int(np.prod(self.observation_space.shape))
        act_dim = int(np.prod(self.action_space.shape))
        config = self.model_config or {}
        actor_hiddens = list(config.get("actor_hiddens", [300, 300]))
        critic_hiddens = list(config.get("critic_hiddens", [300, 300]))
        self.action_dim = act_dim
        self.actor = mlp([obs_dim, *actor_hiddens, act_dim], nn.Tanh())
        if not self.inference_only:
            self.critic = mlp([obs_dim + act_dim, *critic_hiddens, 1])
        self.explore_random = True
        self.noise_sigma = 1.0

    # -- exploration control ----------------------------------------------------------------
    def set_exploration(self, random_actions: bool, sigma: float) -> None:
        self.explore_random = bool(random_actions)
        self.noise_sigma = float(sigma)

    # -- TargetNetworkAPI -------------------------------------------------------------------
    def make_target_networks(self) -> None:
        self.target_actor = make_target_network(self.actor)
        self.target_critic = make_target_network(self.critic)

    def get_target_network_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.actor, self.target_actor), (self.critic, self.target_critic)]

    def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
        next_obs = batch[Columns.NEXT_OBS].flatten(1)
        action = self.target_actor(next_obs)
        q = self.target_critic(torch.cat([next_obs, action], dim=-1)).squeeze(-1)
        return {"q_target_next": q}

    # -- InferenceOnlyAPI -------------------------------------------------------------------
    def get_non_inference_attributes(self) -> list[str]:
        return ["critic", "target_actor", "target_critic"]

    # -- forwards ---------------------------------------------------------------------------
    def q_value(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.critic(torch.cat([obs.flatten(1), action], dim=-1)).squeeze(-1)

    def _forward_inference(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {Columns.ACTIONS: self.actor(batch[Columns.OBS].flatten(1))}

    def _forward_exploration(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        obs = batch[Columns.OBS].flatten(1)
        if self.explore_random:
            action = torch.rand((obs.shape[0], self.action_dim)) * 2.0 - 1.0
        else:
            with torch.no_grad():
                mean = self.actor(obs)
            action = (
                truncated_normal_noise(mean, self.noise_sigma) if self.noise_sigma > 0 else mean
            )
        return {Columns.ACTIONS: action}

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        obs = batch[Columns.OBS].flatten(1)
        return {
            "q_pred": self.q_value(obs, batch[Columns.ACTIONS]),
            "q_of_pi": self.q_value(obs, self.actor(obs)),
        }
