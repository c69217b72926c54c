"""Integer ONNX (QDQ): onnxruntime runs integer kernels and computes the materialized network."""

import numpy as np
import onnx
import pytest
import torch

from ajpq.core.analysis import analyze
from ajpq.core.apply import apply_policy
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.materialize import materialize
from ajpq.export.qdq import export_qdq, integer_ops, qdq_network
from ajpq.task.models import build_model


def _calibrated(name: str, shape: tuple[int, ...], seed: int, x: torch.Tensor):
    """A random policy (1-bit and pruned channels included) applied and calibrated on ``x``."""
    torch.manual_seed(seed)
    model = build_model(name, 10, shape[0]).eval()
    graph = analyze(model, torch.zeros(1, *shape))
    rng = np.random.default_rng(seed)
    knobs = [
        LayerKnobs(
            float(rng.uniform(0.1, 0.5)),
            int(rng.choice([1, 2, 4, 8])),
            int(rng.choice([4, 8])),
            1.0,
            min_bits=1,
            max_bits=8,
        )
        for _ in graph.layers
    ]
    policy = build_policy(model, graph, knobs, model_name=name)
    simulated = apply_policy(model, policy, graph).train()
    with torch.no_grad():
        simulated(x)  # the first batch sets each activation range: x lies within them
    return simulated.eval(), policy, graph


@pytest.mark.parametrize(
    ("name", "shape"),
    [("digits_cnn", (1, 16, 16)), ("mobilenet_v2", (3, 32, 32)), ("resnet18", (3, 32, 32))],
)
def test_qdq_onnx_runs_integer_kernels_and_computes_the_materialized_network(name, shape, tmp_path):
    torch.manual_seed(1)
    x = torch.randn(16, *shape)
    simulated, policy, graph = _calibrated(name, shape, 0, x)
    bits = np.concatenate([np.asarray(lp.weight_bits) for lp in policy.layers])
    assert (bits == 0).any() and (bits == 1).any()
    path = export_qdq(simulated, policy, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx.partial").exists()
    proto = onnx.load(str(path))
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    int8 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(int(np.prod(t.dims)) for t in int8) > 0
    floats = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert max(int(np.prod(t.dims)) for t in floats) < 4096  # no float weight tensor left
    assert sum(integer_ops(path).values()) >= 1

    network, layers = qdq_network(simulated, policy)
    with torch.no_grad():
        held = network(x).numpy()  # what the file says, computed by torch
    reference, optimized = (_run(path, x, level) for level in ("reference", "optimized"))
    # onnxruntime's reference operators and its integer kernels compute the file's network
    assert np.abs(reference - held).max() <= 1e-4 * np.abs(held).max()
    assert np.abs(optimized - held).max() <= 1e-4 * np.abs(held).max()
    # which is the materialized network (activations on their grids, weights on theirs) but
    # for each bias, rounded to the accumulator's grid: within half its step
    materialized = materialize(simulated, policy, graph)
    biased = [(n, lay) for n, lay in layers.items() if lay.bias_codes is not None]
    assert biased
    for name, layer in biased:
        bias = materialized.get_submodule(name.removesuffix(".weight")).bias.detach().numpy()
        held_bias = layer.bias_codes.astype(np.float64) * layer.bias_scales
        assert np.all(np.abs(held_bias - bias) <= 0.5 * layer.bias_scales * (1 + 1e-5) + 1e-9)


@pytest.mark.parametrize(
    ("name", "shape"), [("mobilenet_v2", (3, 32, 32)), ("resnet18", (3, 32, 32))]
)
def test_requantized_outputs_make_every_integer_layer_an_integer_kernel(name, shape, tmp_path):
    torch.manual_seed(1)
    x = torch.randn(16, *shape)
    simulated, policy, graph = _calibrated(name, shape, 3, x)
    plain = export_qdq(simulated, policy, tmp_path / "plain.onnx")
    path = export_qdq(simulated, policy, tmp_path / "m.onnx", calibration=x)
    _, layers = qdq_network(simulated, policy)
    quantized_inputs = sum(1 for lp in policy.layers if lp.act_bits < 32)
    fused = integer_ops(path)
    assert fused.get("QLinearConv", 0) + fused.get("QGemm", 0) == quantized_inputs
    assert sum(integer_ops(plain).values()) < sum(fused.values())  # residual outputs now fuse
    reference, optimized = (_run(path, x, level) for level in ("reference", "optimized"))
    # integer kernels requantize the accumulator with their own float rounding: a value on a
    # rounding edge lands one step apart now and then, and the step propagates
    assert np.abs(reference - optimized).mean() <= 0.05 * np.abs(reference).mean()
    assert (reference.argmax(1) == optimized.argmax(1)).mean() >= 0.9
    # one more 8-bit rounding per requantized output: the decisions stay the network's
    with torch.no_grad():
        expected = materialize(simulated, policy, graph)(x).numpy()
    assert np.abs(reference - expected).mean() <= 0.5 * np.abs(expected).mean()
    assert (reference.argmax(1) == expected.argmax(1)).mean() >= 0.5


def _run(path, x: torch.Tensor, level: str) -> np.ndarray:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = (
        onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        if level == "reference"
        else onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def test_an_uncalibrated_quantizer_is_refused_and_leaves_no_file(tmp_path):
    model = build_model("digits_cnn", 10, 1).eval()
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    policy = build_policy(model, graph, LayerKnobs(0.25, 4, 8), model_name="digits_cnn")
    with pytest.raises(ValueError, match="never calibrated"):
        export_qdq(apply_policy(model, policy, graph).eval(), policy, tmp_path / "m.onnx")
    assert not list(tmp_path.glob("m.onnx*"))


@pytest.mark.parametrize(
    ("name", "shape"), [("digits_cnn", (1, 16, 16)), ("resnet18", (3, 32, 32))]
)
def test_the_symmetric_form_is_int8_at_zero_point_0_and_the_same_network(name, shape, tmp_path):
    """TensorRT's form: every activation int8 at zero point 0; for grids of up to 7 bits it
    holds the very network of onnxruntime's uint8 form, and onnxruntime still fuses it."""
    torch.manual_seed(2)
    x = torch.randn(16, *shape)
    model = build_model(name, 10, shape[0]).eval()
    graph = analyze(model, torch.zeros(1, *shape))
    rng = np.random.default_rng(5)
    knobs = [
        LayerKnobs(
            float(rng.uniform(0.1, 0.5)), int(rng.choice([2, 4, 8])), int(rng.choice([4, 6]))
        )
        for _ in graph.layers
    ]
    policy = build_policy(model, graph, knobs, model_name=name)
    simulated = apply_policy(model, policy, graph).train()
    with torch.no_grad():
        simulated(x)
    simulated.eval()
    uint8 = export_qdq(simulated, policy, tmp_path / "u.onnx", calibration=x)
    int8 = export_qdq(simulated, policy, tmp_path / "s.onnx", calibration=x, symmetric=True)
    proto = onnx.load(str(int8))
    initializers = {t.name: t for t in proto.graph.initializer}
    initializers.update(  # torch writes the containers' zero points as Constant nodes
        (n.output[0], n.attribute[0].t) for n in proto.graph.node if n.op_type == "Constant"
    )
    activations = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert activations
    for node in activations:
        zero = initializers[node.input[2]]
        assert zero.data_type == onnx.TensorProto.INT8
        assert int(onnx.numpy_helper.to_array(zero)) == 0
    same = _run(int8, x, "reference")
    assert np.abs(same - _run(uint8, x, "reference")).max() <= 1e-4 * np.abs(same).max()
    assert sum(integer_ops(int8).values()) >= 1
