"""Sweeps: a Ray Tune experiment whose trials are whole searches.

``run_sweep`` opens one MLflow run for the sweep (``ajpq.role=sweep``); each Tune trial runs
:func:`ajpq.run.driver.run_search` on the base config with the trial's values, nested under
the sweep's run and tagged with the sweep id and every swept key, inside a placement group
that holds its driver, evaluators and env runners (``search_bundles``), so concurrent trials
never starve each other and an autoscaler sees what is pending. Trials report episodes and the
best policy's metrics to Tune. At the end the sweep run gets the Pareto front over every policy
of every trial (CSV + PNG) and a table of each trial's best policy. ``resume=True`` restores
the Tune experiment: finished trials are not rerun and an interrupted search continues from its
own checkpoint and journal, so no policy is scored twice.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ray
from ray import tune

from ajpq.core.budget import Budget, BudgetKind
from ajpq.run.driver import run_search
from ajpq.run.experience import EXPERIENCE
from ajpq.run.plots import plot_fronts, plot_tradeoffs
from ajpq.run.preflight import check_tracking_uri, resolve_locations
from ajpq.run.resources import ensure_ray, local_num_cpus, search_bundles
from ajpq.run.rundir import latest_pointer, runs_folder
from ajpq.run.storage import RunMirror, is_uri
from ajpq.run.tracking import Tracker, redact_uri
from ajpq.search.config import SearchConfig
from ajpq.search.pareto import pareto_front
from ajpq.search.reward import admitted, best_key
from ajpq.search.sweep_config import SweepConfig, with_values

__all__ = ["run_sweep", "SweepOutcome", "sweep_folder", "summarize_sweep", "trial_config"]

logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
SWEEPS = "sweeps"  # <output_dir>/sweeps/<sweep name>/


@dataclass
class SweepOutcome:
    sweep_dir: Path
    sweep_run_id: str
    trials: list[dict[str, Any]]  # each trial's best policy, with its swept values
    front: list[dict[str, Any]]  # accuracy vs compression ratio, non-dominated
    errors: int
    tracking_uri: str | None
    files: dict[str, Path] = field(default_factory=dict)


def sweep_folder(config: SweepConfig) -> Path:
    return Path(config.base.output_dir) / SWEEPS / config.sweep.name


def _space(config: SweepConfig) -> dict[str, Any]:
    space: dict[str, Any] = {key: tune.grid_search(v) for key, v in config.sweep.grid.items()}
    for key, spec in config.sweep.random.items():
        if isinstance(spec, list):
            space[key] = tune.choice(spec)
        else:
            ((kind, (low, high)),) = spec.items()
            space[key] = {
                "uniform": tune.uniform,
                "loguniform": tune.loguniform,
                "randint": tune.randint,
            }[kind](low, high)
    return space


def trial_config(
    base: SearchConfig,
    params: dict[str, Any],
    sweep_run_id: str,
    output_dir: str,
    experience_dir: str | None = None,
) -> SearchConfig:
    """The search of one trial: the base with the trial's values, its own run folder, nested
    under the sweep's MLflow run and tagged with the sweep id and each swept key's value;
    ``experience_dir``: the sweep's shared experience (``sweep.share_experience``)."""
    tags = {**base.tracking.tags, "ajpq.sweep": sweep_run_id}
    tags.update({key: str(value) for key, value in params.items()})
    return with_values(
        base,
        {
            **params,
            "output_dir": output_dir,
            "tracking.tags": tags,
            "tracking.parent_run_id": sweep_run_id,
            "experience_dir": experience_dir,
        },
    )


def sweep_trial(
    params: dict[str, Any],
    base: dict[str, Any],
    sweep_run_id: str,
    sweep_dir: str,
    share_experience: bool = False,
) -> None:
    """One Tune trial: one search. A restored trial finds its run folder and resumes it."""
    if not logging.getLogger().handlers:  # the trial's log (Tune keeps its output)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    trial_id = tune.get_context().get_trial_id()
    folder = str(Path(sweep_dir) / "trials" / trial_id)
    experience = str(Path(sweep_dir) / EXPERIENCE) if share_experience else None
    config = trial_config(SearchConfig.from_dict(base), params, sweep_run_id, folder, experience)
    resume = latest_pointer(runs_folder(config)).exists()
    outcome = run_search(config, resume=resume, on_progress=tune.report)
    final: dict[str, Any] = {"episodes": float(outcome.episodes), "done": 1.0}
    if outcome.best is not None:
        final.update(
            best_accuracy=outcome.best.accuracy,
            best_compression_ratio=outcome.best.compression_ratio,
            best_bitops_ratio=outcome.best.bitops_ratio,
        )
    tune.report(final)


def _ensure_ray(config: SweepConfig) -> None:
    """A local Ray gets room for ``max_concurrent_trials`` searches at once."""
    base = config.base
    per_trial = sum(b.get("CPU", 0.0) for b in search_bundles(base, config.sweep.trial_cpus))
    concurrent = math.ceil(per_trial * config.sweep.max_concurrent_trials + 0.5)
    ensure_ray(base, max(local_num_cpus(base), concurrent))


def _open_sweep(config: SweepConfig, tracker: Tracker, resume: bool) -> tuple[Path, str]:
    folder = sweep_folder(config)
    latest = latest_pointer(folder)
    if resume:
        if not latest.exists():
            raise ValueError(f"no sweep to resume under {folder}; run without --resume first")
        state = json.loads(latest.read_text())
        tracker.set_status(state["sweep_run_id"], "RUNNING")
        sweep_dir = Path(state["sweep_dir"])
        if not sweep_dir.exists():  # the sweeps folder moved (a mirror on another machine)
            sweep_dir = folder / sweep_dir.name
        return sweep_dir, state["sweep_run_id"]
    sweep_dir = folder / time.strftime("%Y%m%d-%H%M%S")
    sweep_dir.mkdir(parents=True, exist_ok=False)
    params = {f"sweep.grid.{k}": json.dumps(v) for k, v in config.sweep.grid.items()}
    params.update({f"sweep.random.{k}": json.dumps(v) for k, v in config.sweep.random.items()})
    params.update(
        num_samples=config.sweep.num_samples,
        max_concurrent_trials=config.sweep.max_concurrent_trials,
        share_experience=config.sweep.share_experience,
        model=config.base.model,
        dataset=config.base.data.name.value,
    )
    run = tracker.client.create_run(
        tracker.experiment_id,
        run_name=f"sweep-{config.sweep.name}",
        tags={"ajpq.role": "sweep", "ajpq.sweep_dir": str(sweep_dir)},
    )
    sweep_run_id = run.info.run_id
    for key, value in sorted(params.items()):
        tracker.client.log_param(sweep_run_id, key, str(value)[:6000])
    pointer = json.dumps({"sweep_dir": str(sweep_dir), "sweep_run_id": sweep_run_id})
    (sweep_dir / SWEEP_FILE).write_text(pointer)
    latest.write_text(pointer)
    return sweep_dir, sweep_run_id


def run_sweep(config: SweepConfig, resume: bool = False) -> SweepOutcome:
    """Run (or, with ``resume``, continue) the sweep described by ``config``. With a URI as
    ``output_dir`` the sweep's folder (trials' run folders, Tune's state) is kept in a local
    copy on this node, where every trial's driver runs, and pushed there as it changes."""
    config = SweepConfig(resolve_locations(config.base), config.sweep)
    if is_uri(config.base.output_dir):
        mirror = RunMirror(config.base.output_dir)
        if resume:
            mirror.pull(f"{SWEEPS}/{config.sweep.name}")
        local = dataclasses.replace(config.base, output_dir=str(mirror.local))
        with mirror:
            return run_sweep(SweepConfig(local, config.sweep), resume)
    base = config.base
    check_tracking_uri(base.tracking.uri)
    tracker = Tracker(base.tracking.uri, base.tracking.experiment)
    sweep_dir, sweep_run_id = _open_sweep(config, tracker, resume)
    _ensure_ray(config)
    # each trial's search driver runs on this node, so its run folder (journal, checkpoints)
    # is on the sweep's disk and --resume finds it; evaluators and env runners go anywhere
    node_id = ray.get_runtime_context().get_node_id()
    ip = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)
    here = f"node:{ip}"

    def resources(params: dict[str, Any]) -> tune.PlacementGroupFactory:
        bundles = search_bundles(config.trial_config(params), config.sweep.trial_cpus)
        bundles[0][here] = 0.001
        return tune.PlacementGroupFactory(bundles)

    trainable = tune.with_resources(
        tune.with_parameters(
            sweep_trial,
            base=base.to_dict(),
            sweep_run_id=sweep_run_id,
            sweep_dir=str(sweep_dir),
            share_experience=config.sweep.share_experience,
        ),
        resources,
    )
    storage = str(sweep_dir.resolve())
    if resume and tune.Tuner.can_restore(os.path.join(storage, "tune")):
        tuner = tune.Tuner.restore(
            os.path.join(storage, "tune"), trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=_space(config),
            tune_config=tune.TuneConfig(
                num_samples=config.sweep.num_samples,
                max_concurrent_trials=config.sweep.max_concurrent_trials,
            ),
            run_config=tune.RunConfig(name="tune", storage_path=storage, verbose=1),
        )
    interrupted = False
    try:
        results = tuner.fit()
        errors = results.num_errors
        # Tune catches Ctrl-C / SIGTERM itself, saves its state and returns early
        interrupted = results.num_terminated + errors < len(results)
    except KeyboardInterrupt:
        interrupted, errors = True, 0
    outcome = summarize_sweep(tracker, sweep_run_id, sweep_dir)
    outcome.errors = errors
    status = "KILLED" if interrupted else ("FAILED" if errors else "FINISHED")
    tracker.set_status(sweep_run_id, status)
    if interrupted:
        raise KeyboardInterrupt
    return outcome


def _policy_runs(tracker: Tracker, sweep_run_id: str) -> list[Any]:
    return tracker.runs_where(
        f"tags.`ajpq.sweep` = '{sweep_run_id}' and tags.`ajpq.role` = 'policy' "
        "and tags.`ajpq.status` = 'ok'"
    )


def _swept_keys(tracker: Tracker, sweep_run_id: str) -> list[str]:
    params = tracker.client.get_run(sweep_run_id).data.params
    return sorted(
        key.split(".", 2)[2] for key in params if key.startswith(("sweep.grid.", "sweep.random."))
    )


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _within_budget(tags: dict[str, str], metrics: dict[str, float]) -> bool:
    """Whether a policy run may be its search's best (:func:`admitted`, on its MLflow numbers)."""
    try:
        budget = Budget(BudgetKind(tags.get("budget_kind")), float(tags.get("budget_value", "")))
    except ValueError:
        return True
    scored = SimpleNamespace(
        compression_ratio=metrics.get("compression_ratio", 0.0),
        bitops_ratio=metrics.get("bitops_ratio", 1.0),
        latency_ms=metrics.get("latency_ms", -1.0),
    )
    return admitted(budget, scored)


def _search_metric(tracker: Tracker, run_id: str, name: str) -> float:
    try:
        return float(tracker.client.get_run(run_id).data.metrics.get(name, float("nan")))
    except Exception:  # noqa: BLE001 - a missing run: the column says nan
        return float("nan")


def summarize_sweep(tracker: Tracker, sweep_run_id: str, sweep_dir: Path) -> SweepOutcome:
    """Pareto fronts and each trial's best, from MLflow (every node's records end there)."""
    keys = _swept_keys(tracker, sweep_run_id)
    points: list[dict[str, Any]] = []
    layers: dict[str, dict[str, float]] = {}  # per policy run: its per-layer choices
    for run in _policy_runs(tracker, sweep_run_id):
        metrics, tags = run.data.metrics, run.data.tags
        points.append(
            {
                "search_run_id": tags.get("mlflow.parentRunId", ""),
                **{key: tags.get(key, "") for key in keys},
                "episode": int(metrics.get("episode", 0)),
                "accuracy": metrics.get("accuracy", 0.0),
                "reward": metrics.get("reward", metrics.get("accuracy", 0.0)),
                "compression_ratio": metrics.get("compression_ratio", 0.0),
                "bitops_ratio": metrics.get("bitops_ratio", 1.0),
                "latency_ms": metrics.get("latency_ms", -1.0),
                "policy_run_id": run.info.run_id,
                "within_budget": _within_budget(tags, metrics),
            }
        )
        layers[run.info.run_id] = {k: v for k, v in metrics.items() if k.startswith("layers/")}
    by_ratio = pareto_front(points, lambda p: (p["accuracy"], p["compression_ratio"]))
    by_bitops = pareto_front(points, lambda p: (p["accuracy"], -p["bitops_ratio"]))
    best: dict[str, dict[str, Any]] = {}
    for point in points:
        if not point["within_budget"]:  # a stepwise search's pruning stage, say
            continue
        kept = best.get(point["search_run_id"])
        if kept is None or best_key(SimpleNamespace(**point)) > best_key(SimpleNamespace(**kept)):
            best[point["search_run_id"]] = point
    on_ratio = {p["policy_run_id"] for p in by_ratio}
    on_bitops = {p["policy_run_id"] for p in by_bitops}
    bests = {p["policy_run_id"] for p in best.values()}
    rows = [
        {
            **p,
            "front_ratio": p["policy_run_id"] in on_ratio,
            "front_bitops": p["policy_run_id"] in on_bitops,
            "trial_best": p["policy_run_id"] in bests,
        }
        for p in points
        if p["policy_run_id"] in on_ratio | on_bitops | bests
    ]
    rows.sort(key=lambda r: -r["accuracy"])
    trials = sorted(best.values(), key=lambda p: [p.get(k, "") for k in keys])
    for trial in trials:  # how well each trial's cheap score ranked (ajpq.run.fidelity)
        trial["proxy_rank_corr"] = _search_metric(
            tracker, trial["search_run_id"], "proxy_rank_corr"
        )
    files = {
        "pareto_csv": _write_csv(sweep_dir / "pareto.csv", rows),
        "trials_csv": _write_csv(sweep_dir / "trials.csv", trials),
    }
    png = plot_fronts(points, by_ratio, by_bitops, list(best.values()), sweep_dir / "pareto.png")
    if png is not None:
        files["pareto_png"] = png
    tradeoffs = plot_tradeoffs(points, sweep_dir / "plots")
    table = [{**p, **layers[p["policy_run_id"]]} for p in points]
    try:
        for path in files.values():
            tracker.log_artifact(sweep_run_id, path)
        for path in tradeoffs:
            tracker.log_artifact(sweep_run_id, path, "plots")
        tracker.log_policies(sweep_run_id, table)
        tracker.client.log_metric(sweep_run_id, "policies", float(len(points)))
        tracker.client.log_metric(sweep_run_id, "trials", float(len(best)))
        if points:
            top = max(points, key=lambda p: p["accuracy"])
            tracker.client.log_metric(sweep_run_id, "best_accuracy", top["accuracy"])
    except Exception as error:  # noqa: BLE001 - the files are in the sweep folder
        logger.warning("could not log the sweep summary to MLflow (%s); see %s", error, sweep_dir)
    return SweepOutcome(
        sweep_dir=sweep_dir,
        sweep_run_id=sweep_run_id,
        trials=trials,
        front=by_ratio,
        errors=0,
        tracking_uri=redact_uri(tracker.uri),
        files=files,
    )
