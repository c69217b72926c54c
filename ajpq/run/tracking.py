"""MLflow records: one parent run per search, one child run per distinct evaluated policy.

Only the evaluator pool writes child runs (one writer, serialised), so concurrent evaluations
never lose or duplicate a record. Works with the embedded SQLite default or a tracking server.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from ajpq.core.policy import CompressionPolicy
from ajpq.search.config import SearchConfig
from ajpq.search.record import METRIC_FIELDS, POLICY_METRICS, TAG_FIELDS, PolicyRecord

__all__ = ["Tracker", "POLICY_METRICS", "artifact_root_for", "redact_uri", "search_tags"]

logger = logging.getLogger(__name__)


def redact_uri(uri: str | None) -> str | None:
    """The URI with any password replaced, for logs and messages (never print a secret)."""
    if not uri:
        return uri
    return re.sub(r"(://[^/:@]+):[^/@]*@", r"\1:***@", uri)


def artifact_root_for(uri: str) -> str | None:
    """For a SQLite store, keep artifacts next to the database file (not in the CWD)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :]).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def search_tags(config: SearchConfig) -> dict[str, str]:
    """Tags on a search run and on each of its policy runs, so the MLflow UI's search box and
    compare view work across searches and sweeps (``tags.budget_value = '0.125'``)."""
    return {
        "model": config.model,
        "dataset": config.data.name.value,
        "budget_kind": config.budget.kind.value,
        "budget_value": f"{config.budget.value:g}",
        "seed": str(config.agent.seed),
        "method": config.method.value,
        "ajpq.method": config.method.value,
        "precision": config.space.precision.value,
        **config.tracking.tags,
    }


class Tracker:
    def __init__(self, uri: str, experiment: str, tags: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.tags = dict(tags or {})  # added to every run this tracker creates
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_root_for(uri)
            )
        else:
            self.experiment_id = found.experiment_id

    @classmethod
    def for_search(cls, config: SearchConfig) -> Tracker:
        return cls(config.tracking.uri, config.tracking.experiment, search_tags(config))

    # -- parent -----------------------------------------------------------------------------
    def start_search(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={**self.tags, "ajpq.role": "search", **tags},
        )
        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[start : start + 100])
        return run.info.run_id

    def log_best(
        self, parent_id: str, best_accuracy: float, best_reward: float, episode: int
    ) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(
            parent_id,
            metrics=[
                Metric("best_accuracy", best_accuracy, now, episode),
                Metric("best_reward", best_reward, now, episode),
            ],
        )

    def set_status(self, run_id: str, status: str) -> None:
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status=status)

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    # -- children ---------------------------------------------------------------------------
    def log_policy(self, parent_id: str, policy_json: str, record: PolicyRecord) -> str:
        policy = CompressionPolicy.from_json(policy_json)
        status = "failed" if record.failed else "ok"
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"episode-{record.episode:04d}",
            tags={
                **self.tags,
                "ajpq.role": "policy",
                "mlflow.parentRunId": parent_id,
                "ajpq.policy_key": record.policy_key,
                "ajpq.status": status,
                **({"ajpq.error": str(record.error)[:4000]} if record.error else {}),
                **{
                    f"ajpq.{name}": str(getattr(record, name))
                    for name in TAG_FIELDS
                    if getattr(record, name) is not None
                },
            },
        )
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        metrics = []
        for name in METRIC_FIELDS:
            value = getattr(record, name)
            if value is None:
                continue
            value = float(value)
            metrics.append(Metric(name, value if math.isfinite(value) else -1.0, now, 0))
        for index, lp in enumerate(policy.layers):  # numeric: plots in the compare view
            metrics.append(Metric(f"L{index:03d}.sparsity", float(lp.sparsity), now, 0))
            metrics.append(Metric(f"L{index:03d}.wbits", float(lp.mean_bits), now, 0))
            metrics.append(Metric(f"L{index:03d}.abits", float(lp.act_bits), now, 0))
        params = [
            Param(
                f"L{index:03d}.{lp.name}"[:250],
                f"keep={lp.kept}/{len(lp.weight_bits)} w={lp.mean_bits:.2f} a={lp.act_bits}",
            )
            for index, lp in enumerate(policy.layers)
        ]
        params.append(
            Param(
                "mean_sparsity",
                f"{sum(lp.sparsity for lp in policy.layers) / len(policy.layers):.4f}",
            )
        )
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000])
        self.client.log_batch(run_id, params=params[:100])
        for start in range(100, len(params), 100):
            self.client.log_batch(run_id, params=params[start : start + 100])
        self.client.log_text(run_id, policy.to_json(indent=2), "policy.json")
        self.client.set_terminated(run_id, status="FAILED" if status == "failed" else "FINISHED")
        return run_id

    def runs_where(self, filter_string: str) -> list[Any]:
        """Every run of the experiment matching ``filter_string`` (all pages)."""
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=filter_string,
                max_results=1000,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def child_runs(self, parent_id: str) -> list[Any]:
        return self.runs_where(f"tags.mlflow.parentRunId = '{parent_id}'")

    def existing_records(self, parent_id: str) -> dict[str, PolicyRecord]:
        """Complete records already logged under ``parent_id``, by policy key (for --resume of
        runs without a journal). A half-written child run (still RUNNING) does not count."""
        records = {}
        for run in self.child_runs(parent_id):
            if run.data.tags.get("ajpq.policy_key") and run.info.status != "RUNNING":
                record = PolicyRecord.from_mlflow(run)
                records[record.policy_key] = record
        return records

    def write_once(self, parent_id: str, policy_json: str, record: PolicyRecord) -> str:
        """Log ``record`` unless a complete child run of its policy key exists (then return
        that one); a half-written one, left by a writer that was cut off, is replaced."""
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.mlflow.parentRunId = '{parent_id}' "
                f"and tags.`ajpq.policy_key` = '{record.policy_key}'"
            ),
        )
        for run in found:
            if run.info.status != "RUNNING":
                return run.info.run_id
            self.client.delete_run(run.info.run_id)
        return self.log_policy(parent_id, policy_json, record)

    def download_policy(self, run_id: str) -> str:
        path = self.client.download_artifacts(run_id, "policy.json")
        return Path(path).read_text()

    @staticmethod
    def dumps(data: Any) -> str:
        return json.dumps(data, indent=2, sort_keys=True, default=str)
