"""The MLflow record writer: one actor beside the pool writes its records, one at a time."""

from __future__ import annotations

import os

import ray

from ajpq.run.tracking import Tracker
from ajpq.search.record import PolicyRecord

__all__ = ["RecordWriter"]


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
