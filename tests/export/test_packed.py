import numpy as np
import pytest
import torch

from ajpq.core.analysis import analyze
from ajpq.core.apply import apply_policy
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.materialize import materialize
from ajpq.export.packed import export_compressed, load_compressed
from ajpq.task.models import build_model


def _calibrated(model, policy, graph, shape):
    simulated = apply_policy(model, policy, graph).train()
    with torch.no_grad():
        simulated(torch.randn(16, *shape))
    return simulated.eval()


@pytest.mark.parametrize(
    ("name", "shape"), [("digits_cnn", (1, 16, 16)), ("mobilenet_v2", (3, 32, 32))]
)
def test_exported_model_computes_what_materialize_returns(name, shape, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, 10, shape[0]).eval()
    graph = analyze(model, torch.zeros(1, *shape))
    rng = np.random.default_rng(0)
    # every kind of channel: binary, 2..8-bit grids, float, and pruned ones
    knobs = [
        LayerKnobs(float(rng.uniform(0, 0.6)), int(rng.choice([1, 2, 3, 4, 6, 8, 32])), 8, 1.0)
        for _ in graph.layers
    ]
    policy = build_policy(model, graph, knobs, model_name=name)
    assert {b for lp in policy.layers for b in lp.weight_bits} >= {0, 1, 2, 32}
    simulated = _calibrated(model, policy, graph, shape)
    report = export_compressed(simulated, policy, tmp_path / "model.ajpq.pt", 10, graph)
    with torch.no_grad():  # loading works where models are usually used
        loaded = load_compressed(report.path)
    small = materialize(simulated, policy).eval()
    x = torch.randn(8, *shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))  # bit for bit, 1-bit channels included
        assert (loaded(x) - simulated(x)).abs().max().item() <= 1e-4
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in small.parameters())
    # a channel at b bits holds at most 2^b distinct values
    for lp in policy.layers:
        key = f"{lp.name}.layer.weight" if lp.act_bits < 32 else f"{lp.name}.weight"
        weight = loaded.state_dict()[key]
        kept_bits = [b for b in lp.weight_bits if b]
        for row, bits in zip(weight.reshape(weight.shape[0], -1), kept_bits):
            if bits < 32:
                assert row.unique().numel() <= 2**bits


def test_artifact_is_smaller_than_fp32_as_the_bits_say(tmp_path):
    model = build_model("digits_cnn", 10, 1).eval()
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    reports = {}
    for bits in (8, 4, 2):
        policy = build_policy(
            model, graph, [LayerKnobs(0.5, bits, 8)] * len(graph.layers), model_name="digits_cnn"
        )
        reports[bits] = export_compressed(model, policy, tmp_path / f"w{bits}.pt", 10, graph)
    assert reports[8].file_ratio > 2.5  # half the channels and a quarter of the bits
    assert reports[2].file_bytes < reports[4].file_bytes < reports[8].file_bytes
    # the packed weights shrink with the bits: 8 -> 2 bits saves about 3/4 of the weight bytes
    saved = reports[8].file_bytes - reports[2].file_bytes
    weight_bytes_8 = reports[8].policy_size_bytes
    assert saved > 0.5 * weight_bytes_8


def test_loading_something_else_says_what_it_expected(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not an ajpq compressed model"):
        load_compressed(path)


def test_truncated_or_damaged_file_gives_one_clear_error(tmp_path):
    model = build_model("digits_cnn", 10, 1).eval()
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    policy = build_policy(model, graph, LayerKnobs(0.5, 4, 8), model_name="digits_cnn")
    path = tmp_path / "good.pt"
    export_compressed(model, policy, path, 10, graph)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_compressed(truncated)
    # a well-formed file whose parts do not fit together (the blob cut short)
    artifact = torch.load(path, weights_only=True)
    artifact["blob"] = artifact["blob"][: len(artifact["blob"]) // 2]
    damaged = tmp_path / "damaged.pt"
    torch.save(artifact, damaged)
    with pytest.raises(ValueError, match="is damaged"):
        load_compressed(damaged)
    with pytest.raises(ValueError, match="not a readable ajpq compressed model"):
        garbage = tmp_path / "garbage.pt"
        garbage.write_bytes(b"\x00" * 100)
        load_compressed(garbage)


def test_a_failed_export_leaves_no_file(tmp_path, monkeypatch):
    model = build_model("digits_cnn", 10, 1).eval()
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    policy = build_policy(model, graph, LayerKnobs(0.5, 4, 8), model_name="digits_cnn")

    def unknown(*args, **kwargs):
        raise ValueError("unknown model 'digits_cnn'")

    monkeypatch.setattr("ajpq.export.packed._skeleton", unknown)
    with pytest.raises(ValueError, match="unknown model"):  # no graph given: it rebuilds one
        export_compressed(model, policy, tmp_path / "out" / "m.pt", 10)
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    ("name", "shape"),
    [("digits_cnn", (1, 16, 16)), ("resnet18", (3, 32, 32)), ("mobilenet_v2", (3, 32, 32))],
)
def test_the_reported_size_is_the_file(name, shape, tmp_path):
    """size_bytes is what the export writes (BatchNorm folded or counted, the format's own
    bytes included) and compression_ratio is fp32 file / compressed file."""
    from ajpq.core.cost import CostModel

    torch.manual_seed(0)
    model = build_model(name, 10, shape[0]).eval()
    graph = analyze(model, torch.zeros(1, *shape))
    costs = CostModel(graph)
    rng = np.random.default_rng(1)
    for trial in range(2):
        knobs = [
            LayerKnobs(
                float(rng.uniform(0, 0.7)),
                int(rng.choice([1, 2, 3, 4, 6, 8, 32])),
                int(rng.choice([4, 8, 32])),
                float(rng.uniform(0, 2)),
            )
            for _ in graph.layers
        ]
        policy = build_policy(model, graph, knobs, model_name=name)
        report = export_compressed(model, policy, tmp_path / f"{trial}.pt", 10, graph)
        cost = costs.cost(policy)
        assert abs(report.file_bytes - cost.size_bytes) <= 0.05 * cost.size_bytes + 4096
        assert report.fp32_file_bytes == costs.fp32_size_bits / 8
        assert cost.compression_ratio == pytest.approx(report.file_ratio, rel=0.05)


def test_a_self_contained_file_loads_without_the_models_code(tmp_path, monkeypatch):
    """A user's model is exported with its compressed graph: loading needs neither the zoo nor
    the user's factory (here: building any model fails while loading)."""
    import ajpq.export.packed as export_module

    torch.manual_seed(0)
    shape = (1, 16, 16)
    model = build_model("digits_cnn", 10, 1).eval()
    graph = analyze(model, torch.zeros(1, *shape))
    knobs = [LayerKnobs(0.4, b, a, 1.0) for b, a in zip([1, 2, 4, 8, 32] * 2, [6, 32] * 5)]
    policy = build_policy(model, graph, knobs, model_name="digits_cnn")
    simulated = _calibrated(model, policy, graph, shape)
    path = tmp_path / "own.pt"
    report = export_compressed(simulated, policy, path, 10, graph, self_contained=True)
    assert 0 < report.architecture_bytes < 0.5 * report.file_bytes

    def no_model_code(*args, **kwargs):
        raise AssertionError("loading built a model from code")

    monkeypatch.setattr(export_module, "build_model", no_model_code)
    loaded = load_compressed(path)
    loaded.eval()  # fine: the graph was captured for inference
    x = torch.randn(5, *shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), materialize(simulated, policy).eval()(x))
