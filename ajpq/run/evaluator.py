"""The evaluator actor: gets the search context and the data through Ray's object store (never
from the driver's disk), holds them on its own device (a GPU only when Ray assigned it one,
fractions allowed; the CPU otherwise, with CUDA hidden) and scores one policy at a time with
the configured scorer."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from typing import Any

import ray
import torch

from ajpq.core.cost import measure_latency
from ajpq.core.latency import LatencyPredictor
from ajpq.core.latency_table import (
    FLOAT,
    INTEGER,
    ROUNDS,
    fit_latency_table,
    with_input_quantizer,
)
from ajpq.core.materialize import materialize
from ajpq.core.policy import CompressionPolicy
from ajpq.export.runtime import deployed_latency, layer_latency
from ajpq.search.context import ContextSource, SearchContext
from ajpq.search.record import PolicyRecord
from ajpq.task.data import on_device
from ajpq.task.scoring import LatencyRuntime, PolicyScore, load_scorer

__all__ = ["Evaluator", "assigned_device", "cuda_index", "fit_latency_on"]

logger = logging.getLogger(__name__)


def cuda_index(gpu_id: str | int, visible: str | None) -> int:
    """The CUDA device index of Ray's GPU ``gpu_id`` in this process: its position in
    ``CUDA_VISIBLE_DEVICES`` when Ray set it (then usually 0), else the id itself (with
    ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` every GPU of the node is visible)."""
    ids = [part.strip() for part in (visible or "").split(",") if part.strip()]
    if ids:
        return ids.index(str(gpu_id)) if str(gpu_id) in ids else 0
    return int(gpu_id)


def assigned_device(share: float = 1.0) -> tuple[str, str]:
    """The device Ray assigned to this process, and a label saying which kind it is.

    A GPU only when Ray assigned one: ``cuda:<index>`` of that GPU, fenced to ``share`` of its
    memory when the evaluator asked for a fraction of it (two evaluators at 0.5 cannot take
    each other's memory). Without one, CUDA is hidden before anything can initialise it,
    since Ray 2.60 no longer hides GPUs from tasks and actors that reserved none."""
    gpu_ids = ray.get_gpu_ids()
    if not gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return "cpu", "cpu"
    if torch.cuda.is_available():
        index = cuda_index(gpu_ids[0], os.environ.get("CUDA_VISIBLE_DEVICES"))
        if 0 < share < 1:
            torch.cuda.set_per_process_memory_fraction(share, index)
        torch.backends.cudnn.benchmark = True
        return f"cuda:{index}", f"cuda:{torch.cuda.get_device_name(index)}"
    logger.warning("Ray assigned GPU %s but CUDA is not available here; using the CPU", gpu_ids)
    return "cpu", "cpu"


def fit_latency_on(device: str, context: SearchContext) -> LatencyPredictor:
    """Measure the latency table on ``device`` in the search's runtime (run by
    :func:`ajpq.run.devicework.run_on_evaluator` on an evaluator's kind of device, not on the
    driver's CPU): every layer alone and the whole network at a few kept fractions."""
    model = context.model.to(device)
    graph = context.graph
    settings = context.config.scoring
    batch = settings.latency_batch_size
    # the uniform networks keep the channel multiples the search's policies keep
    multiple = context.config.space.multiple_for(context.config.budget.kind)
    if settings.latency_runtime is LatencyRuntime.TORCH:

        def torch_layer(module: torch.nn.Module, shape: tuple[int, ...], form: str) -> float:
            layer = with_input_quantizer(module, shape) if form == INTEGER else module
            return measure_latency(layer.to(device), shape, batch, device, repeats=10)

        def torch_network(policy: CompressionPolicy, form: str) -> float:
            small = materialize(model, policy, graph)
            return measure_latency(small, graph.input_shape, batch, device)

        # in torch, bits change no kernel: only a quantized input's extra ops cost time
        return fit_latency_table(
            model, graph, torch_layer, torch_network, (FLOAT, INTEGER), channel_multiple=multiple
        )

    runtime = settings.latency_runtime  # onnxruntime, or TensorRT through onnxruntime

    def onnx_layer(module: torch.nn.Module, shape: tuple[int, ...], form: str) -> float:
        integer = form == INTEGER
        return layer_latency(module, shape, integer, batch, device, runtime=runtime).median_ms

    def onnx_network(policy: CompressionPolicy, form: str) -> float:
        # one window: the table takes the fastest of its rounds
        timing = deployed_latency(model, policy, graph, batch, device, runtime=runtime, windows=1)
        return timing.median_ms

    # TensorRT builds an engine for every timing (seconds each): one round, not five
    rounds = 1 if runtime is LatencyRuntime.TENSORRT else ROUNDS
    return fit_latency_table(
        model,
        graph,
        onnx_layer,
        onnx_network,
        (FLOAT, INTEGER),
        rounds=rounds,
        channel_multiple=multiple,
    )


@ray.remote
class Evaluator:
    """Scores policies on its own device; one evaluation at a time."""

    def __init__(self, source: ContextSource, threads: int, gpu_share: float = 1.0) -> None:
        # context and data come from the object store (or the user's shared storage)
        torch.set_num_threads(max(1, threads))
        self.device, self.device_label = assigned_device(gpu_share)
        self.gpu_share = gpu_share
        context = source.context()
        self.context = context
        # tensors move to the device once; batches are cut there
        self.splits = on_device(source.data().load(), self.device)
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
            # the share of its GPU's memory this process may take (None: no GPU)
            "memory_fraction": self.gpu_share if self.device.startswith("cuda") else None,
        }

    def evaluate(self, policy_json: str) -> PolicyRecord:
        policy = CompressionPolicy.from_json(policy_json)
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            score = self._score(policy)
        finally:
            if cuda:  # what this evaluation cached goes back to the sibling evaluators
                torch.cuda.empty_cache()
        where = self.ready()
        where.pop("cuda_initialized")
        where.pop("memory_fraction")
        gpu = (
            {
                "gpu_name": torch.cuda.get_device_name(self.device),
                "gpu_mem_peak_mb": torch.cuda.max_memory_allocated(self.device) / 2**20,
            }
            if cuda
            else {}
        )
        record = PolicyRecord.from_score(score, latency_device=self.device_label, **where, **gpu)
        if self.settings.latency_runtime is LatencyRuntime.TORCH or score.diverged:
            return record
        timing = deployed_latency(
            self.model,
            policy,
            self.context.graph,
            self.settings.latency_batch_size,
            self.device,
            self.settings.latency_repeats,
            self.settings.latency_runtime,
        )
        runtime = self.settings.latency_runtime.value
        return dataclasses.replace(
            record,
            latency_ms=timing.median_ms,
            latency_spread_ms=timing.spread_ms,
            latency_device=f"{self.device_label} ({runtime}, {timing.provider})",
        )

    def _score(self, policy: CompressionPolicy) -> PolicyScore:
        return self.scorer(
            self.model,
            policy,
            self.context.graph,
            self.splits,
            self.settings,
            self.device,
            **self.scorer_args,
        )
