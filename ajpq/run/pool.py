"""The evaluator pool: the search's single door to evaluation and to MLflow.

An :class:`Evaluator` gets the search context and the data through Ray's object store (never
from the driver's disk), holds them on its own device (a GPU only when Ray assigned it one,
fractions allowed; the CPU otherwise, with CUDA hidden) and scores one policy at a time with
the configured scorer. The :class:`EvaluatorPool` (an async actor, one per search) is the only
entry point: it caches
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
import logging
import sqlite3
import time
from collections import Counter
from typing import Any

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ajpq.core.cost import CostModel
from ajpq.core.policy import CompressionPolicy
from ajpq.core.redact import redact
from ajpq.run.evaluator import Evaluator
from ajpq.run.experience import SharedExperience
from ajpq.run.infra import INFRA_ABORT_AFTER, is_infra_error
from ajpq.run.journal import Journal, policy_key
from ajpq.run.reservation import Reservation
from ajpq.run.screening import scored_rows
from ajpq.run.tracking import Tracker
from ajpq.run.writer import RecordWriter
from ajpq.search.context import ContextSource, SearchContext
from ajpq.search.record import PolicyRecord
from ajpq.search.reward import admitted, best_key, compute_reward
from ajpq.task.checks import cause

__all__ = ["EvaluatorPool", "policy_key"]

logger = logging.getLogger(__name__)

GAVE_UP = "gave up after"  # how a failed evaluation's error starts (not a policy's verdict)
ABORT_AFTER = 3  # the first evaluations failing with one error stop the search


@ray.remote(num_cpus=0)
class EvaluatorPool:
    """The search's single door to evaluation and to MLflow (see module docstring)."""

    def __init__(
        self,
        source: ContextSource,
        parent_run_id: str | None,
        journal_path: str | None = None,
        reservation: Reservation | None = None,
    ) -> None:
        # the pool keeps the source to give to every evaluator it starts (replacements too)
        # and to env runners
        self.source = source
        self.reservation = reservation  # the search's bundles: evaluators go into them
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
        # a sweep's trials share one journal of scores: no policy is scored twice across them
        shared = self.config.experience_dir
        self.shared = Journal(SharedExperience(shared).scores) if shared else None
        if self.tracker is not None:
            self.records = self.tracker.existing_records(parent_run_id)
            self.record_writer = self._new_record_writer()
        if self.journal is not None:
            self.records.update(self.journal.records())
        self.episode = max(
            [r.episode for r in self.records.values()]
            + ([self.journal.last_episode()] if self.journal is not None else []),
            default=0,
        )
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
            "infra_failed": 0,
            "mlflow_retries": 0,
            "screened": 0,  # proposals the predictor passed over (ajpq.run.screening)
            "shared_hits": 0,  # policies an earlier trial of the sweep scored
        }
        self.infra_records: list[PolicyRecord] = []  # infrastructure failures (not cached)
        self.infra_streak = 0  # infrastructure failures in a row
        # why the search must stop (the same error on the first evaluations, a full disk):
        # the driver stops at its next progress check and says this line
        self.abort: str | None = None
        self.errors: Counter[str] = Counter()  # failed evaluations by exception type
        self.examples: dict[str, str] = {}  # the first message of each type

    def _new_record_writer(self) -> Any:
        here = ray.get_runtime_context().get_node_id()
        return RecordWriter.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
        ).remote(self.tracker.uri, self.config.tracking.experiment, self.tracker.tags)

    def _new_worker(self, index: int) -> Any:
        ev = self.config.evaluator
        # evaluator i has its own bundle, so an env runner never takes the room an evaluator
        # (or its replacement) needs
        strategy = self.reservation.strategy(index) if self.reservation is not None else None
        return Evaluator.options(
            num_cpus=ev.num_cpus, num_gpus=ev.num_gpus, scheduling_strategy=strategy
        ).remote(self.source, ev.torch_threads, ev.num_gpus or 1.0)

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
                self.journal.mark_written(record.policy_key, record.run_id, record.episode)
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

    def _update_best(self, record: PolicyRecord) -> None:
        if record.failed or not admitted(self.config.budget, record):
            return
        if self.best is None or best_key(record) > best_key(self.best):
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
            record = await self._score(policy_json, key)
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
                # an infrastructure failure is no verdict: no reward (the agent drops it)
                reward=0.0
                if record.infra_failed
                else compute_reward(self.config.agent, record.accuracy, fp32, record.failed),
            )
            self.stats["scored"] += 1
            self._note_failure(record)
            if record.infra_failed:
                return self._infra_failed(record, policy_json, future)
            self.stats["failed"] += int(record.failed)
            self._update_best(record)
            # durable first: the journal (fsync'd), then the MLflow replica, off the critical
            # path (one writer, in order, retried while MLflow is down)
            if self.journal is not None and not self._journal(record, policy_json):
                future.set_result(record)  # not durable: not cached, never replicated
                return {**record.to_dict(), "cached": False}
            if self.tracker is not None:
                best = dataclasses.replace(self.best) if self.best is not None else None
                self.pending.put_nowait((policy_json, record, best, False))
                self.unwritten += 1
            self.records[key] = record
            self.policies[key] = policy_json
            if self.shared is not None:
                self.shared.append(record, policy_json)
            future.set_result(record)
            return {**record.to_dict(), "cached": False}
        except BaseException as error:
            if not future.done():
                future.set_exception(error)
            raise
        finally:
            self.inflight.pop(key, None)

    async def _take(self, avoid: int | None) -> int:
        """A free evaluator, another than ``avoid`` when one is free (a retry moves on)."""
        index = await self.free.get()
        if index == avoid and not self.free.empty():
            other = self.free.get_nowait()
            self.free.put_nowait(index)
            index = other
        return index

    async def _score(self, policy_json: str, key: str) -> PolicyRecord:
        if self.shared is not None and (earlier := self.shared.record(key)) is not None:
            self.stats["shared_hits"] += 1  # scored by an earlier trial of the sweep
            return earlier
        ev = self.config.evaluator
        last_error = ""
        infra = True  # whether the last failure was the infrastructure's
        avoid: int | None = None
        for attempt in range(ev.max_retries + 1):
            index = await self._take(avoid)
            avoid = index
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
                infra = True
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
            except RayError as error:
                # out of memory, a lost object, an import error: the infrastructure's, retried
                # on another evaluator; any other exception may be transient too (a flaky file
                # system): retried; one that keeps raising is the policy's verdict
                self.free.put_nowait(index)
                infra = is_infra_error(error)
                last_error = str(error).splitlines()[-1]
                logger.warning("evaluation raised (attempt %d): %s", attempt + 1, last_error)
                self.stats["retries"] += 1
        return PolicyRecord.failure(
            f"{GAVE_UP} {ev.max_retries + 1} attempts: {last_error}", time.time(), infra=infra
        )

    def _infra_failed(
        self, record: PolicyRecord, policy_json: str, future: asyncio.Future
    ) -> dict[str, Any]:
        """Journal and replicate an infrastructure failure (it shows as ``infra_failed``) but
        neither cache nor reward it: the same policy is scored again when proposed again and
        on ``--resume``."""
        self.stats["infra_failed"] += 1
        self.infra_records.append(record)
        if self.journal is not None and not self._journal(record, policy_json):
            future.set_result(record)
            return {**record.to_dict(), "cached": False}
        if self.tracker is not None:
            self.pending.put_nowait((policy_json, record, None, False))
            self.unwritten += 1
        future.set_result(record)
        return {**record.to_dict(), "cached": False}

    def context_source(self) -> ContextSource:
        """Where env runners get the search context from."""
        return self.source

    def _journal(self, record: PolicyRecord, policy_json: str) -> bool:
        """Append to the journal; a write that fails (the run folder's disk is full) stops
        the search: what was journaled before stays, this record is scored again on resume."""
        try:
            self.journal.append(record, policy_json)
            return True
        except (OSError, sqlite3.Error) as error:
            self.abort = self.abort or (
                f"cannot write the journal {self.journal.path} ({cause(error)}); free space on "
                "its disk, then continue with --resume (every journaled record is kept)"
            )
            return False

    def _note_failure(self, record: PolicyRecord) -> None:
        """Count failed evaluations by exception type; when the first ``ABORT_AFTER`` all fail
        with one type (the scorer or the model is broken, not a policy), stop the search."""
        self.infra_streak = self.infra_streak + 1 if record.infra_failed else 0
        if self.abort is None and self.infra_streak >= INFRA_ABORT_AFTER:
            self.abort = (
                f"the last {INFRA_ABORT_AFTER} evaluations failed on the infrastructure "
                f"({redact(record.error or '')[:300]}); fix the nodes, then continue with "
                "--resume (these policies are scored again)"
            )
        if not (record.failed and record.error and record.error.startswith(GAVE_UP)):
            return
        error = record.error.split(": ", 1)[-1]  # "ValueError: the message"
        kind = error.split(":", 1)[0].strip() or error
        self.errors[kind] += 1
        self.examples.setdefault(kind, error)
        if (
            self.abort is None
            and self.stats["scored"] == ABORT_AFTER
            and self.errors[kind] == ABORT_AFTER
        ):
            self.abort = (
                f"the first {ABORT_AFTER} evaluations all failed with {redact(error)[:300]}; "
                "fix the scorer or the model (their records are in the run folder)"
            )

    def summary(self) -> dict[str, Any]:
        common = self.errors.most_common(1)
        return {
            "episodes": self.episode,
            "best": self.best,
            "stats": dict(self.stats),
            "records": len(self.records),
            "waiting": self.waiting(),
            "abort": self.abort,
            "top_error": (
                f"{redact(self.examples[common[0][0]])[:300]} ({common[0][1]}x)" if common else None
            ),
        }

    def note_screened(self) -> None:
        self.stats["screened"] += 1

    def predictor_rows(self, known: list[str]) -> list[tuple[str, str, float]]:
        """The predictor's rows: this search's scores and a shared sweep's (``scored_rows``)."""
        shared = [(j.records(), j.policy_json) for j in [self.shared] if j is not None]
        return scored_rows([(self.records, self.policy_json), *shared], set(known))

    def all_records(self) -> list[PolicyRecord]:
        """Every record of the search, infrastructure failures included, by episode."""
        return sorted([*self.records.values(), *self.infra_records], key=lambda r: r.episode)

    def worker_handles(self) -> list[Any]:
        return list(self.workers)

    async def wait_ready(self) -> list[dict[str, Any]]:
        return await asyncio.gather(*[w.ready.remote() for w in self.workers])
