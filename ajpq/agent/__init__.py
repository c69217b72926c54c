"""DDPG as a custom RLlib algorithm on the current API stack (Ray 2.60).

RLlib removed DDPG from its algorithms (Ray 2.9-2.11); ajpq implements it with RLlib's four-way
split, following SAC's layout in ``ray/rllib/algorithms/sac/``:

- config   :class:`DDPGConfig` (``config.py``): an ``AlgorithmConfig`` with HAQ's defaults
  (300-300 MLPs, actor lr 1e-4, critic lr 1e-3, tau 0.01, batch 64, gamma 1), exploration
  (truncated-normal noise, sigma 0.5 decaying x0.99 per episode; the values live in ``defaults.py``, random warm-up episodes) and the
  credit assignment for terminal-only rewards.
- module   :class:`DDPGTorchRLModule` (``module.py``): a ``TorchRLModule`` with a deterministic
  tanh-bounded actor and a Q critic; implements ``TargetNetworkAPI`` (target actor and critic)
  and ``InferenceOnlyAPI`` (env runners hold the actor only). Exploration noise lives in
  ``_forward_exploration``.
- learner  :class:`DDPGTorchLearner` (``learner.py``): a ``TorchLearner`` (via DQN's learner,
  which builds target networks, adds NEXT_OBS to batches and Polyak-averages with tau). Critic
  regresses on the TD target from the target actor and critic (``credit_assignment="td"``) or on
  the episode's baseline-corrected return (``"episode_baseline"``, HAQ's scheme, the default);
  the actor maximises Q(s, pi(s)).
- algorithm :class:`DDPG` (``algorithm.py``): the training step: set exploration on the env
  runners, sample complete episodes, rewrite rewards for the credit assignment, store them in
  RLlib's ``EpisodeReplayBuffer``, run gradient updates, sync weights. Its state (checkpoints)
  adds the episode count, the reward baseline and the replay contents.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ajpq.agent.defaults import HAQ, AgentDefaults, CreditAssignment

if TYPE_CHECKING:
    from ajpq.agent.algorithm import DDPG, greedy_action
    from ajpq.agent.config import DDPGConfig
    from ajpq.agent.learner import DDPGTorchLearner
    from ajpq.agent.module import DDPGTorchRLModule

__all__ = [
    "DDPG",
    "HAQ",
    "AgentDefaults",
    "DDPGConfig",
    "CreditAssignment",
    "DDPGTorchLearner",
    "DDPGTorchRLModule",
    "greedy_action",
]

# RLlib is imported on first use (PEP 562), so ``ajpq.agent.defaults`` stays Ray-free for the
# search config
_LAZY = {
    "DDPG": "ajpq.agent.algorithm",
    "greedy_action": "ajpq.agent.algorithm",
    "DDPGConfig": "ajpq.agent.config",
    "DDPGTorchLearner": "ajpq.agent.learner",
    "DDPGTorchRLModule": "ajpq.agent.module",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ajpq.agent' has no attribute {name!r}")
