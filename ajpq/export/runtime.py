"""Latency where the network is deployed: a policy's integer ONNX timed in onnxruntime.

A policy's latency does not depend on its trained weights, only on what it keeps and how it is
stored: :func:`deployed_latency` builds the policy's deployable network from the original model
(pruned simulation, activation ranges set by one batch), writes it as integer ONNX
(:func:`ajpq.export.qdq.export_qdq`) and times it in onnxruntime on the evaluator's device.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ajpq.core.analysis import analyze
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.cost import Timing, time_windows
from ajpq.core.graph import ModelGraph
from ajpq.core.policy import CompressionPolicy
from ajpq.core.pruned import simulate
from ajpq.export.onnx import export_onnx
from ajpq.export.qdq import export_qdq
from ajpq.task.scoring import LatencyRuntime

__all__ = [
    "Timing",
    "time_onnx",
    "deployed_latency",
    "layer_latency",
    "integer_file",
    "providers_for",
    "TENSORRT_PROVIDER",
    "WINDOWS",
]

logger = logging.getLogger(__name__)


TENSORRT_PROVIDER = "TensorrtExecutionProvider"
# a network's latency: the fastest of this many timing windows, WINDOW_GAP_S apart (on this
# 2-core VM one window's median moved by 2-26% between two timings a second apart; the fastest
# of 5 windows 0.2 s apart is what the latency table, the fastest of its rounds, predicts)
WINDOWS = 5
WINDOW_GAP_S = 0.2


def providers_for(device: str, runtime: LatencyRuntime = LatencyRuntime.ONNXRUNTIME) -> list:
    """onnxruntime's execution providers for ``device`` (the GPU of a ``cuda:N`` device): the
    CUDA provider when built in, else the CPU's; ``runtime`` tensorrt: TensorRT (int8 engine
    from the file's Q/DQ, fp16 elsewhere) before CUDA, and a one-line error where this node's
    onnxruntime has no TensorRT or the device is no GPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    gpu = device.startswith("cuda")
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    cuda = ("CUDAExecutionProvider", {"device_id": index})
    if runtime is LatencyRuntime.TENSORRT:
        if not gpu or TENSORRT_PROVIDER not in available:
            raise RuntimeError(
                f"scoring.latency_runtime tensorrt: the evaluator's device is {device} and "
                f"its onnxruntime offers {', '.join(available)}; give evaluators a GPU "
                "(evaluator.num_gpus) on nodes with onnxruntime-gpu built with TensorRT, or "
                "use scoring.latency_runtime onnxruntime"
            )
        options = {"device_id": index, "trt_int8_enable": True, "trt_fp16_enable": True}
        return [(TENSORRT_PROVIDER, options), cuda, "CPUExecutionProvider"]
    if gpu and cuda[0] in available:
        return [cuda, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def time_onnx(
    path: str | Path,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 20,
    runtime: LatencyRuntime = LatencyRuntime.ONNXRUNTIME,
    windows: int = WINDOWS,
) -> Timing:
    """Time one ``session.run`` of the ONNX file at ``batch_size`` after ``warmup`` runs (the
    first of which builds TensorRT's engine): at least ``repeats`` runs in each of ``windows``
    windows, the fastest window kept (:func:`time_windows`)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = providers_for(device, runtime)
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    x = np.random.default_rng(0).standard_normal((batch_size, *input_shape)).astype(np.float32)

    def run() -> object:
        return session.run(None, {"input": x})

    times = time_windows(run, windows, WINDOW_GAP_S, warmup, repeats)
    return Timing.of(times, session.get_providers()[0])


def deployed_latency(
    model: nn.Module,
    policy: CompressionPolicy,
    graph: ModelGraph,
    batch_size: int = 1,
    device: str = "cpu",
    repeats: int = 20,
    runtime: LatencyRuntime = LatencyRuntime.ONNXRUNTIME,
    windows: int = WINDOWS,
) -> Timing:
    """Latency of ``policy``'s integer ONNX (``model``: the original network) in onnxruntime,
    or (``runtime`` tensorrt) its symmetric form in TensorRT: the fastest of ``windows``."""
    with tempfile.TemporaryDirectory() as folder:
        path = integer_file(model, policy, graph, Path(folder) / "policy.onnx", runtime)
        shape = policy.input_shape
        return time_onnx(
            path, shape, batch_size, device, repeats=repeats, runtime=runtime, windows=windows
        )


def integer_file(
    model: nn.Module,
    policy: CompressionPolicy,
    graph: ModelGraph,
    path: Path,
    runtime: LatencyRuntime = LatencyRuntime.ONNXRUNTIME,
) -> Path:
    """``policy``'s integer ONNX built from the original ``model`` (pruned simulation,
    activation ranges set by one random batch: they set no speed, but the file needs them), in
    the form ``runtime`` takes."""
    simulated = simulate(model, policy, graph, pruned=True).cpu().train()
    x = torch.randn((8, *policy.input_shape))
    with torch.no_grad():
        simulated(x)
    symmetric = runtime is LatencyRuntime.TENSORRT
    return export_qdq(simulated.eval(), policy, path, calibration=x, symmetric=symmetric)


def layer_latency(
    module: nn.Module,
    input_shape: tuple[int, ...],
    integer: bool,
    batch_size: int = 1,
    device: str = "cpu",
    repeats: int = 30,
    runtime: LatencyRuntime = LatencyRuntime.ONNXRUNTIME,
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
            integer_file(network, policy, graph, path, runtime)
        else:
            export_onnx(network, input_shape, path)
        # one window: a latency table takes the fastest of its rounds
        shape = input_shape
        return time_onnx(
            path, shape, batch_size, device, repeats=repeats, runtime=runtime, windows=1
        )
