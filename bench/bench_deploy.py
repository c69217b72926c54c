"""Deployed speed (issue 23): onnxruntime latency of fp32 ONNX vs the pruned float network vs
ajpq's integer (QDQ) ONNX vs onnxruntime's own static int8 quantization of the same network.
One run, ratios to fp32's ONNX measured side by side, this CPU, random weights and inputs.

Usage: python bench/bench_deploy.py [--models resnet18 mobilenet_v2 fmnist_cnn] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ajpq.core.analysis import analyze
from ajpq.core.apply import apply_policy
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.cost import CostModel
from ajpq.core.materialize import materialize
from ajpq.export.onnx import export_onnx
from ajpq.export.qdq import export_qdq, integer_ops
from ajpq.task.models import build_model

SHAPE = {"fmnist_cnn": (1, 28, 28), "digits_cnn": (1, 16, 16)}
# (label, channel sparsity, weight bits, activation bits)
POLICIES = [("w8a8", 0.0, 8, 8), ("w4a8", 0.0, 4, 8), ("w8a8, 50% channels", 0.5, 8, 8)]


def _session(path: Path, threads: int):  # noqa: ANN202
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _latency(path: Path, shape: tuple[int, ...], batch: int, threads: int) -> tuple[float, float]:
    """Median and interquartile spread (ms) of one call, after warm-up."""
    session = _session(path, threads)
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    for _ in range(3):
        session.run(None, {"input": x})
    times = []
    budget = time.perf_counter() + 4.0
    while len(times) < 10 or (len(times) < 50 and time.perf_counter() < budget):
        started = time.perf_counter()
        session.run(None, {"input": x})
        times.append(1000 * (time.perf_counter() - started))
    quartiles = statistics.quantiles(times, n=4)
    return statistics.median(times), quartiles[2] - quartiles[0]


def _ort_int8(float_path: Path, out: Path, calibration: np.ndarray) -> Path:
    """onnxruntime's own static int8 (QDQ, per-channel weights, uint8 activations)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    quantize_static(
        str(float_path),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2", "fmnist_cnn"])
    parser.add_argument("--size", type=int, default=224, help="input size of the zoo networks")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [
        f"onnxruntime latency, {args.threads} threads: median ms (interquartile spread) and "
        "speed against fp32's ONNX; file MB\n",
        "| model | policy | fp32 file / policy's | batch | fp32 ONNX | pruned float | "
        "ajpq integer (QDQ) | onnxruntime int8 of the same network | integer ops |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            rows += _model_rows(name, args, Path(folder))
    print("\n" + "\n".join(rows))


def _model_rows(name: str, args: argparse.Namespace, folder: Path) -> list[str]:
    shape = SHAPE.get(name, (3, args.size, args.size))
    torch.manual_seed(0)
    model = build_model(name, 10, shape[0]).eval()
    graph = analyze(model, torch.zeros(1, *shape))
    calibration = torch.randn(32, *shape)
    fp32 = export_onnx(model, shape, folder / f"{name}.onnx")
    rows = []
    for label, sparsity, wbits, abits in POLICIES:
        policy = build_policy(
            model,
            graph,
            [LayerKnobs(sparsity, wbits, abits) for _ in graph.layers],
            model_name=name,
        )
        ratio = CostModel(graph).cost(policy).compression_ratio
        simulated = apply_policy(model, policy, graph).train()
        with torch.no_grad():
            simulated(calibration)  # the activation ranges, as a finetune would set them
        simulated.eval()
        tag = f"{name}-{sparsity}-{wbits}"
        qdq = export_qdq(simulated, policy, folder / f"{tag}.qdq.onnx", calibration=calibration)
        plain = build_policy(
            model, graph, [LayerKnobs(sparsity, 32, 32) for _ in graph.layers], model_name=name
        )
        pruned = export_onnx(materialize(model, plain, graph), shape, folder / f"{tag}.onnx")
        theirs = _ort_int8(pruned, folder / f"{tag}.ort.onnx", calibration.numpy())
        ops = ", ".join(f"{k} {v}" for k, v in sorted(integer_ops(qdq).items()))
        for batch in args.batches:
            times = [_latency(p, shape, batch, args.threads) for p in (fp32, pruned, qdq, theirs)]
            base = times[0][0]
            cells = [f"{times[0][0]:.3g} ({times[0][1]:.2g}), {_mb(fp32)}"]
            cells += [
                f"{t:.3g} ({spread:.2g}), {base / t:.2f}x, {_mb(p)}"
                for (t, spread), p in zip(times[1:], (pruned, qdq, theirs))
            ]
            rows.append(
                f"| {name} {shape[1]} px | {label} | {ratio:.1f}x | {batch} | "
                + " | ".join(cells)
                + f" | {ops} |"
            )
            print(rows[-1], flush=True)
    return rows


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.2g} MB"


if __name__ == "__main__":
    main()
