"""The evaluator actor: gets the search context and the data through Ray's object store (never
from the driver's disk), holds them on its own device (a GPU only when Ray assigned it one,
fractions allowed; the CPU otherwise, with CUDA hidden) and scores one policy at a time with
the configured scorer. The latency model is fitted by a task with an evaluator's resources."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import ray
import torch

from ajpq.core.budget import LatencyModel, fit_latency_model
from ajpq.core.policy import CompressionPolicy
from ajpq.search.config import SearchConfig
from ajpq.search.context import ContextSource, SearchContext
from ajpq.search.record import PolicyRecord
from ajpq.task.scoring import load_scorer

__all__ = ["Evaluator", "assigned_device", "fit_latency_remote"]

logger = logging.getLogger(__name__)


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
