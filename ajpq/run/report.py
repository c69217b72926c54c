"""The end of a search: the best policy's file and test accuracy, the records, the plot and
the MLflow parent run's final metrics and status."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ajpq.core.cost import CostModel
from ajpq.core.policy import CompressionPolicy
from ajpq.run.export_run import package
from ajpq.run.fidelity import FidelityResult
from ajpq.run.journal import Journal
from ajpq.run.plots import plot_search, plot_tradeoffs
from ajpq.run.rundir import RunDir
from ajpq.run.session import OpenRun
from ajpq.run.tracking import model_tags, policy_row, redact_uri, ui_link
from ajpq.search.context import DataSource, SearchContext
from ajpq.search.record import PolicyRecord, learning_curve
from ajpq.task.data import DataSplits, on_device
from ajpq.task.scoring import load_scorer

__all__ = [
    "SearchOutcome",
    "FinalResult",
    "load_best_policy",
    "report",
    "test_accuracy",
    "test_accuracy_on",
    "final_on",
    "best_policy_json",
]

logger = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"  # the search run's artifact folder of the best compressed file
BEST_MODEL_METRICS = ("file_bytes", "file_ratio", "test_accuracy")  # as best_model_<name>
# and of its ONNX (tracking.model_onnx): the deployed speed next to the fp32 network's ONNX
ONNX_METRICS = (
    "onnx_bytes",
    "onnx_test_accuracy",
    "onnx_latency_ms",
    "fp32_onnx_latency_ms",
    "onnx_speedup",
)


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
    best_model_path: Path | None = None  # the best policy's compressed file
    best_model: dict[str, Any] | None = None  # its numbers (size, ratio, test accuracy)
    registered: str | None = None  # "<name>/<version>" in the MLflow Model Registry
    # the proxy's rank correlations and the re-scored policies (ajpq.run.fidelity)
    fidelity: dict[str, Any] | None = None
    # median |predicted - measured| / measured latency over the scored policies (a latency
    # budget's table; None without one)
    latency_table_error: float | None = None


@dataclass
class FinalResult:
    """What the end-of-search device task returns: the best policy's test accuracy by the
    search's scorer, and its compressed file (``package``'s numbers, bytes in ``compressed``)."""

    test_accuracy: float
    model: dict[str, Any] | None = None


def report(
    run: OpenRun,
    summary: dict[str, Any],
    records: list[PolicyRecord],
    best_policy: str | None,
    interrupted: bool,
    on_test: Callable[[CompressionPolicy], FinalResult] | None = None,
    fidelity: FidelityResult | None = None,
) -> SearchOutcome:
    """Best policy file, its test accuracy and compressed file (unless interrupted; made by
    ``on_test``, the driver's task on an evaluator, else only the accuracy, here), plot,
    records, run status. The files come from the journal; MLflow gets them too (the compressed
    file as the ``model`` artifact, registered when ``tracking.register_model`` names a model),
    unless it is unreachable now."""
    tracker, parent_run_id, context = run.tracker, run.parent_run_id, run.context
    best = summary["best"]
    best_path = None
    if fidelity is not None:
        run.folder.fidelity.write_text(json.dumps(fidelity.to_dict(), indent=1))
    if best is not None and best_policy is not None:
        best_path = run.folder.best_policy
        best_path.write_text(best_policy)
    final = None
    if best_path is not None and not interrupted:
        policy = CompressionPolicy.load(best_path)
        final = (
            on_test(policy) if on_test else FinalResult(test_accuracy(context, run.splits, policy))
        )
    best_test = final.test_accuracy if final else None
    model = _write_model(run.folder, final.model) if final and final.model else None
    rows = [record.to_dict() for record in records]
    curve = learning_curve(records)
    plot = plot_search(rows, run.folder.plot)
    tradeoffs = plot_tradeoffs(rows, run.folder.plots)
    run.folder.records.write_text(json.dumps(rows, indent=1, default=str))
    scored = [r for r in records if not r.failed]
    table = _policy_rows(run.folder, scored)
    latency_error = latency_table_error(context, run.folder, scored)
    try:
        if best_path is not None:
            tracker.log_artifact(parent_run_id, best_path)
        if best_test is not None:
            tracker.client.log_metric(parent_run_id, "best_test_accuracy", best_test)
            tracker.client.log_metric(
                parent_run_id, "fp32_test_accuracy", context.fp32_test_accuracy
            )
        if latency_error is not None:
            tracker.client.log_metric(parent_run_id, "latency_table_error", latency_error)
        for quarter, value in enumerate(curve, start=1):
            tracker.client.log_metric(parent_run_id, f"val_acc_quarter_{quarter}", value)
        for path in ([plot] if plot else []) + tradeoffs:
            tracker.log_artifact(parent_run_id, path, "plots")
        tracker.log_policies(parent_run_id, table)
    except Exception as error:  # noqa: BLE001 - the run folder has it all; report, do not fail
        logger.warning("could not finish the MLflow parent run (%s); see %s", error, run.run_dir)
    registered = _log_model(run, model) if model else None
    with contextlib.suppress(Exception):
        tracker.set_status(parent_run_id, "KILLED" if interrupted else "FINISHED")
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
        best_model_path=run.folder.best_model if model else None,
        best_model=model,
        registered=registered,
        fidelity=fidelity.to_dict() if fidelity else None,
        latency_table_error=latency_error,
    )


def best_policy_json(folder: RunDir, policy_key: str) -> str | None:
    """The journaled policy JSON of ``policy_key``."""
    journal = Journal(folder.journal)
    try:
        return journal.policy_json(policy_key)
    finally:
        journal.close()


def _write_model(folder: RunDir, model: dict[str, Any]) -> dict[str, Any]:
    """The compressed file and its numbers into the run folder; the numbers back."""
    model = dict(model)
    folder.best_model.write_bytes(model.pop("compressed"))
    onnx = model.pop("onnx", None)
    if onnx is not None:
        folder.best_model_onnx.write_bytes(onnx)
        model["onnx_path"] = str(folder.best_model_onnx)  # the file here, not the task's copy
    model["path"] = str(folder.best_model)
    folder.best_model_report.write_text(json.dumps(model, indent=2))
    return model


def _log_model(run: OpenRun, model: dict[str, Any]) -> str | None:
    """The compressed file as the search run's ``model`` artifact, its numbers as metrics, and
    a new Model Registry version when ``tracking.register_model`` names one."""
    tracker, run_id, config = run.tracker, run.parent_run_id, run.context.config
    try:
        tracker.log_artifact(run_id, run.folder.best_model, MODEL_ARTIFACT)
        tracker.log_artifact(run_id, run.folder.best_model_report, MODEL_ARTIFACT)
        if model.get("onnx_path"):
            tracker.log_artifact(run_id, run.folder.best_model_onnx, MODEL_ARTIFACT)
        for name in (*BEST_MODEL_METRICS, *(m for m in ONNX_METRICS if m in model)):
            tracker.client.log_metric(run_id, f"best_model_{name}", float(model[name]))
        name = config.tracking.register_model
        if not name:
            return None
        version = tracker.register_model(
            name, run_id, MODEL_ARTIFACT, model_tags(config, model, "search")
        )
        tracker.client.set_tag(run_id, "ajpq.registered_model", f"{name}/{version}")
        return f"{name}/{version}"
    except Exception as error:  # noqa: BLE001 - the run folder has the file
        logger.warning(
            "could not log the compressed model to MLflow (%s); it is in %s",
            error,
            run.folder.best_model,
        )
        return None


def latency_table_error(
    context: SearchContext, folder: RunDir, records: list[PolicyRecord]
) -> float | None:
    """Median relative error of the latency model's prediction against each scored policy's
    measured latency (None without a latency model or measurements)."""
    if context.latency_model is None or not folder.journal.exists():
        return None
    costs = CostModel(context.graph)
    journal = Journal(folder.journal)
    try:
        errors = []
        for record in records:
            text = journal.policy_json(record.policy_key)
            if text and record.latency_ms > 0:
                predicted = context.latency_model.predict(CompressionPolicy.from_json(text), costs)
                errors.append(abs(predicted - record.latency_ms) / record.latency_ms)
    finally:
        journal.close()
    return float(np.median(errors)) if errors else None


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


def final_on(
    device: str,
    context: SearchContext,
    data: DataSource,
    policy_json: str,
    with_model: bool,
    onnx: str | None = None,
) -> FinalResult:
    """The end of a search on an evaluator's device: the best policy's test accuracy and,
    ``with_model``, its compressed file finetuned by the search's own recipe (one data load),
    with its ONNX of form ``onnx`` (timed in onnxruntime against the fp32 ONNX)."""
    splits = data.load()
    policy = CompressionPolicy.from_json(policy_json)
    accuracy = test_accuracy(context, on_device(splits, device), policy, device)
    if not with_model:
        return FinalResult(accuracy)
    recipe = context.config.scoring.finetune
    return FinalResult(accuracy, package(device, context, splits, policy, recipe, onnx))


def load_best_policy(outcome: SearchOutcome) -> CompressionPolicy | None:
    return CompressionPolicy.load(outcome.best_policy_path) if outcome.best_policy_path else None
