"""One typed record per evaluated policy, the same from evaluator to pool to MLflow and back.

An evaluator fills what it measured and where (scores, costs, node, device, timings); the pool
adds what it decided (policy key, episode, reward, status); MLflow stores it as one child run
and :meth:`PolicyRecord.from_mlflow` reads it back on ``--resume``. The env's ``info`` and
``records.json`` are its :meth:`to_dict`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ajpq.task.scoring import PolicyScore

__all__ = [
    "PolicyRecord",
    "POLICY_METRICS",
    "METRIC_FIELDS",
    "TAG_FIELDS",
    "TIMESTAMP_FIELDS",
    "INFRA_FAILED",
    "learning_curve",
]

# the headline metrics of a policy's MLflow run; then timings; fields stored as tags (strings)
POLICY_METRICS = (
    "accuracy",
    "accuracy_drop",
    "size_bytes",
    "compression_ratio",
    "bitops",
    "bitops_ratio",
    "macs",
    "latency_ms",
    "reward",
    "episode",
)
METRIC_FIELDS = (
    *POLICY_METRICS,
    "latency_spread_ms",
    "top5",
    "finetune_s",
    "eval_s",
    "gpu_mem_peak_mb",
)
# when it was queued, dispatched, scored, returned: tags (they clutter every metric list)
TIMESTAMP_FIELDS = ("queued_ts", "dispatched_ts", "eval_start_ts", "eval_end_ts", "returned_ts")
TAG_FIELDS = ("node", "node_id", "device", "latency_device", "gpu_name")
INFRA_FAILED = "infra_failed"  # the status of an evaluation the infrastructure failed


@dataclass
class PolicyRecord:
    """An evaluated policy: scores, costs, the pool's verdict, where and when it ran."""

    policy_key: str = ""
    episode: int = 0
    reward: float = 0.0
    failed: bool = False
    # out of memory, a timeout, a lost node: not the policy's verdict (never rewarded or
    # cached, scored again on --resume); ``failed`` is set too
    infra_failed: bool = False
    error: str | None = None
    accuracy: float = 0.0
    accuracy_drop: float = 0.0
    top5: float = 0.0
    size_bytes: float = 0.0
    compression_ratio: float = 0.0
    bitops: float = 0.0
    bitops_ratio: float = 0.0
    macs: float = 0.0
    latency_ms: float = -1.0
    latency_spread_ms: float = -1.0  # interquartile spread of the timing (-1: not reported)
    diverged: bool = False
    # where: the evaluator's host, Ray node, process, the GPUs Ray gave it, its device
    node: str | None = None
    node_id: str | None = None
    pid: int | None = None
    gpu_ids: list[str] = field(default_factory=list)
    device: str | None = None
    latency_device: str | None = None
    cuda_visible_devices: str | None = None
    gpu_name: str | None = None
    gpu_mem_peak_mb: float | None = None  # torch.cuda.max_memory_allocated of the evaluation
    # when (seconds since the epoch): at the pool, at the evaluator, back at the pool
    finetune_s: float = 0.0
    eval_s: float = 0.0
    queued_ts: float | None = None
    dispatched_ts: float | None = None
    eval_start_ts: float | None = None
    eval_end_ts: float | None = None
    returned_ts: float | None = None
    run_id: str | None = None  # its MLflow child run, once written

    @classmethod
    def from_score(cls, score: PolicyScore, **where: Any) -> PolicyRecord:
        """What an evaluator returns: the scorer's numbers plus where they were measured."""
        return cls(
            accuracy=score.accuracy,
            top5=score.top5,
            size_bytes=score.size_bytes,
            compression_ratio=score.compression_ratio,
            bitops=score.bitops,
            bitops_ratio=score.bitops_ratio,
            macs=score.macs,
            latency_ms=score.latency_ms if math.isfinite(score.latency_ms) else -1.0,
            latency_spread_ms=score.latency_spread_ms,
            diverged=score.diverged,
            failed=score.diverged,
            error="finetune diverged" if score.diverged else None,
            finetune_s=score.finetune_s,
            eval_s=score.eval_s,
            eval_start_ts=score.start_ts,
            eval_end_ts=score.end_ts,
            **where,
        )

    @classmethod
    def failure(cls, error: str, at: float, infra: bool = False) -> PolicyRecord:
        """An evaluation that produced no score (an exception, or every retry lost);
        ``infra``: the infrastructure's failure, not the policy's."""
        return cls(failed=True, infra_failed=infra, error=error, eval_start_ts=at, eval_end_ts=at)

    @property
    def status(self) -> str:
        """``ok``, ``failed`` (the policy's verdict) or ``infra_failed``."""
        return INFRA_FAILED if self.infra_failed else "failed" if self.failed else "ok"

    def with_costs(self, cost: Any) -> PolicyRecord:
        """Fill size, BitOps and MACs from the cost model (a failure still has its costs)."""
        return dataclasses.replace(
            self,
            size_bytes=cost.size_bytes,
            compression_ratio=cost.compression_ratio,
            bitops=cost.bitops,
            bitops_ratio=cost.bitops_ratio,
            macs=cost.macs,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_mlflow(cls, run: Any) -> PolicyRecord:
        """Read back a policy's MLflow run (``--resume``)."""
        metrics, tags = run.data.metrics, run.data.tags
        values: dict[str, Any] = {name: metrics[name] for name in METRIC_FIELDS if name in metrics}
        values.update({name: tags[f"ajpq.{name}"] for name in TAG_FIELDS if f"ajpq.{name}" in tags})
        values["episode"] = int(values.get("episode", 0))
        for name in TIMESTAMP_FIELDS:  # tags; metrics in runs of older versions
            value = tags.get(f"ajpq.{name}", metrics.get(name))
            values[name] = float(value) if value is not None and float(value) >= 0 else None
        return cls(
            policy_key=tags.get("ajpq.policy_key", ""),
            failed=tags.get("ajpq.status") in ("failed", INFRA_FAILED),
            infra_failed=tags.get("ajpq.status") == INFRA_FAILED,
            error=tags.get("ajpq.error"),
            run_id=run.info.run_id,
            **values,
        )


def learning_curve(records: list[PolicyRecord], parts: int = 4) -> list[float]:
    """Mean validation accuracy of the successful evaluations in each of ``parts`` consecutive
    slices of the episodes (in episode order; fewer slices when there are fewer successes).
    A search that learns rises from slice to slice; random search stays flat."""
    scored = sorted((r for r in records if not r.failed), key=lambda r: r.episode)
    parts = min(parts, len(scored))
    bounds = [round(i * len(scored) / parts) for i in range(parts + 1)] if parts else []
    return [
        sum(r.accuracy for r in scored[lo:hi]) / (hi - lo) for lo, hi in zip(bounds, bounds[1:])
    ]
