"""CompressionEnv: a gymnasium env in which each step decides one coupling group.

Observation: the group's static features (min-max normalised), the budget metric already spent
by the decided groups and still held by the undecided ones (fractions of fp32; MACs for a
latency budget), the budget in the same unit, and the previous action. Action in [0, 1]^4 ->
sparsity, weight bits, activation bits, spread. After the last group the policy is pushed
inside the budget (the action wall), scored by the evaluator pool, and the reward arrives (0 on
every earlier step). ``info`` carries all metrics.
"""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
import numpy as np
import ray

from ajpq.budget import Budget, BudgetKind, enforce_budget
from ajpq.builder import LayerKnobs, build_policy
from ajpq.cost import CostModel
from ajpq.search.context import SearchContext
from ajpq.search.space import ACTION_DIM, action_to_knobs, group_features, group_order

__all__ = ["CompressionEnv", "ENV_NAME", "register"]

logger = logging.getLogger(__name__)

ENV_NAME = "ajpq-compression"
_METRIC_COLUMN = {BudgetKind.SIZE: 0, BudgetKind.BITOPS: 1, BudgetKind.LATENCY: 2}


class CompressionEnv(gym.Env):
    """``env_config``: ``context_dir`` (prepared by the driver), ``pool_name``, ``namespace``."""

    def __init__(self, env_config: dict[str, Any]) -> None:
        self.context = SearchContext.load(env_config["context_dir"])
        self.pool_name = env_config.get("pool_name")
        self.namespace = env_config.get("namespace")
        self._pool = None
        config = self.context.config
        self.space = config.space
        self.budget = Budget(config.budget.kind, config.budget.value)
        self.graph = self.context.graph
        self.costs = CostModel(self.graph)
        self.order = group_order(self.graph)
        self.features = group_features(self.graph)
        self.metric = _METRIC_COLUMN[self.budget.kind]
        fp32 = self.costs.layer_costs(self._policy_for({}))
        self.fp32_total = float(fp32[:, self.metric].sum())
        self.budget_fraction = self._budget_fraction()
        obs_dim = self.features.shape[1] + 3 + ACTION_DIM
        self.observation_space = gym.spaces.Box(-1.0, 2.0, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, (ACTION_DIM,), np.float32)
        self.step_index = 0
        self.knobs: dict[int, LayerKnobs] = {}
        self.previous_action = np.zeros(ACTION_DIM, dtype=np.float32)

    # -- policy assembly --------------------------------------------------------------------
    def _policy_for(self, knobs_by_group: dict[int, LayerKnobs]):
        undecided = LayerKnobs(0.0, 32, 32)
        per_layer = [
            knobs_by_group.get(self.graph.layer_group[layer.index], undecided)
            for layer in self.graph.layers
        ]
        return build_policy(
            self.context.model,
            self.graph,
            per_layer,
            importance=self.context.importance,
            model_name=self.context.config.model.value,
        )

    def _budget_fraction(self) -> float:
        """The budget in the unit of the spent/rest features: a fraction of the fp32 metric.
        A latency ceiling becomes the MACs fraction the fitted latency model allows."""
        if self.budget.kind is not BudgetKind.LATENCY:
            return self.budget.value
        model = self.context.latency_model
        if model is None:
            raise ValueError("a latency budget needs the context's latency model; prepare it again")
        allowed_macs = (self.budget.value - model.intercept_ms) / model.ms_per_mac
        return float(np.clip(allowed_macs / self.fp32_total, 0.0, 1.0))

    def _observation(self) -> np.ndarray:
        step = min(self.step_index, len(self.order) - 1)
        table = self.costs.layer_costs(self._policy_for(self.knobs))[:, self.metric]
        decided_layers = {m for g in self.knobs for m in self.graph.groups[g].members}
        spent = sum(table[i] for i in decided_layers) / self.fp32_total
        rest = sum(table[i] for i in range(len(table)) if i not in decided_layers) / self.fp32_total
        obs = np.concatenate(
            [self.features[step], [spent, rest, self.budget_fraction], self.previous_action]
        ).astype(np.float32)
        return np.clip(obs, -1.0, 2.0)

    # -- gymnasium API ----------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.step_index = 0
        self.knobs = {}
        self.previous_action = np.zeros(ACTION_DIM, dtype=np.float32)
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        group = self.order[self.step_index]
        self.knobs[group] = action_to_knobs(action, self.space)
        self.previous_action = np.clip(np.asarray(action, dtype=np.float32).reshape(-1), 0, 1)
        self.step_index += 1
        if self.step_index < len(self.order):
            return self._observation(), 0.0, False, False, {}
        policy = self._policy_for(self.knobs)
        policy = enforce_budget(
            policy, self.budget, self.costs, self.context.importance, self.context.latency_model
        )
        record = self.evaluate(policy.to_json())
        return self._observation(), float(record["reward"]), True, False, record

    # -- scoring ----------------------------------------------------------------------------
    def evaluate(self, policy_json: str) -> dict[str, Any]:
        """Score through the evaluator pool (blocking: the env runner just waits)."""
        if self._pool is None:
            self._pool = ray.get_actor(self.pool_name, namespace=self.namespace)
        return ray.get(self._pool.evaluate.remote(policy_json))


def register() -> str:
    """Register the env with Ray Tune's registry under ``ENV_NAME``."""
    from ray.tune.registry import register_env

    register_env(ENV_NAME, lambda env_config: CompressionEnv(env_config))
    return ENV_NAME
