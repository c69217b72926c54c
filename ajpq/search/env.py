"""CompressionEnv: a gymnasium env in which each step decides one coupling group.

Observation: the group's static features (min-max normalised), the budget metric already spent
by the decided groups and still held by the undecided ones (fractions of fp32; MACs for a
latency budget), the budget in the same unit, and the previous action. Action in [0, 1]^4 ->
sparsity, weight bits, activation bits, spread. After the last group the policy is pushed
inside the budget (the action wall), what it leaves of a size or BitOps budget is spent on bits
(``space.fill_budget``), scored by the ``evaluate`` callable the env was given, and
the reward arrives (0 on every earlier step). ``info`` carries all metrics.

The env knows nothing of Ray: the orchestration floor (``ajpq.run.binding``) binds
``evaluate`` to the evaluator pool and resolves the context from the object store.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from ajpq.core.budget import Budget, BudgetKind, Precision, WallRules, enforce_budget
from ajpq.core.budget.fill import fill_budget
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.cost import CostModel
from ajpq.core.policy import CompressionPolicy
from ajpq.core.snap import snap_channels
from ajpq.search.context import SearchContext
from ajpq.search.space import ACTION_DIM, action_to_knobs, group_features, group_order

__all__ = ["CompressionEnv", "ENV_NAME", "Evaluate", "Stage"]

logger = logging.getLogger(__name__)

ENV_NAME = "ajpq-compression"
_METRIC_COLUMN = {BudgetKind.SIZE: 0, BudgetKind.BITOPS: 1, BudgetKind.LATENCY: 2}

Evaluate = Callable[[CompressionPolicy], Mapping[str, Any]]
"""Scores one policy and returns its record (a mapping with at least ``reward``)."""


@dataclass(frozen=True)
class Stage:
    """What one stage of a search decides (the stepwise method): ``prune`` only (bits held at
    the space's top), or ``bits`` only on the pruning of ``base_policy`` (JSON); ``budget``
    replaces the search's for this stage."""

    prune: bool = True
    bits: bool = True
    budget: Budget | None = None
    base_policy: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["budget"] = self.budget.to_dict() if self.budget else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Stage:
        if not data:
            return cls()
        budget = data.get("budget")
        return cls(
            prune=bool(data.get("prune", True)),
            bits=bool(data.get("bits", True)),
            budget=Budget(BudgetKind(budget["kind"]), float(budget["value"])) if budget else None,
            base_policy=data.get("base_policy"),
        )


class CompressionEnv(gym.Env):
    """One episode = one policy for ``context``'s model, scored by ``evaluate``."""

    def __init__(
        self, context: SearchContext, evaluate: Evaluate, stage: Stage | None = None
    ) -> None:
        self.context = context
        self.evaluate = evaluate
        config = self.context.config
        self.space = config.space
        self.stage = stage or Stage()
        self.budget = self.stage.budget or config.budget
        self.rules = WallRules(
            self.space.precision,
            self.stage.prune,
            self.stage.bits,
            self.space.min_weight_bits,
            self.space.min_act_bits,
        )
        self.base_pruned = None
        if self.stage.base_policy is not None:
            base = CompressionPolicy.from_json(self.stage.base_policy)
            self.base_pruned = [np.asarray(lp.weight_bits) == 0 for lp in base.layers]
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
    def _in_mode(self, knobs: LayerKnobs, first: LayerKnobs) -> LayerKnobs:
        """The knobs the precision mode and the stage allow (``first``: the first group's)."""
        precision = self.space.precision
        if precision is not Precision.MIXED:
            knobs = dataclasses.replace(knobs, spread=0.0)
        if precision is Precision.FIXED:
            knobs = dataclasses.replace(
                knobs, weight_bits=first.weight_bits, act_bits=first.act_bits
            )
        if not self.stage.bits:  # bits held at the top of the space
            knobs = LayerKnobs(
                knobs.sparsity, self.space.max_weight_bits, self.space.max_act_bits, 0.0
            )
        if not self.stage.prune:
            knobs = dataclasses.replace(knobs, sparsity=0.0)
        return knobs

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
            model_name=self.context.config.model,
        )

    def _budget_fraction(self) -> float:
        """The budget in the unit of the spent/rest features: a fraction of the fp32 metric.
        A latency ceiling becomes the MACs fraction the fitted latency model allows."""
        if self.budget.kind is not BudgetKind.LATENCY:
            return self.budget.value
        model = self.context.latency_model
        if model is None:
            raise ValueError("a latency budget needs the context's latency model; prepare it again")
        allowed_macs = model.macs_for(self.budget.value, self.costs)
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
        knobs = action_to_knobs(action, self.space)
        first = self.knobs.get(self.order[0], knobs)
        self.knobs[group] = self._in_mode(knobs, first)
        self.previous_action = np.clip(np.asarray(action, dtype=np.float32).reshape(-1), 0, 1)
        self.step_index += 1
        if self.step_index < len(self.order):
            return self._observation(), 0.0, False, False, {}
        policy = self._on_base(self._policy_for(self.knobs))
        policy = enforce_budget(
            policy,
            self.budget,
            self.costs,
            self.context.importance,
            self.context.latency_model,
            self.rules,
        )
        # whole channel blocks (only prunes, so the budget still holds); the fill spends what
        # that frees on bits and never unprunes
        multiple = self.space.multiple_for(self.budget.kind)
        policy = snap_channels(policy, self.graph, self.context.importance, multiple)
        if self.space.fill_budget:
            policy = fill_budget(
                policy,
                self.budget,
                self.costs,
                self.context.importance,
                self.space.max_weight_bits,
                self.space.max_act_bits,
                self.rules,
                self.context.latency_model,
            )
        record = dict(self.evaluate(policy))
        return self._observation(), float(record["reward"]), True, False, record

    def _on_base(self, policy: CompressionPolicy) -> CompressionPolicy:
        """With a base policy, its pruned channels stay pruned (and only those)."""
        if self.base_pruned is None:
            return policy
        layers = []
        for lp, pruned in zip(policy.layers, self.base_pruned):
            bits = np.where(pruned, 0, np.asarray(lp.weight_bits))
            layers.append(dataclasses.replace(lp, weight_bits=tuple(int(b) for b in bits)))
        return policy.replace_layers(layers)

    def play(self, actions: np.ndarray) -> dict[str, Any]:
        """One whole episode with one action per group (rows in step order); its record."""
        self.reset()
        info: dict[str, Any] = {}
        for action in np.asarray(actions, dtype=np.float32).reshape(len(self.order), ACTION_DIM):
            _, _, done, _, info = self.step(action)
        return info
