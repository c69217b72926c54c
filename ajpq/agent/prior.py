"""Behaviour cloning: the actor pretrained towards a prior policy before the search learns.

A fresh actor proposes noise; with few learning episodes DDPG never gets far from it. Cloning a
sensible policy (for a compression search: the importance-ranked uniform policy that meets the
budget) into the actor, and into its target copy, makes the first greedy episode that policy, so
exploration and learning start from there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["CloneResult", "clone_actor", "clone_into"]

logger = logging.getLogger(__name__)

_EDGE = 0.98  # targets in module units stay off tanh's asymptotes


@dataclass(frozen=True)
class CloneResult:
    """Mean absolute distance (in the env's action units) between the actor's greedy actions
    and the prior's, before and after cloning."""

    distance_before: float
    distance_after: float
    steps: int


def _to_module_units(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> torch.Tensor:
    span = np.where(high > low, high - low, 1.0)
    unit = 2.0 * (np.asarray(actions, dtype=np.float32) - low) / span - 1.0
    return torch.as_tensor(np.clip(unit, -_EDGE, _EDGE), dtype=torch.float32)


def clone_actor(
    actor: nn.Module,
    observations: np.ndarray,
    actions: np.ndarray,
    steps: int,
    action_low: np.ndarray | float = 0.0,
    action_high: np.ndarray | float = 1.0,
    lr: float = 1e-3,
) -> CloneResult:
    """Regress ``actor`` (tanh-bounded, outputs in [-1, 1]) onto ``actions`` (env units in
    [action_low, action_high]) at ``observations`` for ``steps`` Adam steps (full batch)."""
    obs = torch.as_tensor(np.asarray(observations, dtype=np.float32))
    low = np.broadcast_to(np.asarray(action_low, dtype=np.float32), actions.shape[1:])
    high = np.broadcast_to(np.asarray(action_high, dtype=np.float32), actions.shape[1:])
    target = _to_module_units(actions, low, high)
    scale = torch.as_tensor(np.where(high > low, high - low, 1.0) / 2.0)

    def distance() -> float:
        with torch.no_grad():
            return float(((actor(obs) - target).abs() * scale).mean())

    before = distance()
    optimizer = torch.optim.Adam(actor.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.mean((actor(obs) - target) ** 2)
        loss.backward()
        optimizer.step()
    return CloneResult(before, distance(), steps)


def clone_into(algo: Any, observations: np.ndarray, actions: np.ndarray, steps: int) -> CloneResult:
    """Clone the prior into a built :class:`ajpq.agent.DDPG`'s learner (actor and target
    actor), then hand the new weights to its env runners."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    def clone(learner: Any) -> CloneResult:
        module = learner.module[DEFAULT_MODULE_ID].unwrapped()
        space = module.action_space
        result = clone_actor(module.actor, observations, actions, steps, space.low, space.high)
        module.target_actor.load_state_dict(module.actor.state_dict())
        return result

    (result,) = algo.learner_group.foreach_learner(clone)
    if not isinstance(result, CloneResult):  # remote learners answer with a result object
        result = result.get()
    algo.env_runner_group.sync_weights(
        from_worker_or_learner_group=algo.learner_group, inference_only=True
    )
    logger.info(
        "prior cloned into the actor in %d steps: distance %.3f -> %.3f",
        steps,
        result.distance_before,
        result.distance_after,
    )
    return result
