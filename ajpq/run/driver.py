"""The search driver: check, prepare the context once, ship it through Ray's object store,
start the evaluator pool on the driver's node, run the method until the episode budget is
spent, and report the best policy (also into MLflow).

Only this process reads and writes the driver's disk (run folder, checkpoints, context copy);
env runners and evaluators get everything through Ray, so worker machines need no shared disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from pathlib import Path

import ray
import yaml
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ajpq.core.budget import BudgetKind
from ajpq.core.builder import uniform_policy
from ajpq.core.cost import CostModel
from ajpq.core.policy import CompressionPolicy
from ajpq.core.quantize import FLOAT_BITS
from ajpq.core.redact import redact
from ajpq.run import binding
from ajpq.run.context_source import publish_context
from ajpq.run.devicework import Placement, run_on_evaluator
from ajpq.run.evaluator import fit_latency_on
from ajpq.run.fidelity import measure_fidelity
from ajpq.run.pool import EvaluatorPool
from ajpq.run.preflight import check_budget, check_tracking_uri, check_writable, resolve_locations
from ajpq.run.report import FinalResult, SearchOutcome, best_policy_json, final_on, report
from ajpq.run.reservation import Reservation, reserve
from ajpq.run.resources import ensure_ray
from ajpq.run.resume import ResumeError, check_same_search, flatten
from ajpq.run.rundir import (
    RunDir,
    RunDirError,
    latest_run,
    mark_latest,
    pull_latest,
    run_base_name,
    runs_folder,
)
from ajpq.run.session import OpenRun
from ajpq.run.storage import RunMirror, is_uri
from ajpq.run.strategies import Progress, Search, SearchAborted
from ajpq.run.tracking import Tracker
from ajpq.search.config import SearchConfig
from ajpq.search.context import (
    ContextSchemaError,
    SearchContext,
    data_source_for,
    reference_context,
)
from ajpq.task.checks import check_scorer, is_builtin
from ajpq.task.data import DataSplits, load_dataset
from ajpq.task.pretrain import plan_pretraining, store_pretrained
from ajpq.task.scoring import load_scorer

__all__ = ["run_search"]

logger = logging.getLogger(__name__)


FINAL_FLUSH_S = 120.0  # how long the end of a search waits for MLflow to catch up


def _fit_latency(context: SearchContext, reservation: Reservation) -> SearchContext:
    """Fit the latency model on an evaluator's kind of device, then check the budget."""
    fitted, where = run_on_evaluator(
        context.config, "latency", fit_latency_on, context, reservation=reservation
    )
    logger.info(
        "latency table on %s (%s): the fp32 network predicted at %.3g ms",
        where.device,
        context.config.scoring.latency_runtime.value,
        fitted.predict(
            uniform_policy(context.graph, FLOAT_BITS, FLOAT_BITS, context.config.model),
            CostModel(context.graph),
        ),
    )
    context = context.with_latency_model(fitted, where.device)
    check_budget(context)
    return context


def _check_scorer(context: SearchContext, splits: DataSplits) -> None:
    """The user's scorer, called once on the fp32 network (ajpq's own are trusted)."""
    ev = context.config.evaluator
    if is_builtin(ev.scorer):
        return
    policy = uniform_policy(context.graph, FLOAT_BITS, FLOAT_BITS, context.config.model)
    call = (context.model, policy, context.graph, splits, context.config.scoring, "cpu")
    check_scorer(ev.scorer, load_scorer(ev.scorer), call, ev.scorer_args)


def run_search(
    config: SearchConfig,
    resume: bool = False,
    config_path: str | None = None,
    on_progress: Progress | None = None,
) -> SearchOutcome:
    """Run (or continue, with ``resume``) one search described by ``config``. ``on_progress``
    gets the episode count and the best policy's metrics as they change (a sweep's trial
    reports them to Tune). Inside a placement group (a Tune trial) the evaluators are
    scheduled in it too. ``output_dir`` may be a URI (s3://, gs://, file://): the run folder
    is then kept in a local copy pushed there as it changes (:mod:`ajpq.run.storage`)."""
    config = resolve_locations(config)
    if is_uri(config.output_dir):
        mirror = RunMirror(config.output_dir)
        if resume:
            pull_latest(mirror, run_base_name(config))
        local = dataclasses.replace(config, output_dir=str(mirror.local))
        with mirror:
            return run_search(local, resume, config_path, on_progress)
    check_tracking_uri(config.tracking.uri)
    check_writable(Path(config.output_dir))
    run = _resume_run(config) if resume else None
    ensure_ray(config)
    # asked for, not polled: an autoscaler starts the nodes this reservation needs
    reservation = reserve(config)
    try:
        return _search(config, run, config_path, on_progress, resume, reservation)
    finally:
        reservation.release()


def _search(
    config: SearchConfig,
    run: OpenRun | None,
    config_path: str | None,
    on_progress: Progress | None,
    resume: bool,
    reservation: Reservation,
) -> SearchOutcome:
    if run is None:
        run = _new_run(config, config_path, reservation)
    if run.context.latency_model is None and config.budget.kind is BudgetKind.LATENCY:
        run.context = _fit_latency(run.context, reservation)  # a resumed run from before the fit
        run.context.save(run.folder.context)
    namespace = ray.get_runtime_context().namespace
    pool_name = f"ajpq-pool-{run.parent_run_id}"
    # prepared once, shipped through the object store (or the user's shared storage): workers
    # never read the driver's disk
    context_uri = (
        f"{config.context_uri.rstrip('/')}/{run.parent_run_id}/context.pt"
        if config.context_uri
        else None
    )
    data = data_source_for(run.context.config, run.splits)
    source = publish_context(run.context, data, context_uri)
    driver_node = ray.get_runtime_context().get_node_id()
    pool = EvaluatorPool.options(
        name=pool_name,
        namespace=namespace,
        # the only MLflow writer stays on the driver's node, next to the run folder
        scheduling_strategy=NodeAffinitySchedulingStrategy(driver_node, soft=False),
    ).remote(
        source,
        run.parent_run_id,
        str(run.folder.journal),
        reservation,
    )
    where = ray.get(pool.wait_ready.remote())
    logger.info(
        "%d evaluators ready on %d node(s), devices: %s",
        len(where),
        len({w["node_id"] for w in where}),
        ", ".join(sorted({w["device"] for w in where})),
    )
    binding.register()
    search = Search(config, run, pool, pool_name, namespace, resume, on_progress)
    interrupted = False
    try:
        search.run()
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("interrupted: resume with the same command plus --resume")
    except SearchAborted:
        with contextlib.suppress(Exception):  # MLflow may be what is down
            run.tracker.set_status(run.parent_run_id, "FAILED")
        raise
    finally:
        # every record is in the journal already; give MLflow a while to catch up
        waiting = ray.get(pool.flush.remote(FINAL_FLUSH_S))
        summary = ray.get(pool.summary.remote())
        records = ray.get(pool.all_records.remote())
        best_policy = ray.get(pool.best_policy.remote())
        ray.kill(pool)
    if waiting:
        logger.warning(
            "%d records are not in MLflow yet (they are safe in %s); push them with: ajpq sync %s",
            waiting,
            run.folder.journal,
            run.run_dir,
        )

    fidelity = None
    if not interrupted and summary["best"] is not None:
        measured = measure_fidelity(run, data, reservation)
        if measured is not None:
            fidelity, placed = measured
            _record_placements(run, [placed])
            summary["best"] = fidelity.best  # the best long score among the re-scored
            best_policy = best_policy_json(run.folder, fidelity.best.policy_key) or best_policy

    def on_test(policy: CompressionPolicy) -> FinalResult:
        final, where = run_on_evaluator(
            config,
            "report",
            final_on,
            run.context,
            data,
            policy.to_json(),
            config.tracking.log_model,
            config.tracking.model_onnx.value if config.tracking.model_onnx else None,
            reservation=reservation,
        )
        _record_placements(run, [where])
        return final

    return report(run, summary, records, best_policy, interrupted, on_test, fidelity)


def _record_placements(run: OpenRun, placements: list[Placement]) -> None:
    """Where device work ran: ``run.json`` and the MLflow parent run's tags."""
    for where in placements:
        run.folder.record_placement(where.step, where.to_dict())
        with contextlib.suppress(Exception):  # MLflow may be down: run.json has it
            run.tracker.client.set_tag(run.parent_run_id, f"ajpq.ran_on.{where.step}", where.tag())


def _prepare(
    config: SearchConfig, reservation: Reservation
) -> tuple[SearchContext, DataSplits, Placement]:
    """Build the network and read the data here; train it (when the cache has no weights),
    measure its fp32 accuracies and rank its channels on an evaluator's device."""
    splits = load_dataset(config.data)
    plan = plan_pretraining(
        config.model, config.data, splits, weights=config.weights, head=config.head
    )
    data = data_source_for(config, splits)
    context, where = run_on_evaluator(
        config, "prepare", reference_context, config, plan, data, reservation=reservation
    )
    store_pretrained(plan, context.model)  # the cache lives with the driver
    return context, splits, where


def _new_run(
    config: SearchConfig,
    config_path: str | None,
    reservation: Reservation,
) -> OpenRun:
    """Prepare the context (model, data, graph, importance) and open the MLflow parent run."""
    base = runs_folder(config)
    folder = RunDir.new(base)
    context, splits, where = _prepare(config, reservation)
    _check_scorer(context, splits)
    # an unreachable budget fails here, with the smallest reachable value, before anything is
    # created (a latency budget once the latency model is fitted on an evaluator's device)
    if config.budget.kind is BudgetKind.LATENCY:
        context = _fit_latency(context, reservation)
    else:
        check_budget(context)
    folder.path.mkdir(parents=True, exist_ok=True)
    context.save(folder.context)
    tracker = Tracker.for_search(config)
    params = {
        "model": config.model,
        "dataset": config.data.name.value,
        "budget_kind": config.budget.kind.value,
        "budget_value": config.budget.value,
        "fp32_val_accuracy": round(context.fp32_val_accuracy, 6),
        "fp32_test_accuracy": round(context.fp32_test_accuracy, 6),
    }
    plain = config.to_dict()
    for section in ("data", "space", "agent", "scoring", "evaluator"):
        params.update(flatten(plain[section], f"{section}."))
    params = {k: redact(v) if isinstance(v, str) else v for k, v in params.items()}
    tags = {"ajpq.run_dir": redact(folder.path), f"ajpq.ran_on.{where.step}": where.tag()}
    if config.tracking.parent_run_id:  # one trial of a sweep: nested under the sweep's run
        tags["mlflow.parentRunId"] = config.tracking.parent_run_id
    if config_path:
        tags["ajpq.config_path"] = redact(config_path)
    parent_run_id = tracker.start_search(run_base_name(config), params, tags)
    pointer = folder.write_pointer(parent_run_id)  # this run's MLflow parent, for ajpq export
    folder.record_placement(where.step, where.to_dict())
    mark_latest(base, pointer)
    folder.config.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))  # sync reads it
    with tempfile.TemporaryDirectory() as staging:  # MLflow's copy holds no credential
        shown = Path(staging) / folder.config.name
        shown.write_text(redact(folder.config.read_text()))
        tracker.log_artifact(parent_run_id, shown)
    return OpenRun(folder, parent_run_id, context, tracker, splits)


def _resume_run(config: SearchConfig) -> OpenRun:
    """Reopen the latest run of this config: its context on disk and its MLflow parent run."""
    base = runs_folder(config)
    try:
        folder = latest_run(base)
        if folder is None:
            raise ResumeError(f"nothing to resume under {base}; run without --resume first")
        if not (folder.context / "context.json").exists():
            raise ResumeError(f"{folder.path} holds no prepared search to resume")
        parent_run_id = folder.parent_run_id()
        context = SearchContext.load(folder.context)
    except (RunDirError, ContextSchemaError) as error:
        raise ResumeError(str(error)) from None
    check_same_search(context.config, config, folder.path)  # before touching anything
    tracker = Tracker.for_search(config)
    tracker.set_status(parent_run_id, "RUNNING")
    return OpenRun(folder, parent_run_id, context, tracker, context.load_data())
