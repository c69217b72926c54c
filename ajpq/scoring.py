"""Score one policy: apply, finetune briefly, validate, and measure its costs (plain PyTorch).

This is what an evaluator actor runs; it works the same in a notebook.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ajpq.apply import apply_policy
from ajpq.cost import CostModel, measure_latency
from ajpq.data import DataSplits
from ajpq.graph import ModelGraph
from ajpq.materialize import materialize
from ajpq.policy import CompressionPolicy
from ajpq.train import FinetuneConfig, evaluate, finetune

__all__ = ["ScoreSettings", "PolicyScore", "score_policy"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreSettings:
    finetune: FinetuneConfig
    val_samples: int | None = None
    latency_batch_size: int = 1
    latency_repeats: int = 10


@dataclass(frozen=True)
class PolicyScore:
    accuracy: float
    top5: float
    size_bytes: float
    compression_ratio: float
    bitops: float
    bitops_ratio: float
    macs: float
    latency_ms: float
    diverged: bool
    finetune_s: float
    eval_s: float
    start_ts: float
    end_ts: float

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def score_policy(
    model: nn.Module,
    policy: CompressionPolicy,
    graph: ModelGraph,
    splits: DataSplits,
    settings: ScoreSettings,
    device: torch.device | str = "cpu",
) -> PolicyScore:
    """Finetune the policy-applied model ``settings.finetune.steps`` steps, score it on val."""
    start = time.time()
    cost = CostModel(graph).cost(policy)
    simulated = apply_policy(model, policy, graph)
    tuned = finetune(simulated, splits.train, settings.finetune, device)
    finetune_end = time.time()
    diverged = tuned.diverged or not all(
        math.isfinite(float(p.detach().sum())) for p in simulated.parameters()
    )
    top1 = top5 = 0.0
    latency = float("nan")
    if not diverged:
        result = evaluate(simulated, splits.val, device, max_samples=settings.val_samples)
        top1, top5 = result.top1, result.top5
        latency = measure_latency(
            materialize(simulated, policy, graph),
            graph.input_shape,
            settings.latency_batch_size,
            device,
            warmup=2,
            repeats=settings.latency_repeats,
        )
    end = time.time()
    return PolicyScore(
        accuracy=top1,
        top5=top5,
        size_bytes=cost.size_bytes,
        compression_ratio=cost.compression_ratio,
        bitops=cost.bitops,
        bitops_ratio=cost.bitops_ratio,
        macs=cost.macs,
        latency_ms=latency,
        diverged=diverged,
        finetune_s=finetune_end - start,
        eval_s=end - finetune_end,
        start_ts=start,
        end_ts=end,
    )
