"""The agent's defaults, owned once (HAQ's settings): :class:`ajpq.agent.DDPGConfig` starts from
them and the search config's ``agent:`` section defaults to them. Plain data, no Ray import, so
a config can be checked without loading RLlib."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["HAQ", "AgentDefaults", "CreditAssignment"]


class CreditAssignment(str, enum.Enum):
    """How transitions are credited when the reward comes only at the episode's end.

    EPISODE_BASELINE (HAQ): every transition regresses on the episode's return minus an
    exponential moving average of past returns; no bootstrapping (equal to an n-step return with
    n >= episode length and gamma = 1). TD: the usual one-step TD target with target networks.
    """

    EPISODE_BASELINE = "episode_baseline"
    TD = "td"


@dataclass(frozen=True)
class AgentDefaults:
    """DDPG's settings that the search exposes (HAQ's values)."""

    hiddens: tuple[int, ...] = (300, 300)
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01
    batch_size: int = 64
    warmup_episodes: int = 20
    noise_sigma: float = 0.5  # fraction of the action range
    noise_decay: float = 0.99  # per finished (post warm-up) episode
    baseline_decay: float = 0.5  # HAQ: moving_alpha = 0.5
    credit_assignment: CreditAssignment = CreditAssignment.EPISODE_BASELINE


HAQ = AgentDefaults()
