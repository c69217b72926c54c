"""Evaluator actors and the pool that feeds them.

An :class:`Evaluator` gets the search context and the data through Ray's object store (never
from the driver's disk), holds them on its own device (a GPU only when Ray assigned it one,
fractions allowed; the CPU otherwise, with CUDA hidden) and scores one policy at a time with
the configured scorer. The
:class:`EvaluatorPool` (an async actor, one per search) is the only entry point: it caches
scores by canonical policy JSON + evaluation settings (an identical policy is scored once, also
across ``--resume``), dispatches to a free evaluator, replaces a dead evaluator and retries,
turns a diverged finetune into a failed record with a penalty reward, computes the reward, and
writes every record to MLflow itself, one at a time. It runs on the driver's node, so records
and relative tracking paths stay on the driver's side, and it hands the context reference to
env runners and to replacement evaluators.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import socket
import time
from typing import Any

import ray
import torch
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayTaskError,
)
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from ajpq.budget import LatencyModel, fit_latency_model
from ajpq.config import RewardKind, SearchConfig
from ajpq.configtypes import to_plain
from ajpq.cost import CostModel
from ajpq.policy import CompressionPolicy
from ajpq.scoring import ScoreSettings, load_scorer
from ajpq.search.context import ContextSource, SearchContext
from ajpq.search.journal import Journal
from ajpq.search.record import PolicyRecord
from ajpq.search.tracking import Tracker

__all__ = [
    "Evaluator",
    "EvaluatorPool",
    "policy_key",
    "compute_reward",
    "assigned_device",
    "fit_latency_remote",
]

logger = logging.getLogger(__name__)


def evaluator_bundle(config: SearchConfig, index: int) -> int:
    """Evaluator ``index``'s bundle in a placement group laid out by
    ``ajpq.search.runner.search_bundles``: bundle 0 is the search's driver (a sweep's trial),
    1..R the env runners (where RLlib puts env runner i), then one per evaluator."""
    return 1 + config.agent.env_runners + index


def policy_key(policy_json: str, settings: ScoreSettings) -> str:
    """Cache key: canonical policy JSON + everything that changes the score."""
    canonical = CompressionPolicy.from_json(policy_json).to_json()
    fingerprint = json.dumps(
        {"finetune": to_plain(settings.finetune), "val": settings.val_samples},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256((canonical + fingerprint).encode()).hexdigest()[:24]


def compute_reward(
    config: SearchConfig, accuracy: float, fp32_accuracy: float, failed: bool
) -> float:
    agent = config.agent
    if failed:
        return agent.failed_reward * agent.reward_scale
    if agent.reward is RewardKind.RELATIVE:
        return agent.reward_scale * (accuracy / max(fp32_accuracy, 1e-9) - 1.0)
    return agent.reward_scale * (accuracy - fp32_accuracy)


def assigned_device() -> tuple[str, str]:
    """The device Ray assigned to this process, and a label saying which kind it is.

    A GPU only when Ray assigned one (Ray sets ``CUDA_VISIBLE_DEVICES`` to it); without one,
    CUDA is hidden before anything can initialise it, since Ray 2.60 no longer hides GPUs from
    tasks and actors that reserved none."""
    gpu_ids = ray.get_gpu_ids()
    if not gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return "cpu", "cpu"
    if torch.cuda.is_available():
        return "cuda", f"cuda:{torch.cuda.get_device_name(0)}"
    logger.warning("Ray assigned GPU %s but CUDA is not available here; using the CPU", gpu_ids)
    return "cpu", "cpu"


def _fit_latency(context: SearchContext, threads: int) -> tuple[LatencyModel, str]:
    torch.set_num_threads(max(1, threads))
    device, label = assigned_device()
    model = context.model.to(device)
    fitted = fit_latency_model(
        model, context.graph, context.config.scoring.latency_batch_size, device
    )
    return fitted, label


def fit_latency_remote(config: SearchConfig) -> Any:
    """A Ray task that fits the latency model on an evaluator's kind of device (same resources
    as an evaluator), not on the driver's CPU."""
    ev = config.evaluator
    return ray.remote(_fit_latency).options(num_cpus=ev.num_cpus, num_gpus=ev.num_gpus)


@ray.remote
class Evaluator:
    """Scores policies on its own device; one evaluation at a time."""

    def __init__(self, source: ContextSource, threads: int) -> None:
        # context and data come from the object store (or the user's shared storage)
        torch.set_num_threads(max(1, threads))
        self.device, self.device_label = assigned_device()
        context = source.context()
        self.context = context
        self.splits = source.data().load()
        self.settings = context.config.scoring
        self.scorer = load_scorer(context.config.evaluator.scorer)
        self.scorer_args = dict(context.config.evaluator.scorer_args)
        self.model = context.model.to(self.device)

    def ready(self) -> dict[str, Any]:
        """Where this evaluator runs: process, host, Ray node, the GPUs Ray gave it, device."""
        return {
            "pid": os.getpid(),
            "node": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
            "device": self.device_label,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cuda_initialized": bool(torch.cuda.is_initialized()),
        }

    def evaluate(self, policy_json: str) -> PolicyRecord:
        policy = CompressionPolicy.from_json(policy_json)
        score = self.scorer(
            self.model,
            policy,
            self.context.graph,
            self.splits,
            self.settings,
            self.device,
            **self.scorer_args,
        )
        where = self.ready()
        where.pop("cuda_initialized")
        return PolicyRecord.from_score(score, latency_device=self.device_label, **where)


@ray.remote(num_cpus=0)
class RecordWriter:
    """Writes the pool's records to MLflow in its own process, so MLflow's client work (SQL,
    HTTP, artifacts) never holds the pool's event loop or its GIL."""

    def __init__(self, uri: str, experiment: str, tags: dict[str, str]) -> None:
        # fail a call within seconds when the server is down (MLflow's own default retries
        # for minutes): the pool retries with backoff, and the journal keeps the record
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self.tracker = Tracker(uri, experiment, tags)

    def write(
        self,
        parent_run_id: str,
        policy_json: str,
        record: PolicyRecord,
        best: PolicyRecord | None,
        check_existing: bool = False,
    ) -> str:
        if check_existing:  # a retry or a replay: the first try may have got through
            run_id = self.tracker.write_once(parent_run_id, policy_json, record)
        else:
            run_id = self.tracker.log_policy(parent_run_id, policy_json, record)
        if best is not None:
            self.tracker.log_best(parent_run_id, best.accuracy, best.reward, record.episode)
        return run_id


@ray.remote(num_cpus=0)
class EvaluatorPool:
    """The search's single door to evaluation and to MLflow (see module docstring)."""

    def __init__(
        self,
        source: ContextSource,
        parent_run_id: str | None,
        journal_path: str | None = None,
        placement_group: PlacementGroup | None = None,
    ) -> None:
        # the pool keeps the source to give to every evaluator it starts (replacements too)
        # and to env runners
        self.source = source
        self.placement_group = placement_group  # a sweep trial's: evaluators go into it
        self.context: SearchContext = source.context()
        self.config = self.context.config
        self.settings = self.config.scoring
        self.costs = CostModel(self.context.graph)
        self.parent_run_id = parent_run_id
        self.tracker = Tracker.for_search(self.config) if parent_run_id else None
        self.records: dict[str, PolicyRecord] = {}
        self.policies: dict[str, str] = {}
        self.record_writer = None
        # the journal (driver's disk; this actor runs on the driver's node) is the source of
        # truth; MLflow a replica. A run without a journal resumes from MLflow.
        self.journal = Journal(journal_path) if journal_path else None
        if self.tracker is not None:
            self.records = self.tracker.existing_records(parent_run_id)
            self.record_writer = self._new_record_writer()
        if self.journal is not None:
            self.records.update(self.journal.records())
        self.episode = max((r.episode for r in self.records.values()), default=0)
        self.best: PolicyRecord | None = None
        for record in self.records.values():
            self._update_best(record)
        self.workers = [self._new_worker(i) for i in range(self.config.evaluator.num_evaluators)]
        self.free: asyncio.Queue | None = None
        self.inflight: dict[str, asyncio.Future] = {}
        self.pending: asyncio.Queue | None = None
        self.unwritten = 0  # records handed to the MLflow writer and not written yet
        self.writer: asyncio.Task | None = None
        self.stats = {
            "scored": 0,
            "cache_hits": 0,
            "retries": 0,
            "replaced": 0,
            "failed": 0,
            "mlflow_retries": 0,
        }

    def _new_record_writer(self) -> Any:
        here = ray.get_runtime_context().get_node_id()
        return RecordWriter.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
        ).remote(self.tracker.uri, self.config.tracking.experiment, self.tracker.tags)

    def _new_worker(self, index: int) -> Any:
        ev = self.config.evaluator
        strategy = (
            # evaluator i has its own bundle, so an env runner never takes the room an
            # evaluator (or its replacement) needs
            PlacementGroupSchedulingStrategy(
                self.placement_group,
                placement_group_bundle_index=evaluator_bundle(self.config, index),
            )
            if self.placement_group is not None
            else None
        )
        return Evaluator.options(
            num_cpus=ev.num_cpus, num_gpus=ev.num_gpus, scheduling_strategy=strategy
        ).remote(self.source, ev.torch_threads)

    def _setup(self) -> None:
        if self.free is None:
            self.free = asyncio.Queue()
            for index in range(len(self.workers)):
                self.free.put_nowait(index)
            self.pending = asyncio.Queue()
            if self.tracker is not None:
                # journaled records that never reached MLflow (a crash, an outage) go first
                for record, policy_json in self.journal.unwritten() if self.journal else []:
                    self.pending.put_nowait((policy_json, record, None, True))
                    self.unwritten += 1
                self.writer = asyncio.get_running_loop().create_task(self._write_records())

    async def _write_records(self) -> None:
        """Replicate records into MLflow in order; an unreachable tracking server is retried
        with backoff (up to a minute apart) for as long as it takes: records wait, never vanish."""
        while True:
            policy_json, record, best, check_existing = await self.pending.get()
            delay = 1.0
            while True:
                try:
                    record.run_id = await self.record_writer.write.remote(
                        self.parent_run_id, policy_json, record, best, check_existing
                    )
                    break
                except Exception as error:  # noqa: BLE001 - MLflow down: wait and retry
                    self.stats["mlflow_retries"] += 1
                    if isinstance(error, RayActorError):  # the writer process itself died
                        self.record_writer = self._new_record_writer()
                    logger.warning(
                        "MLflow write of episode %d failed (%s); retrying in %.0f s",
                        record.episode,
                        str(error).splitlines()[-1][:200],
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(60.0, delay * 2)
                    check_existing = True
            if self.journal is not None:
                self.journal.mark_written(record.policy_key, record.run_id)
            self.unwritten -= 1
            self.pending.task_done()

    async def flush(self, timeout_s: float | None = None) -> int:
        """Wait (at most ``timeout_s``) for the records handed to the MLflow writer; returns how
        many are still waiting (they are safe in the journal)."""
        self._setup()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.pending.join(), timeout_s)
        return self.waiting()

    def waiting(self) -> int:
        if self.tracker is None:
            return 0
        if self.journal is not None:
            return self.journal.waiting()
        return self.unwritten

    def best_policy(self) -> str | None:
        """The best policy's JSON (from memory or the journal)."""
        if self.best is None:
            return None
        return self.policy_json(self.best.policy_key)

    def policy_json(self, key: str) -> str | None:
        """A scored policy's JSON by its key (from memory or the journal)."""
        return self.policies.get(key) or (self.journal.policy_json(key) if self.journal else None)

    def _within_budget(self, record: PolicyRecord) -> bool:
        """Whether the record's policy meets the search's budget (a stage of the stepwise
        method scores policies above it; they are recorded but cannot be the best)."""
        return self.config.budget.admits(record.compression_ratio, record.bitops_ratio)

    def _update_best(self, record: PolicyRecord) -> None:
        if record.failed or not self._within_budget(record):
            return
        # the highest reward; among equals the smallest network (as the sweep summary ranks)
        if self.best is None or (record.reward, record.compression_ratio) > (
            self.best.reward,
            self.best.compression_ratio,
        ):
            self.best = record

    # -- the public API -----------------------------------------------------------------------
    async def evaluate(self, policy_json: str) -> dict[str, Any]:
        """Score one policy (or return its cached record); the record as a dict (the env's
        ``info``), with ``cached`` saying whether it was scored now."""
        self._setup()
        key = policy_key(policy_json, self.settings)
        if key in self.records:
            self.stats["cache_hits"] += 1
            return {**self.records[key].to_dict(), "cached": True}
        if key in self.inflight:
            self.stats["cache_hits"] += 1
            return {**(await asyncio.shield(self.inflight[key])).to_dict(), "cached": True}
        future = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        try:
            queued = time.time()
            record = await self._score(policy_json)
            if record.size_bytes == 0:  # a failure before scoring: still record the costs
                record = record.with_costs(
                    self.costs.cost(CompressionPolicy.from_json(policy_json))
                )
            self.episode += 1
            fp32 = self.context.fp32_val_accuracy
            record = dataclasses.replace(
                record,
                policy_key=key,
                episode=self.episode,
                queued_ts=queued,
                accuracy_drop=fp32 - record.accuracy,
                reward=compute_reward(self.config, record.accuracy, fp32, record.failed),
            )
            self.stats["scored"] += 1
            self.stats["failed"] += int(record.failed)
            self._update_best(record)
            # durable first: the journal (fsync'd), then the MLflow replica, off the critical
            # path (one writer, in order, retried while MLflow is down)
            if self.journal is not None:
                self.journal.append(record, policy_json)
            if self.tracker is not None:
                best = dataclasses.replace(self.best) if self.best is not None else None
                self.pending.put_nowait((policy_json, record, best, False))
                self.unwritten += 1
            self.records[key] = record
            self.policies[key] = policy_json
            future.set_result(record)
            return {**record.to_dict(), "cached": False}
        except BaseException as error:
            if not future.done():
                future.set_exception(error)
            raise
        finally:
            self.inflight.pop(key, None)

    async def _score(self, policy_json: str) -> PolicyRecord:
        ev = self.config.evaluator
        last_error = ""
        for attempt in range(ev.max_retries + 1):
            index = await self.free.get()
            worker = self.workers[index]
            try:
                dispatched = time.time()
                ref = worker.evaluate.remote(policy_json)
                result = await asyncio.wait_for(asyncio.wrap_future(ref.future()), ev.timeout_s)
                self.free.put_nowait(index)
                return dataclasses.replace(
                    result, dispatched_ts=dispatched, returned_ts=time.time()
                )
            except (
                RayActorError,
                ActorDiedError,
                ActorUnavailableError,
                asyncio.TimeoutError,
                GetTimeoutError,
            ) as error:
                last_error = f"{type(error).__name__}: {error}"
                logger.warning(
                    "evaluator %d lost (%s); replacing it and retrying (attempt %d)",
                    index,
                    type(error).__name__,
                    attempt + 1,
                )
                with contextlib.suppress(Exception):  # it may be gone already
                    ray.kill(worker, no_restart=True)
                self.workers[index] = self._new_worker(index)
                self.stats["replaced"] += 1
                self.stats["retries"] += 1
                self.free.put_nowait(index)
            except RayTaskError as error:
                # an exception may be transient (out of memory, a flaky file system): retried
                # like a lost evaluator; one that keeps raising is recorded with its error
                self.free.put_nowait(index)
                last_error = str(error).splitlines()[-1]
                logger.warning("evaluation raised (attempt %d): %s", attempt + 1, last_error)
                self.stats["retries"] += 1
        return PolicyRecord.failure(
            f"gave up after {ev.max_retries + 1} attempts: {last_error}", time.time()
        )

    def context_source(self) -> ContextSource:
        """Where env runners get the search context from."""
        return self.source

    def summary(self) -> dict[str, Any]:
        return {
            "episodes": self.episode,
            "best": self.best,
            "stats": dict(self.stats),
            "records": len(self.records),
            "waiting": self.waiting(),
        }

    def all_records(self) -> list[PolicyRecord]:
        return sorted(self.records.values(), key=lambda r: r.episode)

    def worker_handles(self) -> list[Any]:
        return list(self.workers)

    async def wait_ready(self) -> list[dict[str, Any]]:
        return await asyncio.gather(*[w.ready.remote() for w in self.workers])
