"""The search driver: prepare the context once, ship it through Ray's object store, start the
evaluator pool on the driver's node, run DDPG (asynchronous sampling) until the episode budget
is spent, checkpoint as it goes, and report the best policy (also into MLflow).

Only this process reads and writes the driver's disk (run folder, checkpoints, context copy);
env runners and evaluators get everything through Ray, so worker machines need no shared disk.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ajpq.agent import DDPG, DDPGConfig
from ajpq.budget import Budget, BudgetKind, budget_value, enforce_budget
from ajpq.builder import uniform_policy
from ajpq.config import Method, SearchConfig
from ajpq.cost import CostModel
from ajpq.data import DataSplits
from ajpq.policy import CompressionPolicy
from ajpq.scoring import load_scorer
from ajpq.search import binding
from ajpq.search.context import (
    SearchContext,
    data_source_for,
    prepare_context,
    publish_context,
)
from ajpq.search.env import CompressionEnv, Stage
from ajpq.search.evaluators import EvaluatorPool, fit_latency_remote
from ajpq.search.journal import JOURNAL_FILE
from ajpq.search.methods import make_proposer, run_proposals, uniform_candidates
from ajpq.search.record import PolicyRecord, learning_curve
from ajpq.search.tracking import Tracker, redact_uri

__all__ = [
    "SearchOutcome",
    "run_search",
    "run_base_name",
    "runs_folder",
    "ResumeError",
    "load_best_policy",
    "search_bundles",
    "ensure_ray",
    "resolve_locations",
    "DEFAULT_TRACKING_URI",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

logger = logging.getLogger(__name__)


class ResumeError(ValueError):
    """Nothing to resume, or the previous run is incompatible."""


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


def run_base_name(config: SearchConfig) -> str:
    if config.tracking.run_name:
        return config.tracking.run_name
    model = re.sub(r"[^A-Za-z0-9_.-]", "-", config.model)  # package.module:factory too
    name = f"{model}-{config.data.name.value}-{config.budget.kind.value}{config.budget.value:g}-s{config.agent.seed}"
    return name if config.method is Method.DDPG else f"{name}-{config.method.value}"


def runs_folder(config: SearchConfig) -> Path:
    """Where the runs of ``config`` live: one folder per run, plus ``latest.json``."""
    return Path(config.output_dir).resolve() / run_base_name(config)


def resolve_locations(config: SearchConfig) -> SearchConfig:
    """Pin what is relative to the driver: the output folder and the tracking URI.

    No ``tracking.uri``: ``$MLFLOW_TRACKING_URI`` (the cluster files set it to the head's
    tracking server), else ``sqlite:///mlflow.db``. A relative SQLite path becomes absolute
    here, on the driver, so the database never lands on whichever node an actor runs on."""
    uri = config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).expanduser().resolve())
    elif "://" not in uri:  # a plain folder: MLflow's file store
        uri = str(Path(uri).resolve())
    return dataclasses.replace(
        config,
        tracking=dataclasses.replace(config.tracking, uri=uri),
        output_dir=str(Path(config.output_dir).expanduser().resolve()),
    )


def check_tracking_uri(uri: str, timeout_s: float = 10.0) -> None:
    """A tracking server must answer before anything is created (MLflow's own client would
    retry for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as reply:
            if reply.status == 200:
                return
            problem = f"HTTP {reply.status}"
    except (urllib.error.URLError, OSError) as error:
        problem = str(getattr(error, "reason", error))
    raise ValueError(
        f"tracking URI {redact_uri(uri)} does not answer ({problem}); start the MLflow server "
        "or pass another --tracking-uri"
    )


def _check_writable(folder: Path) -> None:
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(f"output_dir: cannot write into {existing}; choose another output_dir")


def _check_resources(config: SearchConfig) -> None:
    """Some node must be able to host one evaluator. On a Ray of our own that is known now; on
    a cluster an autoscaler may still add nodes, so wait ``evaluator.start_timeout_s`` first.
    Otherwise the evaluators would wait forever: say what is missing instead."""
    ev = config.evaluator
    need = {"CPU": ev.num_cpus, "GPU": ev.num_gpus}
    wait_s = 0.0 if config.ray_address is None else ev.start_timeout_s
    deadline = time.time() + wait_s
    while True:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if any(all(r.get(k, 0.0) >= v for k, v in need.items() if v > 0) for r in nodes):
            return
        if time.time() >= deadline:
            break
        time.sleep(2.0)
    largest = {k: max((r.get(k, 0.0) for r in nodes), default=0.0) for k in need}
    waited = f" (waited {wait_s:.0f} s for nodes to join)" if wait_s else ""
    raise ValueError(
        f"no node can host an evaluator with evaluator.num_cpus={ev.num_cpus:g}, "
        f"evaluator.num_gpus={ev.num_gpus:g}: the largest node has {largest['CPU']:g} CPUs and "
        f"{largest['GPU']:g} GPUs{waited}; lower the request or add such nodes"
    )


def _ddpg_config(
    config: SearchConfig, env_config: dict[str, Any], episodes: int | None = None
) -> DDPGConfig:
    agent, ev = config.agent, config.evaluator
    # an env runner mostly waits on the pool: it reserves little so evaluators can be scheduled;
    # a sample must never be dropped for being slow: allow every retry of an evaluation
    sample_timeout = ev.timeout_s * (ev.max_retries + 1) + 600.0
    return (
        DDPGConfig()
        .environment(binding.ENV_NAME, env_config=env_config, disable_env_checking=True)
        .env_runners(
            num_env_runners=agent.env_runners,
            num_cpus_per_env_runner=ENV_RUNNER_CPUS,
            sample_timeout_s=sample_timeout,
            rollout_fragment_length=1,
            batch_mode="complete_episodes",
        )
        .learners(num_learners=0)
        .training(
            actor_hiddens=list(agent.hiddens),
            critic_hiddens=list(agent.hiddens),
            actor_lr=agent.actor_lr,
            critic_lr=agent.critic_lr,
            tau=agent.tau,
            train_batch_size_per_learner=agent.batch_size,
            warmup_episodes=agent.warmup_episodes,
            noise_sigma=agent.noise_sigma,
            noise_decay=agent.decay_over(episodes or agent.episodes),
            baseline_decay=agent.baseline_decay,
            credit_assignment=agent.credit_assignment.value,
            # env runners never wait for each other: learn from whichever episodes finished
            async_sampling=True,
            max_episodes=episodes or agent.episodes,
        )
        .debugging(seed=agent.seed)
    )


ENV_RUNNER_CPUS = 0.05


def search_bundles(config: SearchConfig, driver_cpus: float = 1.0) -> list[dict[str, float]]:
    """The resources of one search as placement-group bundles: its driver (the agent learns
    there), each env runner (RLlib puts env runner i in bundle i), each evaluator
    (``evaluators.evaluator_bundle``)."""
    ev = config.evaluator
    evaluator = {"CPU": ev.num_cpus, **({"GPU": ev.num_gpus} if ev.num_gpus else {})}
    return [
        {"CPU": driver_cpus},
        *[{"CPU": ENV_RUNNER_CPUS} for _ in range(config.agent.env_runners)],
        *[dict(evaluator) for _ in range(ev.num_evaluators)],
    ]


def local_num_cpus(config: SearchConfig) -> int:
    """Logical CPUs for a local Ray: at least the cores, and enough that every evaluator and env
    runner can be scheduled (env runners mostly wait on evaluators, so they reserve little)."""
    needed = (
        config.evaluator.num_evaluators * config.evaluator.num_cpus
        + config.agent.env_runners * ENV_RUNNER_CPUS
    )
    return max(os.cpu_count() or 1, math.ceil(needed + 0.5))


def ensure_ray(config: SearchConfig, local_cpus: int | None = None) -> None:
    """Connect to ``ray_address``, or start a Ray of our own with ``ray_num_cpus``, else
    ``local_cpus``, else what one search needs (:func:`local_num_cpus`)."""
    if not ray.is_initialized():
        local = config.ray_address is None
        cpus = config.ray_num_cpus or local_cpus or local_num_cpus(config)
        ray.init(
            # without ray_address: always a Ray of our own, even when another one runs here
            address="local" if local else config.ray_address,
            num_cpus=cpus if local else None,
            include_dashboard=False,
            log_to_driver=False,
            namespace="ajpq",
        )


def _save_checkpoint(algo: DDPG, run_dir: Path, name: str = "checkpoint") -> Path:
    final = run_dir / name
    tmp = run_dir / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save_to_path(str(tmp))
    old = run_dir / f"{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _plot(records: list[dict[str, Any]], path: Path) -> Path | None:
    ok = [r for r in records if not r.get("failed")]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    episodes = [r["episode"] for r in ok]
    best, running = [], -float("inf")
    for r in ok:
        running = max(running, r["accuracy"])
        best.append(running)
    left.plot(episodes, [r["accuracy"] for r in ok], ".", label="policy")
    left.plot(episodes, best, "-", label="best so far")
    left.set_xlabel("episode")
    left.set_ylabel("validation accuracy")
    left.legend()
    right.scatter(
        [r["compression_ratio"] for r in ok],
        [r["accuracy"] for r in ok],
        c=episodes,
        cmap="viridis",
    )
    right.set_xlabel("compression ratio (fp32 size / size)")
    right.set_ylabel("validation accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@dataclass
class _OpenRun:
    run_dir: Path
    parent_run_id: str
    context: SearchContext
    tracker: Tracker
    splits: DataSplits


def _fit_latency(context: SearchContext, run_dir: Path) -> SearchContext:
    """Fit the latency model on an evaluator's kind of device, then check the budget."""
    ev = context.config.evaluator
    fitted, device = ray.get(fit_latency_remote(context.config).remote(context, ev.torch_threads))
    logger.info(
        "latency model on %s: %.3f ms + %.3g ms/MAC", device, fitted.intercept_ms, fitted.ms_per_mac
    )
    context = context.with_latency_model(fitted, device)
    _check_budget(context)
    context.save(run_dir / "context")
    return context


def _check_budget(context: SearchContext) -> None:
    """An unreachable budget raises ValueError naming the smallest reachable value."""
    config = context.config
    enforce_budget(
        uniform_policy(context.graph, 8, 8, config.model),
        config.budget,
        CostModel(context.graph),
        context.importance,
        context.latency_model,
    )


Progress = Callable[[dict[str, float]], None]


def run_search(
    config: SearchConfig,
    resume: bool = False,
    config_path: str | None = None,
    on_progress: Progress | None = None,
) -> SearchOutcome:
    """Run (or continue, with ``resume``) one search described by ``config``. ``on_progress``
    gets the episode count and the best policy's metrics as they change (a sweep's trial
    reports them to Tune). Inside a placement group (a Tune trial) the evaluators are
    scheduled in it too."""
    config = resolve_locations(config)
    check_tracking_uri(config.tracking.uri)
    _check_writable(Path(config.output_dir))
    run = _resume_run(config) if resume else None
    ensure_ray(config)
    _check_resources(config)
    if run is None:
        run = _new_run(config, config_path)
    if run.context.latency_model is None and config.budget.kind is BudgetKind.LATENCY:
        run.context = _fit_latency(run.context, run.run_dir)
    namespace = ray.get_runtime_context().namespace
    pool_name = f"ajpq-pool-{run.parent_run_id}"
    # prepared once, shipped through the object store (or the user's shared storage): workers
    # never read the driver's disk
    context_uri = (
        f"{config.context_uri.rstrip('/')}/{run.parent_run_id}/context.pt"
        if config.context_uri
        else None
    )
    source = publish_context(
        run.context, data_source_for(run.context.config, run.splits), context_uri
    )
    driver_node = ray.get_runtime_context().get_node_id()
    pool = EvaluatorPool.options(
        name=pool_name,
        namespace=namespace,
        # the only MLflow writer stays on the driver's node, next to the run folder
        scheduling_strategy=NodeAffinitySchedulingStrategy(driver_node, soft=False),
    ).remote(
        source,
        run.parent_run_id,
        str(run.run_dir / JOURNAL_FILE),
        ray.util.get_current_placement_group(),
    )
    where = ray.get(pool.wait_ready.remote())
    logger.info(
        "%d evaluators ready on %d node(s), devices: %s",
        len(where),
        len({w["node_id"] for w in where}),
        ", ".join(sorted({w["device"] for w in where})),
    )
    binding.register()
    search = _Search(config, run, pool, pool_name, namespace, resume, on_progress)
    interrupted = False
    try:
        search.run()
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("interrupted: resume with the same command plus --resume")
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
            run.run_dir / JOURNAL_FILE,
            run.run_dir,
        )
    return _report(run, summary, records, best_policy, interrupted)


def _new_run(config: SearchConfig, config_path: str | None) -> _OpenRun:
    """Prepare the context (model, data, graph, importance) and open the MLflow parent run."""
    base = runs_folder(config)
    run_dir = base / time.strftime("%Y%m%d-%H%M%S")
    context, splits = prepare_context(config)
    # an unreachable budget fails here, with the smallest reachable value, before Ray starts
    # (a latency budget is checked once the latency model is fitted on an evaluator's device)
    if config.budget.kind is not BudgetKind.LATENCY:
        _check_budget(context)
    run_dir.mkdir(parents=True, exist_ok=True)
    context.save(run_dir / "context")
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
        params.update(_flatten(plain[section], f"{section}."))
    tags = {"ajpq.run_dir": str(run_dir)}
    if config.tracking.parent_run_id:  # one trial of a sweep: nested under the sweep's run
        tags["mlflow.parentRunId"] = config.tracking.parent_run_id
    if config_path:
        tags["ajpq.config_path"] = str(config_path)
    parent_run_id = tracker.start_search(run_base_name(config), params, tags)
    pointer = json.dumps({"run_dir": str(run_dir), "parent_run_id": parent_run_id})
    (run_dir / "run.json").write_text(pointer)  # this run's MLflow parent, for ajpq export
    (base / "latest.json").write_text(pointer)
    resolved = run_dir / "config.yaml"
    resolved.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tracker.log_artifact(parent_run_id, resolved)
    return _OpenRun(run_dir, parent_run_id, context, tracker, splits)


def _resume_run(config: SearchConfig) -> _OpenRun:
    """Reopen the latest run of this config: its context on disk and its MLflow parent run."""
    base = runs_folder(config)
    latest = base / "latest.json"
    if not latest.exists():
        raise ResumeError(f"nothing to resume under {base}; run without --resume first")
    state = json.loads(latest.read_text())
    run_dir = Path(state["run_dir"])
    if not (run_dir / "context" / "context.json").exists():
        raise ResumeError(f"{run_dir} holds no prepared search to resume")
    context = SearchContext.load(run_dir / "context")
    _check_same_search(context.config, config, run_dir)  # before touching anything
    tracker = Tracker.for_search(config)
    tracker.set_status(state["parent_run_id"], "RUNNING")
    return _OpenRun(run_dir, state["parent_run_id"], context, tracker, context.load_data())


# what may change between a run and its --resume (how long, how parallel, where things go)
RESUME_MAY_CHANGE = {
    "agent.episodes",
    "agent.env_runners",
    "evaluator.num_evaluators",
    "evaluator.num_cpus",
    "evaluator.num_gpus",
    "evaluator.torch_threads",
    "evaluator.max_retries",
    "evaluator.timeout_s",
    "evaluator.start_timeout_s",
    "scoring.latency_repeats",
    "output_dir",
    "ray_address",
    "ray_num_cpus",
    "context_uri",
}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "scorer_args":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_same_search(saved: SearchConfig, given: SearchConfig, run_dir: Path) -> None:
    """A checkpoint only continues the search it came from."""
    before, now = _flatten(saved.to_dict()), _flatten(given.to_dict())
    for key in sorted(set(before) | set(now)):
        if key not in RESUME_MAY_CHANGE and before.get(key) != now.get(key):
            raise ResumeError(
                f"--resume: the run in {run_dir} was started with {key}={before.get(key)!r}, "
                f"not {now.get(key)!r}; resume with the run's own setting or start a new run"
            )


CHECKPOINT_EVERY_S = 10.0
PROGRESS_EVERY_S = 1.0
FINAL_FLUSH_S = 120.0


STEPWISE_BASE = "stepwise_base.json"


@dataclass
class _Search:
    """Runs ``config.method`` against the evaluator pool until ``agent.episodes`` episodes."""

    config: SearchConfig
    open_run: _OpenRun
    pool: Any
    pool_name: str
    namespace: str
    resume: bool
    on_progress: Progress | None

    def scored(self) -> int:
        return int(ray.get(self.pool.summary.remote())["episodes"])

    def run(self) -> None:
        method = self.config.method
        target = self.config.agent.episodes
        if method is Method.DDPG:
            self._ddpg(binding.env_config_for(self.pool_name, self.namespace), target, 0)
        elif method is Method.STEPWISE:
            self._stepwise(target)
        elif method is Method.UNIFORM:
            self._uniform(target)
        else:
            self._propose(method, target)

    # -- DDPG (the joint search, and each stage of the stepwise one) -------------------------
    def _ddpg(
        self, env_config: dict[str, Any], target: int, offset: int, name: str = "checkpoint"
    ) -> None:
        """DDPG until ``target`` episodes of its own; ``offset`` episodes came before it."""
        algo = _ddpg_config(self.config, env_config, target).build_algo()
        try:
            if self.resume:
                checkpoint = self.open_run.run_dir / name
                if checkpoint.exists():
                    algo.restore_from_path(str(checkpoint))
                # policies scored after the last checkpoint (or before any) are in the journal:
                # they count, and are never scored again, so N episodes give N policies
                algo.episodes_done = max(algo.episodes_done, self.scored() - offset)
                logger.info(
                    "resumed from %s at episode %d", self.open_run.run_dir, algo.episodes_done
                )
            self._train(algo, target, offset, name)
        finally:
            algo.stop()

    def _train(self, algo: DDPG, target: int, offset: int, name: str) -> None:
        """Each iteration learns from the episodes that finished while the others keep
        running. The agent is checkpointed every ``CHECKPOINT_EVERY_S``, at the end and on
        Ctrl-C / SIGTERM; records need no flush first (the pool journals each one durably)."""
        progress = _ProgressLog(self, offset + target)
        try:
            while algo.episodes_done < target:
                algo.train()
                done = algo.episodes_done >= target
                if done or progress.since_checkpoint() >= CHECKPOINT_EVERY_S:
                    _save_checkpoint(algo, self.open_run.run_dir, name)
                    progress.checkpointed()
                progress.update(offset + algo.episodes_done, done)
        except KeyboardInterrupt:
            _save_checkpoint(algo, self.open_run.run_dir, name)
            raise

    def _stepwise(self, target: int) -> None:
        """AMC, then HAQ: DDPG prunes at the space's top bits to a stage budget, then DDPG
        searches bits (in ``space.precision``) on the best pruned network; half the episodes
        each. The stage budget splits the squeeze geometrically: with f the budget value of the
        unpruned network at the top bits, pruning goes to sqrt(budget x f) (at least budget)."""
        first = max(1, target // 2)
        base_file = self.open_run.run_dir / STEPWISE_BASE
        if not base_file.exists():
            context = self.open_run.context
            top = uniform_policy(
                context.graph,
                self.config.space.max_weight_bits,
                self.config.space.max_act_bits,
                self.config.model,
            )
            budget = self.config.budget
            at_top = budget_value(top, budget, CostModel(context.graph), context.latency_model)
            stage_budget = Budget(
                budget.kind, min(1.0, max(budget.value, (budget.value * at_top) ** 0.5))
            )
            logger.info(
                "stepwise: pruning at %d bits to %s %.4g, then bits to %.4g",
                self.config.space.max_weight_bits,
                budget.kind.value,
                stage_budget.value,
                budget.value,
            )
            stage = Stage(bits=False, budget=stage_budget)
            self._ddpg(
                binding.env_config_for(self.pool_name, self.namespace, stage),
                first,
                0,
                "checkpoint-prune",
            )
            # the pruning stage's best by its own reward (its policies are above the search's
            # budget, so they are never the search's best)
            records = [r for r in ray.get(self.pool.all_records.remote()) if not r.failed]
            if not records:
                raise RuntimeError("stepwise: every pruned policy failed; see the records")
            best = max(records, key=lambda r: (r.reward, r.compression_ratio))
            base_file.write_text(ray.get(self.pool.policy_json.remote(best.policy_key)))
        stage = Stage(prune=False, base_policy=base_file.read_text())
        self._ddpg(
            binding.env_config_for(self.pool_name, self.namespace, stage),
            target - first,
            first,
            "checkpoint-bits",
        )

    # -- baselines ---------------------------------------------------------------------------
    def _make_env(self) -> CompressionEnv:
        return CompressionEnv(
            self.open_run.context, binding.PoolClient(self.pool_name, self.namespace)
        )

    def _propose(self, method: Method, target: int) -> None:
        done = self.scored() if self.resume else 0
        if done and method is Method.TPE:
            logger.warning(
                "tpe: resumed at %d episodes with a fresh sampler (its history is not kept)", done
            )
        agent = self.config.agent
        groups = len(self.open_run.context.graph.groups)  # one env step per group
        proposer = make_proposer(method, groups, agent.seed + done, agent.warmup_episodes)
        progress = _ProgressLog(self, target)
        played = done

        def on_episode(record: Any) -> None:
            nonlocal played
            played += 1
            progress.update(played, played >= target)

        run_proposals(
            self._make_env,
            proposer,
            target - done,
            self.config.evaluator.num_evaluators,
            on_episode,
        )

    def _uniform(self, target: int) -> None:
        context = self.open_run.context
        candidates = uniform_candidates(
            context.model,
            context.graph,
            context.importance,
            self.config.budget,
            self.config.space,
            self.config.model,
            context.latency_model,
        )[:target]
        client = binding.PoolClient(self.pool_name, self.namespace)
        done = self.scored() if self.resume else 0
        progress = _ProgressLog(self, len(candidates))
        for count, policy in enumerate(candidates[done:], start=done + 1):
            client(policy)
            progress.update(count, count >= len(candidates))


class _ProgressLog:
    """Logs progress at most every ``PROGRESS_EVERY_S`` (and at the end); reports it to the
    ``on_progress`` callback (a sweep's trial tells Tune)."""

    def __init__(self, search: _Search, target: int) -> None:
        self.search = search
        self.target = target
        self.started = self.last_log = self.last_checkpoint = time.time()
        self.logged = -1

    def since_checkpoint(self) -> float:
        return time.time() - self.last_checkpoint

    def checkpointed(self) -> None:
        self.last_checkpoint = time.time()

    def update(self, episodes: int, done: bool) -> None:
        now = time.time()
        if episodes == self.logged or not (done or now - self.last_log >= PROGRESS_EVERY_S):
            return
        best = _log_progress(
            episodes, self.search.pool, self.search.open_run, self.target, self.started
        )
        self.logged, self.last_log = episodes, now
        if self.search.on_progress is not None:
            self.search.on_progress(_progress_metrics(episodes, best))


def _progress_metrics(episodes: int, best: PolicyRecord | None) -> dict[str, float]:
    metrics = {"episodes": float(episodes)}
    if best is not None:
        metrics.update(
            best_accuracy=best.accuracy,
            best_compression_ratio=best.compression_ratio,
            best_bitops_ratio=best.bitops_ratio,
            best_reward=best.reward,
        )
    return metrics


def _log_progress(
    episodes: int, pool: Any, run: _OpenRun, target: int, started: float
) -> PolicyRecord | None:
    best = ray.get(pool.summary.remote())["best"]
    if best is None:
        logger.info("episode %d/%d | no successful evaluation yet", episodes, target)
        return None
    logger.info(
        "episode %d/%d | best val acc %.4f (fp32 %.4f) at %.1fx smaller, %.3f BitOps | %.2f s/episode",
        episodes,
        target,
        best.accuracy,
        run.context.fp32_val_accuracy,
        best.compression_ratio,
        best.bitops_ratio,
        (time.time() - started) / max(1, episodes),
    )
    return best


def _report(
    run: _OpenRun,
    summary: dict[str, Any],
    records: list[PolicyRecord],
    best_policy: str | None,
    interrupted: bool,
) -> SearchOutcome:
    """Best policy file, its test accuracy (unless interrupted), plot, records, run status.
    The files come from the journal; MLflow gets them too, unless it is unreachable now."""
    tracker, parent_run_id, context = run.tracker, run.parent_run_id, run.context
    best = summary["best"]
    best_path = None
    if best is not None and best_policy is not None:
        best_path = run.run_dir / "best_policy.json"
        best_path.write_text(best_policy)
    best_test = None
    if best_path is not None and not interrupted:
        best_test = _test_accuracy(context, run.splits, CompressionPolicy.load(best_path))
    rows = [record.to_dict() for record in records]
    curve = learning_curve(records)
    plot = _plot(rows, run.run_dir / "search.png")
    (run.run_dir / "records.json").write_text(json.dumps(rows, indent=1, default=str))
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
        if plot:
            tracker.log_artifact(parent_run_id, plot, "plots")
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
    )


def _test_accuracy(context: SearchContext, splits: DataSplits, policy: CompressionPolicy) -> float:
    """Final report: the best policy scored by the search's own scorer (seeded finetune as in
    the search) on the test split in place of the validation split."""
    settings = dataclasses.replace(context.config.scoring, val_samples=None)
    ev = context.config.evaluator
    on_test = dataclasses.replace(splits, val=splits.test)
    scorer = load_scorer(ev.scorer)
    score = scorer(context.model, policy, context.graph, on_test, settings, "cpu", **ev.scorer_args)
    return score.accuracy


def load_best_policy(outcome: SearchOutcome) -> CompressionPolicy | None:
    return CompressionPolicy.load(outcome.best_policy_path) if outcome.best_policy_path else None
