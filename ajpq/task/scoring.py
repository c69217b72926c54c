"""Score one policy: apply, finetune briefly, validate, and measure its costs (plain PyTorch).

This is what an evaluator actor runs; it works the same in a notebook.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from ajpq.core.configtypes import RESUMABLE, Count, Flag, NonNegativeInt, config_type
from ajpq.core.cost import CostModel, time_forward
from ajpq.core.graph import ModelGraph
from ajpq.core.materialize import materialize
from ajpq.core.policy import CompressionPolicy
from ajpq.core.pruned import simulate
from ajpq.task.data import DataSplits
from ajpq.task.loader import load_object
from ajpq.task.train import Amp, FinetuneConfig, evaluate, finetune, recalibrate_bn

__all__ = [
    "ScoreSettings",
    "LatencyRuntime",
    "FidelityConfig",
    "PolicyScore",
    "Scorer",
    "score_policy",
    "tune_policy",
    "sleep_scorer",
    "chaos_scorer",
    "oom_scorer",
    "load_scorer",
    "DEFAULT_SCORER",
    "LONG_STEPS_FACTOR",
    "LONG_STEPS_WITHOUT_FINETUNE",
]

DEFAULT_SCORER = "ajpq.task.scoring:score_policy"


class LatencyRuntime(str, enum.Enum):
    """Where ``scoring.latency_runtime`` times a policy."""

    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    # the symmetric integer ONNX in onnxruntime's TensorRT provider, on a GPU node
    TENSORRT = "tensorrt"


LONG_STEPS_FACTOR = 10  # the long recipe: 10x the search's finetune steps
LONG_STEPS_WITHOUT_FINETUNE = 300  # ... or this many when the search scores without finetuning

logger = logging.getLogger(__name__)


@config_type
class FidelityConfig:
    """How well the search's cheap score ranks policies (``scoring.fidelity:``): at the end of
    a search, the ``top_k`` best policies and ``random_k`` others (fixed seed) are scored again
    with the long recipe (``scoring.long_steps``, the export's); the rank correlation of the two
    scores is logged and the best policy is the one with the best long score. ``top_k: 0`` and
    ``random_k: 0`` turn it off."""

    top_k: NonNegativeInt = 3
    random_k: NonNegativeInt = 2
    seed: NonNegativeInt = 0


@config_type
class ScoreSettings:
    """Everything that changes a policy's score (``scoring:``): the finetune, how much of the
    validation split is used (``val_samples``, default 10,000; None: all of it), and how latency
    is measured; ``amp`` and
    ``channels_last`` say how the device computes (``auto``: bf16 autocast on CUDA only)."""

    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    # a fixed sample of the validation split (its first images; the split is carved at random
    # with data.seed), so an evaluation costs the same whatever the dataset's size; None: all
    val_samples: Count | None = 10_000
    latency_batch_size: Count = 1
    # where a policy's latency is timed: its materialized network in torch, its integer ONNX in
    # onnxruntime, or in TensorRT (the deployed speed; measured by the evaluator,
    # ajpq.export.runtime)
    latency_runtime: LatencyRuntime = LatencyRuntime.TORCH
    latency_repeats: Annotated[Count, RESUMABLE] = 10  # may change on --resume
    amp: Amp = Amp.AUTO  # bf16 changes the numbers: fixed for a run, like the finetune
    channels_last: Flag = False
    # finetune and score the physically pruned network (a step costs what the policy keeps);
    # false: the masked full-size network (the reference, equal up to float rounding)
    pruned: Flag = True
    # re-estimate BatchNorm statistics on this many training batches before scoring (after the
    # finetune; with finetune.steps 0 the only adaptation): EagleEye's adaptive BN
    bn_recalibration_batches: NonNegativeInt = 0
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    # the long recipe's finetune steps: fidelity re-scoring and `ajpq export`'s default; None:
    # 10x finetune.steps, or LONG_STEPS_WITHOUT_FINETUNE when the search does not finetune
    long_steps: NonNegativeInt | None = None

    def long_finetune(self) -> FinetuneConfig:
        """The long recipe: the search's finetune with ``long_steps`` steps."""
        steps = self.long_steps
        if steps is None:
            steps = LONG_STEPS_FACTOR * self.finetune.steps or LONG_STEPS_WITHOUT_FINETUNE
        return dataclasses.replace(self.finetune, steps=steps)

    @property
    def compute(self) -> dict[str, Amp | bool]:
        """How the device computes: the keywords of ``finetune`` and ``evaluate``."""
        return {"amp": self.amp, "channels_last": self.channels_last}


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
    latency_spread_ms: float = -1.0  # interquartile spread of the latency (-1: not timed)

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def tune_policy(
    model: nn.Module,
    policy: CompressionPolicy,
    graph: ModelGraph,
    train: Dataset,
    settings: ScoreSettings,
    device: torch.device | str = "cpu",
    recipe: FinetuneConfig | None = None,
) -> tuple[nn.Module, bool]:
    """The network of ``policy`` trained as the scorer trains it (the one recipe of search,
    fidelity and export): simulated, finetuned by ``recipe`` (default ``settings.finetune``),
    then BatchNorm re-estimated on ``settings.bn_recalibration_batches`` training batches.
    Returns it and whether the finetune diverged (then it is not recalibrated)."""
    recipe = recipe or settings.finetune
    simulated = simulate(model, policy, graph, pruned=settings.pruned)
    fast = settings.compute
    tuned = finetune(simulated, train, recipe, device, **fast)
    sums = torch.stack([p.detach().float().sum() for p in simulated.parameters()])
    diverged = tuned.diverged or not bool(torch.isfinite(sums).all())  # one host read
    if not diverged and settings.bn_recalibration_batches:
        recalibrate_bn(
            simulated,
            train,
            settings.bn_recalibration_batches,
            recipe.batch_size,
            device,
            recipe.seed,
            **fast,
        )
    return simulated, diverged


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
    simulated, diverged = tune_policy(model, policy, graph, splits.train, settings, device)
    finetune_end = time.time()
    top1 = top5 = 0.0
    latency, spread = float("nan"), -1.0
    if not diverged:
        fast = settings.compute
        result = evaluate(simulated, splits.val, device, max_samples=settings.val_samples, **fast)
        top1, top5 = result.top1, result.top5
        # onnxruntime: the evaluator times the policy's integer ONNX (ajpq.export.runtime)
        if settings.latency_runtime is LatencyRuntime.TORCH:
            timing = time_forward(
                materialize(simulated, policy, graph),
                graph.input_shape,
                settings.latency_batch_size,
                device,  # warm-up and CUDA synchronisation as the latency fit's
                repeats=settings.latency_repeats,
            )
            latency, spread = timing.median_ms, timing.spread_ms
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
        latency_spread_ms=spread,
    )


Scorer = Callable[..., PolicyScore]
"""``scorer(model, policy, graph, splits, settings, device, **scorer_args) -> PolicyScore``:
what an evaluator runs per policy. The default is :func:`score_policy`; a user's scorer (say,
detection mAP) is named ``package.module:function`` in ``evaluator.scorer`` and must be
importable on every node."""


def load_scorer(spec: str) -> Scorer:
    """Import ``package.module:function``; a ValueError says what to change."""
    return load_object(spec, "evaluator.scorer", "install it on every node")


def sleep_scorer(
    model: nn.Module,
    policy: CompressionPolicy,
    graph: ModelGraph,
    splits: DataSplits,
    settings: ScoreSettings,
    device: torch.device | str = "cpu",
    *,
    min_s: float = 1.0,
    max_s: float = 3.0,
) -> PolicyScore:
    """Orchestration-only scorer for tests and ``bench/bench_scale.py``: sleeps a random
    ``min_s``..``max_s`` seconds (seeded by the policy) and trains nothing. Its accuracy is a
    stand-in, the BitOps ratio to the power 1/4 (more bits, higher), so an agent has a signal;
    the costs are the real cost model's."""
    start = time.time()
    cost = CostModel(graph).cost(policy)
    seed = int(hashlib.sha256(policy.to_json().encode()).hexdigest()[:8], 16)
    time.sleep(random.Random(seed).uniform(min_s, max_s))
    end = time.time()
    accuracy = float(min(1.0, max(0.0, cost.bitops_ratio)) ** 0.25)
    return PolicyScore(
        accuracy=accuracy,
        top5=1.0,
        size_bytes=cost.size_bytes,
        compression_ratio=cost.compression_ratio,
        bitops=cost.bitops,
        bitops_ratio=cost.bitops_ratio,
        macs=cost.macs,
        latency_ms=float("nan"),
        diverged=False,
        finetune_s=end - start,
        eval_s=0.0,
        start_ts=start,
        end_ts=end,
    )


def chaos_scorer(
    model: nn.Module,
    policy: CompressionPolicy,
    graph: ModelGraph,
    splits: DataSplits,
    settings: ScoreSettings,
    device: torch.device | str = "cpu",
    *,
    error_rate: float = 0.1,
    death_rate: float = 0.05,
    min_s: float = 0.2,
    max_s: float = 0.5,
) -> PolicyScore:
    """Fault injection for resilience tests (``evaluator.scorer: ajpq.task.scoring:chaos_scorer``):
    per call, with probability ``death_rate`` the evaluator process dies on the spot, with
    ``error_rate`` the evaluation raises; otherwise it behaves like :func:`sleep_scorer`."""
    draw = random.random()
    if draw < death_rate:
        os._exit(17)
    if draw < death_rate + error_rate:
        raise RuntimeError("injected fault (chaos_scorer)")
    return sleep_scorer(model, policy, graph, splits, settings, device, min_s=min_s, max_s=max_s)


def oom_scorer(
    model: nn.Module,
    policy: CompressionPolicy,
    graph: ModelGraph,
    splits: DataSplits,
    settings: ScoreSettings,
    device: torch.device | str = "cpu",
    *,
    tag: int,
    times: int = 1,
) -> PolicyScore:
    """Fault injection for infrastructure-failure tests: the first ``times`` calls for each
    policy raise ``torch.OutOfMemoryError`` (counted in files under the temp folder's
    ``ajpq-oom-<tag>``, shared by the evaluators of one machine), later ones score like
    :func:`sleep_scorer`, briefly."""
    digest = hashlib.sha256(policy.to_json().encode()).hexdigest()[:16]
    marker = Path(tempfile.gettempdir()) / f"ajpq-oom-{int(tag)}" / digest
    marker.parent.mkdir(parents=True, exist_ok=True)
    with marker.open("a+") as handle:
        handle.seek(0)
        raised = len(handle.read())
        if raised < times:
            handle.write("x")
            raise torch.OutOfMemoryError("CUDA out of memory (injected by oom_scorer)")
    return sleep_scorer(model, policy, graph, splits, settings, device, min_s=0.01, max_s=0.02)
