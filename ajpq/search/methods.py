"""The baselines DDPG is measured against, through the same env, pool, wall and records.

``random`` draws every group's action uniformly from [0, 1]^4; ``tpe`` asks Optuna's TPE
sampler for the same per-group knobs and tells it each reward; ``uniform`` evaluates one bit
width everywhere (the largest that meets the budget unpruned), then each larger bit width with
the smallest uniform sparsity that meets it. (``ddpg`` and ``stepwise`` are RLlib runs; see
:mod:`ajpq.run.strategies`.) Episodes run concurrently, one per evaluator, so a baseline keeps
the evaluators as busy as DDPG's env runners do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

import numpy as np
from torch import nn

from ajpq.core.budget import Budget, BudgetKind, budget_value
from ajpq.core.builder import LayerKnobs
from ajpq.core.cost import CostModel
from ajpq.core.graph import ModelGraph
from ajpq.core.latency import LatencyPredictor
from ajpq.core.policy import CompressionPolicy
from ajpq.core.snap import build_snapped
from ajpq.search.config import Method, SpaceSection
from ajpq.search.env import CompressionEnv
from ajpq.search.space import ACTION_DIM

__all__ = [
    "Proposer",
    "RandomProposer",
    "TPEProposer",
    "make_proposer",
    "run_proposals",
    "uniform_candidates",
    "uniform_knobs",
]

logger = logging.getLogger(__name__)

KNOBS = ("sparsity", "weight_bits", "act_bits", "spread")


class Proposer(Protocol):
    def ask(self) -> tuple[Any, np.ndarray]:
        """A token and one action row per group (in step order)."""

    def tell(self, token: Any, reward: float | None) -> None:
        """The reward of the proposal ``token`` (None: its evaluation failed on the
        infrastructure, no verdict)."""


class RandomProposer:
    """Uniformly random actions (seeded)."""

    def __init__(self, groups: int, seed: int) -> None:
        self.groups = groups
        self.rng = np.random.default_rng(seed)

    def ask(self) -> tuple[None, np.ndarray]:
        return None, self.rng.uniform(0.0, 1.0, (self.groups, ACTION_DIM)).astype(np.float32)

    def tell(self, token: None, reward: float | None) -> None:
        return None


class TPEProposer:
    """Optuna's TPE sampler over every group's four knobs in [0, 1]; concurrent asks are
    handled by the constant-liar strategy."""

    def __init__(self, groups: int, seed: int, startup: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.failed_state = optuna.trial.TrialState.FAIL
        self.groups = groups
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=max(1, startup), multivariate=True, constant_liar=True
        )
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self.lock = threading.Lock()

    def ask(self) -> tuple[Any, np.ndarray]:
        with self.lock:
            trial = self.study.ask()
            rows = [
                [trial.suggest_float(f"g{g:03d}.{knob}", 0.0, 1.0) for knob in KNOBS]
                for g in range(self.groups)
            ]
        return trial, np.asarray(rows, dtype=np.float32)

    def tell(self, token: Any, reward: float | None) -> None:
        with self.lock:
            if reward is None:  # no verdict: the sampler learns nothing from it
                self.study.tell(token, state=self.failed_state)
            else:
                self.study.tell(token, float(reward))


def make_proposer(method: Method, groups: int, seed: int, startup: int) -> Proposer:
    if method is Method.RANDOM:
        return RandomProposer(groups, seed)
    if method is Method.TPE:
        return TPEProposer(groups, seed, startup)
    raise ValueError(f"method {method.value} does not propose actions")


def run_proposals(
    make_env: Callable[[], CompressionEnv],
    proposer: Proposer,
    episodes: int,
    concurrency: int,
    on_episode: Callable[[Mapping[str, Any]], None] | None = None,
) -> int:
    """Play ``episodes`` episodes with the proposer's actions, ``concurrency`` at a time (one
    env per thread; each blocks on its evaluation). Returns the episodes played."""
    envs = [make_env() for _ in range(max(1, concurrency))]
    free = list(envs)
    played = 0

    def play(env: CompressionEnv, token: Any, actions: np.ndarray) -> Mapping[str, Any]:
        record = env.play(actions)
        # an infrastructure failure is no verdict on the actions, and a proposal the predictor
        # screened out was not scored: told as None (not counted)
        proposer.tell(token, None if _unscored(record) else float(record["reward"]))
        return record

    with ThreadPoolExecutor(len(envs), thread_name_prefix="ajpq-propose") as pool:
        running: dict[Future, CompressionEnv] = {}
        asked = 0
        while played < episodes:
            while free and asked < episodes:
                env = free.pop()
                token, actions = proposer.ask()
                running[pool.submit(play, env, token, actions)] = env
                asked += 1
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                free.append(running.pop(future))
                record = future.result()
                if _unscored(record):
                    asked -= 1  # proposed again
                    continue
                played += 1
                if on_episode is not None:
                    on_episode(record)
    return played


def _unscored(record: Mapping[str, Any]) -> bool:
    return bool(record.get("infra_failed") or record.get("screened"))


def uniform_candidates(
    model: nn.Module,
    context_graph: ModelGraph,
    importance: list[np.ndarray],
    budget: Budget,
    space: SpaceSection,
    model_name: str,
    latency_model: LatencyPredictor | None = None,
) -> list[CompressionPolicy]:
    """Uniform policies that meet ``budget``, best first (see :func:`uniform_knobs`)."""
    multiple = space.multiple_for(budget.kind)
    return [
        build_snapped(model, context_graph, knobs, importance, multiple, model_name)
        for knobs in uniform_knobs(
            model, context_graph, importance, budget, space, model_name, latency_model
        )
    ]


def uniform_knobs(
    model: nn.Module,
    context_graph: ModelGraph,
    importance: list[np.ndarray],
    budget: Budget,
    space: SpaceSection,
    model_name: str,
    latency_model: LatencyPredictor | None = None,
) -> list[LayerKnobs]:
    """The knobs of the uniform policies that meet ``budget``, best first: the largest bit
    width everywhere that fits unpruned, then each larger bit width with the smallest uniform
    sparsity that fits. Activations at the space's top (for a BitOps budget: the weight bits,
    within the space)."""
    costs = CostModel(context_graph)
    multiple = space.multiple_for(budget.kind)

    def knobs(sparsity: float, bits: int) -> LayerKnobs:
        act = space.max_act_bits
        if budget.kind is BudgetKind.BITOPS:
            act = int(np.clip(bits, space.min_act_bits, space.max_act_bits))
        return LayerKnobs(sparsity, bits, act, 0.0)

    def fits(sparsity: float, bits: int) -> bool:
        candidate = build_snapped(
            model, context_graph, knobs(sparsity, bits), importance, multiple, model_name
        )
        return budget_value(candidate, budget, costs, latency_model) <= budget.value

    widths = list(range(space.max_weight_bits, space.min_weight_bits - 1, -1))
    unpruned = next((b for b in widths if fits(0.0, b)), None)
    candidates = [knobs(0.0, unpruned)] if unpruned is not None else []
    for bits in sorted(b for b in widths if unpruned is None or b > unpruned):
        low, high = 0.0, space.max_sparsity
        if not fits(high, bits):
            continue
        for _ in range(20):  # the smallest sparsity that fits, to 1e-6
            middle = (low + high) / 2
            low, high = (low, middle) if fits(middle, bits) else (middle, high)
        candidates.append(knobs(high, bits))
    if not candidates:
        raise ValueError(
            f"no uniform policy meets the {budget.kind.value} budget {budget.value:g} within "
            f"space.max_sparsity={space.max_sparsity:g}; raise the budget or the sparsity limit"
        )
    return candidates
