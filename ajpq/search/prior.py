"""The prior the actor is cloned towards (``agent.prior``): the importance-ranked uniform policy
that meets the budget, as the agent would play it: one action per step and the observations
the env shows along that episode."""

from __future__ import annotations

import numpy as np

from ajpq.core.builder import LayerKnobs
from ajpq.search.config import Prior, SpaceSection
from ajpq.search.context import SearchContext
from ajpq.search.env import CompressionEnv
from ajpq.search.methods import uniform_knobs
from ajpq.search.space import ACTION_DIM

__all__ = ["knobs_to_action", "prior_episode"]


def knobs_to_action(knobs: LayerKnobs, space: SpaceSection) -> np.ndarray:
    """The action in [0, 1]^4 that :func:`ajpq.search.space.action_to_knobs` maps onto
    ``knobs`` (bits clipped into the space)."""

    def share(value: float, low: float, high: float) -> float:
        return float(np.clip((value - low) / (high - low), 0.0, 1.0)) if high > low else 0.0

    return np.array(
        [
            share(knobs.sparsity, 0.0, space.max_sparsity),
            share(knobs.weight_bits, space.min_weight_bits, space.max_weight_bits),
            share(knobs.act_bits, space.min_act_bits, space.max_act_bits),
            share(knobs.spread, 0.0, space.max_spread),
        ],
        dtype=np.float32,
    )


def prior_episode(context: SearchContext, prior: Prior) -> tuple[np.ndarray, np.ndarray]:
    """Observations and actions (one row per env step) of ``prior``'s episode, played on an
    env that scores nothing."""
    if prior is Prior.NONE:
        raise ValueError("agent.prior is none: there is no prior episode")
    config = context.config
    knobs = uniform_knobs(
        context.model,
        context.graph,
        context.importance,
        config.budget,
        config.space,
        config.model,
        context.latency_model,
    )[0]
    action = knobs_to_action(knobs, config.space)
    env = CompressionEnv(context, lambda policy: {"reward": 0.0})
    observation, _ = env.reset()
    observations = []
    for _ in env.order:
        observations.append(observation)
        observation, _, _, _, _ = env.step(action)
    return np.stack(observations), np.tile(action, (len(observations), 1)).reshape(
        len(observations), ACTION_DIM
    )
