"""The reward of a scored policy and the ranking of scored policies: one owner for both, used
by the pool (best so far), the end-of-search re-scoring (its candidates), the stepwise method (its
pruning stage's best) and the sweep summary."""

from __future__ import annotations

from typing import Protocol

from ajpq.core.budget import Budget
from ajpq.search.config import AgentSection, RewardKind

__all__ = ["Admissible", "Ranked", "admitted", "best_key", "compute_reward"]


class Ranked(Protocol):
    reward: float
    compression_ratio: float


class Admissible(Protocol):
    compression_ratio: float
    bitops_ratio: float
    latency_ms: float


def compute_reward(
    agent: AgentSection, accuracy: float, fp32_accuracy: float, failed: bool
) -> float:
    """HAQ's reward: ``reward_scale`` x (accuracy - fp32 accuracy), or x (accuracy / fp32 - 1)
    with ``agent.reward: relative``; a failed evaluation gets ``agent.failed_reward``."""
    if failed:
        return agent.failed_reward * agent.reward_scale
    if agent.reward is RewardKind.RELATIVE:
        return agent.reward_scale * (accuracy / max(fp32_accuracy, 1e-9) - 1.0)
    return agent.reward_scale * (accuracy - fp32_accuracy)


def best_key(record: Ranked) -> tuple[float, float]:
    """Sort key of the best policy: the highest reward; among equals the smallest network."""
    return (record.reward, record.compression_ratio)


def admitted(budget: Budget, record: Admissible) -> bool:
    """Whether a scored policy may be the search's best: it meets ``budget`` as scored (a
    stepwise search's pruning stage scores policies above it; a latency budget judges the
    measured latency)."""
    return budget.admits(record.compression_ratio, record.bitops_ratio, record.latency_ms)
