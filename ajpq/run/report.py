"""The end of a search: the best policy's file and test accuracy, the records, the plot and
the MLflow parent run's final metrics and status."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ajpq.core.policy import CompressionPolicy
from ajpq.run.journal import Journal
from ajpq.run.plots import plot_search, plot_tradeoffs
from ajpq.run.rundir import RunDir
from ajpq.run.session import OpenRun
from ajpq.run.tracking import policy_row, redact_uri, ui_link
from ajpq.search.context import DataSource, SearchContext
from ajpq.search.record import PolicyRecord, learning_curve
from ajpq.task.data import DataSplits, on_device
from ajpq.task.scoring import load_scorer

__all__ = ["SearchOutcome", "load_best_policy", "report", "test_accuracy", "test_accuracy_on"]

logger = logging.getLogger(__name__)


@dataclass
class SearchOutcome:
    run_dir: Path
    parent_run_id: str
    best: PolicyRecord | None
    best_policy_path: Path | None
    episodes: int
    fp32_val_accuracy: float
    stats: dict[str, Any]
    interrupted: bool = False
    best_test_accuracy: float | None = None
    fp32_test_accuracy: float | None = None
    tracking_uri: str | None = None
    waiting: int = 0  # records not yet in MLflow (safe in the journal; ``ajpq sync``)
    # mean val accuracy per quarter of the episodes (``record.learning_curve``)
    curve: list[float] = dataclasses.field(default_factory=list)
    top_error: str | None = None  # the most frequent error of failed evaluations
    ui_link: str | None = None  # the experiment's runs table in the MLflow UI


def report(
    run: OpenRun,
    summary: dict[str, Any],
    records: list[PolicyRecord],
    best_policy: str | None,
    interrupted: bool,
    on_test: Callable[[CompressionPolicy], float] | None = None,
) -> SearchOutcome:
    """Best policy file, its test accuracy (unless interrupted; measured by ``on_test``, the
    driver's task on an evaluator, else here), plot, records, run status. The files come from
    the journal; MLflow gets them too, unless it is unreachable now."""
    tracker, parent_run_id, context = run.tracker, run.parent_run_id, run.context
    best = summary["best"]
    best_path = None
    if best is not None and best_policy is not None:
        best_path = run.folder.best_policy
        best_path.write_text(best_policy)
    best_test = None
    if best_path is not None and not interrupted:
        policy = CompressionPolicy.load(best_path)
        best_test = on_test(policy) if on_test else test_accuracy(context, run.splits, policy)
    rows = [record.to_dict() for record in records]
    curve = learning_curve(records)
    plot = plot_search(rows, run.folder.plot)
    tradeoffs = plot_tradeoffs(rows, run.folder.plots)
    run.folder.records.write_text(json.dumps(rows, indent=1, default=str))
    table = _policy_rows(run.folder, [r for r in records if not r.failed])
    try:
        if best_path is not None:
            tracker.log_artifact(parent_run_id, best_path)
        if best_test is not None:
            tracker.client.log_metric(parent_run_id, "best_test_accuracy", best_test)
            tracker.client.log_metric(
                parent_run_id, "fp32_test_accuracy", context.fp32_test_accuracy
            )
        for quarter, value in enumerate(curve, start=1):
            tracker.client.log_metric(parent_run_id, f"val_acc_quarter_{quarter}", value)
        for path in ([plot] if plot else []) + tradeoffs:
            tracker.log_artifact(parent_run_id, path, "plots")
        tracker.log_policies(parent_run_id, table)
        tracker.set_status(parent_run_id, "KILLED" if interrupted else "FINISHED")
    except Exception as error:  # noqa: BLE001 - the run folder has it all; report, do not fail
        logger.warning("could not finish the MLflow parent run (%s); see %s", error, run.run_dir)
    return SearchOutcome(
        run_dir=run.run_dir,
        parent_run_id=parent_run_id,
        best=best,
        best_policy_path=best_path,
        episodes=summary["episodes"],
        fp32_val_accuracy=context.fp32_val_accuracy,
        stats=summary["stats"],
        interrupted=interrupted,
        best_test_accuracy=best_test,
        fp32_test_accuracy=context.fp32_test_accuracy,
        tracking_uri=redact_uri(tracker.uri),
        waiting=summary["waiting"],
        curve=curve,
        top_error=summary.get("top_error"),
        ui_link=ui_link(tracker.uri, tracker.experiment_id),
    )


def _policy_rows(folder: RunDir, records: list[PolicyRecord]) -> list[dict[str, Any]]:
    """Each scored policy's metrics and layer choices (policies from the run's journal)."""
    journal = Journal(folder.journal) if folder.journal.exists() else None
    try:
        rows = []
        for record in records:
            text = journal.policy_json(record.policy_key) if journal else None
            rows.append(policy_row(record, CompressionPolicy.from_json(text) if text else None))
        return rows
    finally:
        if journal is not None:
            journal.close()


def test_accuracy(
    context: SearchContext,
    splits: DataSplits,
    policy: CompressionPolicy,
    device: str = "cpu",
) -> float:
    """Final report: the best policy scored by the search's own scorer (seeded finetune as in
    the search) on the test split in place of the validation split."""
    settings = dataclasses.replace(context.config.scoring, val_samples=None)
    ev = context.config.evaluator
    on_test = dataclasses.replace(splits, val=splits.test)
    scorer = load_scorer(ev.scorer)
    score = scorer(
        context.model, policy, context.graph, on_test, settings, device, **ev.scorer_args
    )
    return score.accuracy


def test_accuracy_on(
    device: str, context: SearchContext, data: DataSource, policy_json: str
) -> float:
    """:func:`test_accuracy` where the data is read (a task on an evaluator's device)."""
    splits = on_device(data.load(), device)
    return test_accuracy(context, splits, CompressionPolicy.from_json(policy_json), device)


def load_best_policy(outcome: SearchOutcome) -> CompressionPolicy | None:
    return CompressionPolicy.load(outcome.best_policy_path) if outcome.best_policy_path else None
