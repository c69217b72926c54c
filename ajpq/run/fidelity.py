"""Know the proxy: at the end of a search, score a fixed-seed sample of its policies again with
the long recipe (the top ``top_k`` by the search's score plus ``random_k`` others), on an
evaluator's device, and measure how well the cheap score ranked them (Spearman and Kendall).
The best policy is then the one with the best long score among the re-scored ones."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ajpq.core.budget import Budget
from ajpq.core.policy import CompressionPolicy
from ajpq.run.devicework import Placement, run_on_evaluator
from ajpq.run.journal import Journal
from ajpq.run.reservation import Reservation
from ajpq.run.session import OpenRun
from ajpq.search.context import DataSource, SearchContext
from ajpq.search.record import PolicyRecord
from ajpq.search.reward import admitted, best_key
from ajpq.task.data import on_device
from ajpq.task.scoring import ScoreSettings, load_scorer

__all__ = [
    "FidelityResult",
    "choose_policies",
    "rank_correlations",
    "long_settings",
    "rescore_on",
    "measure_fidelity",
    "best_by_long_score",
]

logger = logging.getLogger(__name__)


@dataclass
class FidelityResult:
    """How the search's score ranked the re-scored policies against the long score."""

    spearman: float
    kendall: float
    steps: int
    rows: list[dict[str, Any]]  # policy_key, episode, accuracy (search), long_accuracy
    best: PolicyRecord  # the best long score among the re-scored

    def to_dict(self) -> dict[str, Any]:
        return {
            "spearman": self.spearman,
            "kendall": self.kendall,
            "steps": self.steps,
            "rows": self.rows,
            "best_policy_key": self.best.policy_key,
        }


def choose_policies(
    records: list[PolicyRecord], top_k: int, random_k: int, seed: int, budget: Budget
) -> list[PolicyRecord]:
    """The ``top_k`` best scored records (the search's own ranking) and ``random_k`` others
    drawn with ``seed``, all among the records that may be the best under ``budget``
    (:func:`admitted`: never a stepwise search's pruning stage above the budget)."""
    scored = sorted(
        (r for r in records if not r.failed and not r.infra_failed and admitted(budget, r)),
        key=best_key,
        reverse=True,
    )
    top, rest = scored[:top_k], scored[top_k:]
    order = np.random.default_rng(seed).permutation(len(rest))[:random_k]
    return top + [rest[i] for i in sorted(order)]


def rank_correlations(cheap: list[float], long: list[float]) -> tuple[float, float]:
    """(Spearman, Kendall tau-b) of two scorings of the same policies; nan when undefined
    (fewer than 3 policies, or one scoring gives all of them the same value)."""
    from scipy import stats

    if len(cheap) < 3 or len(set(cheap)) < 2 or len(set(long)) < 2:
        return float("nan"), float("nan")
    return float(stats.spearmanr(cheap, long)[0]), float(stats.kendalltau(cheap, long)[0])


def long_settings(settings: ScoreSettings) -> ScoreSettings:
    """The search's scoring with the long finetune (``scoring.long_steps``)."""
    return dataclasses.replace(settings, finetune=settings.long_finetune())


def rescore_on(
    device: str,
    context: SearchContext,
    data: DataSource,
    policy_jsons: list[str],
    settings: ScoreSettings,
) -> list[float]:
    """The long scores (validation accuracy) of the policies, one after another, with the
    search's own scorer (a task on an evaluator's device)."""
    splits = on_device(data.load(), device)
    ev = context.config.evaluator
    scorer = load_scorer(ev.scorer)
    scores = []
    for text in policy_jsons:
        policy = CompressionPolicy.from_json(text)
        score = scorer(
            context.model, policy, context.graph, splits, settings, device, **ev.scorer_args
        )
        scores.append(float("nan") if score.diverged else score.accuracy)
    return scores


def best_by_long_score(chosen: list[PolicyRecord], long: list[float]) -> PolicyRecord:
    """The best of ``chosen`` by its long score (``long``, in the same order; NaN: diverged),
    among equals the smallest network; the first chosen when every long score diverged."""
    pairs = [(r, v) for r, v in zip(chosen, long) if not math.isnan(v)]
    return max(pairs, key=lambda p: (p[1], p[0].compression_ratio))[0] if pairs else chosen[0]


def measure_fidelity(
    run: OpenRun, data: DataSource, reservation: Reservation | None
) -> tuple[FidelityResult, Placement] | None:
    """Re-score the chosen policies on an evaluator, log the rank correlations on the parent
    run and the long score on each re-scored child run; None when fewer than 2 are chosen."""
    config = run.context.config
    fidelity = config.scoring.fidelity
    journal = Journal(run.folder.journal)
    try:
        records = list(journal.records().values())
        chosen = choose_policies(
            records, fidelity.top_k, fidelity.random_k, fidelity.seed, config.budget
        )
        if len(chosen) < 2:
            return None
        texts = [journal.policy_json(r.policy_key) or "" for r in chosen]
    finally:
        journal.close()
    settings = long_settings(config.scoring)
    logger.info(
        "proxy fidelity: scoring %d policies again with %d finetune steps",
        len(chosen),
        settings.finetune.steps,
    )
    long, where = run_on_evaluator(
        config, "fidelity", rescore_on, run.context, data, texts, settings, reservation=reservation
    )
    pairs = [(r, v) for r, v in zip(chosen, long) if not math.isnan(v)]
    spearman, kendall = rank_correlations([r.accuracy for r, _ in pairs], [v for _, v in pairs])
    best = best_by_long_score(chosen, long)
    rows = [
        {
            "policy_key": r.policy_key,
            "episode": r.episode,
            "accuracy": r.accuracy,
            "long_accuracy": v,
        }
        for r, v in zip(chosen, long)
    ]
    result = FidelityResult(spearman, kendall, settings.finetune.steps, rows, best)
    _log(run, chosen, long, result)
    return result, where


def _log(
    run: OpenRun, chosen: list[PolicyRecord], long: list[float], result: FidelityResult
) -> None:
    client = run.tracker.client
    with contextlib.suppress(Exception):  # MLflow may be down: the run folder has it
        for name, value in (
            ("proxy_rank_corr", result.spearman),
            ("proxy_kendall_corr", result.kendall),
            ("proxy_rescored", float(len(chosen))),
            ("proxy_long_steps", float(result.steps)),
        ):
            if not math.isnan(value):
                client.log_metric(run.parent_run_id, name, value)
        client.set_tag(run.parent_run_id, "ajpq.best_by", "long score")
        for record, value in zip(chosen, long):
            if record.run_id and not math.isnan(value):
                client.log_metric(record.run_id, "long_accuracy", value)
                client.set_tag(record.run_id, "ajpq.rescored", "true")
