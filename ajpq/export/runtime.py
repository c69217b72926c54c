"""Latency where the network is deployed: a policy's integer ONNX timed in onnxruntime.

A policy's latency does not depend on its trained weights, only on what it keeps and how it is
stored: :func:`deployed_latency` builds the policy's deployable network from the original model
(pruned simulation, activation ranges set by one batch), writes it as integer ONNX
(:func:`ajpq.export.qdq.export_qdq`) and times it in onnxruntime on the evaluator's device.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ajpq.core.analysis import analyze
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.cost import Timing
from ajpq.core.graph import ModelGraph
from ajpq.core.policy import CompressionPolicy
from ajpq.core.pruned import simulate
from ajpq.export.onnx import export_onnx
from ajpq.export.qdq import export_qdq

__all__ = ["Timing", "time_onnx", "deployed_latency", "layer_latency", "providers_for"]

logger = logging.getLogger(__name__)


def providers_for(device: str) -> list[str]:
    """onnxruntime's execution providers for ``device`` (CUDA when built in, else the CPU's)."""
    import onnxruntime

    if device.startswith("cuda") and "CUDAExecutionProvider" in (
        onnxruntime.get_available_providers()
    ):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def time_onnx(
    path: str | Path,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 20,
) -> Timing:
    """Time one ``session.run`` of the ONNX file at ``batch_size`` after ``warmup`` runs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=providers_for(device))
    x = np.random.default_rng(0).standard_normal((batch_size, *input_shape)).astype(np.float32)
    times = []
    for step in range(warmup + repeats):
        started = time.perf_counter()
        session.run(None, {"input": x})
        if step >= warmup:
            times.append(1000.0 * (time.perf_counter() - started))
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return Timing(statistics.median(times), quartiles[2] - quartiles[0], session.get_providers()[0])


def deployed_latency(
    model: nn.Module,
    policy: CompressionPolicy,
    graph: ModelGraph,
    batch_size: int = 1,
    device: str = "cpu",
    repeats: int = 20,
) -> Timing:
    """onnxruntime latency of ``policy``'s integer ONNX (``model``: the original network)."""
    with tempfile.TemporaryDirectory() as folder:
        path = _integer_file(model, policy, graph, Path(folder) / "policy.onnx")
        return time_onnx(path, policy.input_shape, batch_size, device, repeats=repeats)


def _integer_file(
    model: nn.Module, policy: CompressionPolicy, graph: ModelGraph, path: Path
) -> Path:
    """``policy``'s integer ONNX built from the original ``model`` (pruned simulation,
    activation ranges set by one random batch: they set no speed, but the file needs them)."""
    simulated = simulate(model, policy, graph, pruned=True).cpu().train()
    x = torch.randn((8, *policy.input_shape))
    with torch.no_grad():
        simulated(x)
    return export_qdq(simulated.eval(), policy, path, calibration=x)


def layer_latency(
    module: nn.Module,
    input_shape: tuple[int, ...],
    integer: bool,
    batch_size: int = 1,
    device: str = "cpu",
    repeats: int = 30,
) -> Timing:
    """onnxruntime latency of one layer alone: float ONNX, or (``integer``) 8-bit integer
    ONNX as :func:`export_qdq` writes a layer (a latency table's entry)."""
    # a conv's output must reach a consumer for its requantization (and so its integer kernel):
    # inside a network the next layer's quantizer is that consumer, here a flatten
    network = nn.Sequential(module, nn.Flatten()).cpu().eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "layer.onnx"
        if integer:
            graph = analyze(network, torch.zeros((1, *input_shape)))
            policy = build_policy(network, graph, LayerKnobs(0.0, 8, 8), model_name="layer")
            _integer_file(network, policy, graph, path)
        else:
            export_onnx(network, input_shape, path)
        return time_onnx(path, input_shape, batch_size, device, repeats=repeats)
