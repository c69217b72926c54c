"""Latency in onnxruntime: a policy's integer ONNX and a layer alone, timed with a spread."""

import torch
from torch import nn

from ajpq.core.analysis import analyze
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.export.runtime import deployed_latency, layer_latency, providers_for
from ajpq.task.models import build_model


def test_a_policy_is_timed_in_onnxruntime_with_its_spread():
    torch.manual_seed(0)
    model = build_model("digits_cnn", 10, 1).eval()
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    full = build_policy(model, graph, LayerKnobs(0.0, 8, 8), model_name="digits_cnn")
    small = build_policy(model, graph, LayerKnobs(0.75, 8, 8), model_name="digits_cnn")
    wide = deployed_latency(model, full, graph, batch_size=16, repeats=15)
    narrow = deployed_latency(model, small, graph, batch_size=16, repeats=15)
    assert wide.provider == "CPUExecutionProvider" and wide.spread_ms >= 0
    # (not necessarily faster: so few channels leave integer kernels little to do)
    assert narrow.median_ms > 0 and wide.median_ms > 0
    assert providers_for("cuda:0")[-1] == "CPUExecutionProvider"  # CPU-only onnxruntime here


def test_a_layer_alone_in_float_and_integer_form():
    conv = nn.Conv2d(16, 32, 3, padding=1)
    for integer in (False, True):
        timing = layer_latency(conv, (16, 12, 12), integer, batch_size=2, repeats=5)
        assert timing.median_ms > 0
    assert layer_latency(nn.Linear(64, 10), (64,), True, repeats=3).median_ms > 0


def test_providers_follow_the_device_and_tensorrt_says_what_it_needs(monkeypatch):
    import onnxruntime
    import pytest

    from ajpq.task.scoring import LatencyRuntime

    with pytest.raises(RuntimeError, match="scoring.latency_runtime tensorrt: the evaluator's"):
        providers_for("cpu", LatencyRuntime.TENSORRT)  # no GPU and no TensorRT here
    gpu_node = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: gpu_node)
    # the evaluator's GPU (cuda:1 where Ray does not set CUDA_VISIBLE_DEVICES), not GPU 0
    trt, cuda, cpu = providers_for("cuda:1", LatencyRuntime.TENSORRT)
    assert trt[0] == "TensorrtExecutionProvider" and trt[1]["device_id"] == 1
    assert trt[1]["trt_int8_enable"] and cuda == ("CUDAExecutionProvider", {"device_id": 1})
    assert providers_for("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})
    assert providers_for("cpu") == ["CPUExecutionProvider"]
