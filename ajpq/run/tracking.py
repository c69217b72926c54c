"""MLflow records: one parent run per search, one child run per distinct evaluated policy.

Only the evaluator pool writes child runs (one writer, serialised), so concurrent evaluations
never lose or duplicate a record. Works with the embedded SQLite default or a tracking server.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from ajpq.core.policy import CompressionPolicy, LayerPolicy
from ajpq.core.redact import redact
from ajpq.search.config import SearchConfig
from ajpq.search.record import (
    INFRA_FAILED,
    METRIC_FIELDS,
    POLICY_METRICS,
    TAG_FIELDS,
    TIMESTAMP_FIELDS,
    PolicyRecord,
)

__all__ = [
    "Tracker",
    "model_tags",
    "POLICY_METRICS",
    "artifact_root_for",
    "experiment_tags",
    "layer_metric",
    "ui_link",
    "policies_table",
    "policy_row",
    "redact_uri",
    "search_tags",
]

logger = logging.getLogger(__name__)


def redact_uri(uri: str | None) -> str | None:
    """The URI with any password replaced, for logs and messages (never print a secret)."""
    return redact(uri) if uri else uri


def artifact_root_for(uri: str) -> str | None:
    """For a SQLite store, keep artifacts next to the database file (not in the CWD)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :]).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


EXPERIMENT_KIND = "mlflow.experimentKind"
DESCRIPTION = "mlflow.note.content"
HOW_TO_COMPARE = """ajpq compression searches. One parent run per search (tags.ajpq.role = 'search'),
one child run per evaluated policy (tags.ajpq.role = 'policy'); expand a search's row to see its
policies.

Compare policies: filter with `tags.ajpq.role = 'policy'` (add `and tags.budget_value = '0.1'`
or `and tags.method = 'tpe'` across searches), select runs, Compare. Plot `accuracy` against
`bitops_ratio` or `latency_ms` (a size budget fills the file, so `compression_ratio` is nearly
constant within one search). Per-layer choices are metrics `layers/<index>.<layer>/wbits`,
`/sparsity`, `/abits`, and the table artifact `layers.json` of each policy.

Each search run holds plots/accuracy_vs_bitops.png and plots/accuracy_vs_latency.png (the Pareto
front marked) and policies.json, a table of every policy's metrics and per-layer choices (open it
in the run's Artifacts or the Evaluation view to sort and filter). A sweep run holds the same
over all its trials.
"""


LOCAL_UI = "http://127.0.0.1:5000"  # `make mlflow-ui` over the default SQLite store


def ui_link(uri: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI. MLflow 3.17 keeps a per-browser
    GenAI / Model-training switch (GenAI in a fresh browser, whatever the experiment's kind),
    so the link asks for Model training: it opens on the runs, not on a traces overview."""
    base = redact(uri).rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def experiment_tags(existing: dict[str, str] | None = None) -> dict[str, str]:
    """Open on the runs table (a model-development experiment, not MLflow's GenAI overview),
    with a description of how to compare; a description someone wrote is kept."""
    tags = {EXPERIMENT_KIND: "custom_model_development"}
    if not (existing or {}).get(DESCRIPTION):
        tags[DESCRIPTION] = HOW_TO_COMPARE
    return tags


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


def layer_metric(index: int, name: str, what: str) -> str:
    """``layers/03.block2.conv1/wbits``: named with the layer, grouped under ``layers/``."""
    return f"layers/{index:02d}.{name}/{what}"[:250]


def layer_choices(lp: LayerPolicy) -> dict[str, float]:
    return {
        "sparsity": float(lp.sparsity),
        "wbits": float(lp.mean_bits),
        "abits": float(lp.act_bits),
    }


def layer_table(policy: CompressionPolicy) -> dict[str, list[Any]]:
    """One row per layer: what the policy keeps and at which bits (an MLflow table artifact)."""
    return {
        "index": list(range(len(policy.layers))),
        "layer": [lp.name for lp in policy.layers],
        "kept": [lp.kept for lp in policy.layers],
        "channels": [len(lp.weight_bits) for lp in policy.layers],
        "sparsity": [round(float(lp.sparsity), 4) for lp in policy.layers],
        "wbits": [round(float(lp.mean_bits), 3) for lp in policy.layers],
        "abits": [lp.act_bits for lp in policy.layers],
    }


TABLE_METRICS = (
    "episode",
    "accuracy",
    "reward",
    "compression_ratio",
    "size_bytes",
    "bitops_ratio",
    "latency_ms",
)


def policies_table(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Columns of one table over policies, in the order the rows name them, per-layer choices
    (``layers/03.block2.conv1/wbits`` -> ``03.block2.conv1/wbits``) last; missing cells None."""
    names = list(dict.fromkeys(k for row in rows for k in row))
    ordered = [k for k in names if not k.startswith("layers/")] + sorted(
        k for k in names if k.startswith("layers/")
    )
    return {k.removeprefix("layers/"): [row.get(k) for row in rows] for k in ordered}


def policy_row(record: PolicyRecord, policy: CompressionPolicy | None) -> dict[str, Any]:
    """One row of :func:`policies_table`: a record's metrics and its policy's layer choices."""
    row: dict[str, Any] = {name: getattr(record, name) for name in TABLE_METRICS}
    for index, lp in enumerate(policy.layers if policy else ()):
        for what, value in layer_choices(lp).items():
            row[layer_metric(index, lp.name, what)] = round(value, 4)
    return row


def model_tags(config: SearchConfig, result: dict[str, Any], source: str) -> dict[str, str]:
    """The tags of a registered model version: what it was searched for and what it measures."""
    return {
        "model": config.model,
        "dataset": config.data.name.value,
        "budget": f"{config.budget.kind.value} {config.budget.value}",
        "file_ratio": f"{float(result['file_ratio']):.2f}",
        "file_bytes": str(int(result["file_bytes"])),
        "test_accuracy": f"{float(result['test_accuracy']):.4f}",
        "finetune_steps": str(int(result["finetune_steps"])),
        "ajpq.source": source,  # search: as the search scored it; export: the long finetune
    }


class Tracker:
    def __init__(self, uri: str, experiment: str, tags: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.tags = dict(tags or {})  # added to every run this tracker creates
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_root_for(uri), tags=experiment_tags()
            )
        elif found.tags.get(EXPERIMENT_KIND) is None:  # made by an older ajpq, or by hand
            self.experiment_id = found.experiment_id
            for key, value in experiment_tags(found.tags).items():
                self.client.set_experiment_tag(self.experiment_id, key, value)
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

    def register_model(
        self, name: str, run_id: str, artifact_path: str, tags: dict[str, Any]
    ) -> str:
        """A new version of registered model ``name`` (created when missing) whose source is
        the run's ``artifact_path``, tagged with ``tags``; returns the version."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(
                name, description="compressed networks found by ajpq searches"
            )
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(
            name, source=source, run_id=run_id, tags={k: str(v) for k, v in tags.items()}
        )
        return str(version.version)

    def log_policies(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """``policies.json``: a table artifact the UI can sort and filter (one row a policy)."""
        if rows:
            self.client.log_table(run_id, policies_table(rows), "policies.json")

    # -- children ---------------------------------------------------------------------------
    def log_policy(self, parent_id: str, policy_json: str, record: PolicyRecord) -> str:
        policy = CompressionPolicy.from_json(policy_json)
        status = record.status
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
                    for name in (*TAG_FIELDS, *TIMESTAMP_FIELDS)
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
        sparsity = [float(lp.sparsity) for lp in policy.layers]
        metrics.append(Metric("mean_sparsity", sum(sparsity) / len(sparsity), now, 0))
        # numeric per-layer choices, grouped under layers/ (the UI's charts and compare view)
        for index, lp in enumerate(policy.layers):
            for what, value in layer_choices(lp).items():
                metrics.append(Metric(layer_metric(index, lp.name, what), value, now, 0))
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000])
        self.client.log_table(run_id, layer_table(policy), "layers.json")
        self.client.log_text(run_id, policy.to_json(indent=2), "policy.json")
        self.client.set_terminated(run_id, status="FINISHED" if status == "ok" else "FAILED")
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
                if not record.infra_failed:  # the infrastructure's failure: scored again
                    records[record.policy_key] = record
        return records

    def write_once(self, parent_id: str, policy_json: str, record: PolicyRecord) -> str:
        """Log ``record`` unless a complete child run of its policy key exists (then return
        that one); a half-written one, left by a writer that was cut off, is replaced."""
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.mlflow.parentRunId = '{parent_id}' "
                f"and tags.`ajpq.policy_key` = '{record.policy_key}' "
                # an infrastructure failure and the policy's later score are two runs
                f"and tags.`ajpq.status` {'=' if record.infra_failed else '!='} '{INFRA_FAILED}'"
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
