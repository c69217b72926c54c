"""ONNX round trip: the exported compressed network, run by onnxruntime."""

import numpy as np
import pytest
import torch

from ajpq.core.analysis import analyze
from ajpq.core.apply import apply_policy
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.export.onnx import check_onnx, export_onnx
from ajpq.export.packed import export_compressed, load_compressed
from ajpq.task.models import build_model


@pytest.mark.parametrize(
    ("name", "shape", "act_bits"),
    [
        ("digits_cnn", (1, 16, 16), 32),
        ("mobilenet_v2", (3, 32, 32), 32),
        ("digits_cnn", (1, 16, 16), 6),
    ],
)
def test_onnxruntime_reproduces_the_compressed_model(name, shape, act_bits, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, 10, shape[0]).eval()
    graph = analyze(model, torch.zeros(1, *shape))
    rng = np.random.default_rng(0)
    knobs = [
        LayerKnobs(float(rng.uniform(0, 0.5)), int(rng.choice([1, 2, 4, 8, 32])), act_bits, 1.0)
        for _ in graph.layers
    ]
    policy = build_policy(model, graph, knobs, model_name=name)
    simulated = apply_policy(model, policy, graph).train()
    with torch.no_grad():
        simulated(torch.randn(16, *shape))  # calibrates the activation quantizers
    simulated.eval()
    report = export_compressed(simulated, policy, tmp_path / "m.pt", 10, graph)
    loaded = load_compressed(report.path)
    path = export_onnx(loaded, shape, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx.partial").exists()
    diff = check_onnx(path, loaded, torch.randn(7, *shape))  # a batch size of its own
    if act_bits == 32:
        assert diff <= 1e-4
    else:  # the same grid arithmetic; a value on a rounding edge may land one step apart
        with torch.no_grad():
            scale = loaded(torch.randn(7, *shape)).abs().max().item()
        assert diff <= 0.05 * scale
    import onnx

    graph_proto = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph_proto.node}
    assert "BatchNormalization" not in ops  # folded into the convs
    assert ("Round" in ops) == (act_bits < 32)


def test_an_uncalibrated_quantizer_is_refused(tmp_path):
    model = build_model("digits_cnn", 10, 1).eval()
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    policy = build_policy(model, graph, LayerKnobs(0.0, 8, 8), model_name="digits_cnn")
    report = export_compressed(model, policy, tmp_path / "m.pt", 10, graph)
    with pytest.raises(ValueError, match="never calibrated"):
        export_onnx(load_compressed(report.path), (1, 16, 16), tmp_path / "m.onnx")
    assert not list(tmp_path.glob("m.onnx*"))
