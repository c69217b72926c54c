"""How well the latency table predicts a policy's measured latency (issue 23): fit the table as
a latency-budget search does (every layer alone at four kept fractions, float and integer, plus
the whole network), then time random mixed policies' deployable networks and compare. Also the
old straight line in MACs (fitted at three float sparsities) on the same policies.

This machine's own speed moves in bursts (the same policies up to 75% slower for seconds),
so next to each policy the unpruned float network is timed too: its time over its time right
after the fit is the machine's speed then, and the table's error with that divided out is
meant to say what the table misses apart from the machine (in practice the reference is as
noisy as the policies: results/deploy.md). A second fit at the end says how far two fits of
the same table agree.

The policies and the table's uniform networks keep whole multiples of ``--channel-multiple``
channels, as a latency-budget search keeps them (``space.channel_multiple``, 16 unless set);
``--channel-multiple 1`` shows any width.

Usage: python bench/bench_latency_table.py [--models fmnist_cnn resnet18] [--runtime onnxruntime]
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
from ajpq.core.builder import LayerKnobs
from ajpq.core.cost import CostModel, measure_latency
from ajpq.core.graph import ModelGraph
from ajpq.core.importance import layer_importance
from ajpq.core.latency import fit_latency_model
from ajpq.core.latency_table import (
    FLOAT,
    INTEGER,
    LatencyTable,
    fit_latency_table,
    with_input_quantizer,
)
from ajpq.core.materialize import materialize
from ajpq.core.policy import CompressionPolicy
from ajpq.core.snap import build_snapped
from ajpq.export.onnx import export_onnx
from ajpq.export.runtime import deployed_latency, layer_latency, time_onnx
from ajpq.search.config import LATENCY_CHANNEL_MULTIPLE
from ajpq.task.models import build_model

SHAPE = {"fmnist_cnn": (1, 28, 28), "digits_cnn": (1, 16, 16)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["fmnist_cnn", "resnet18"])
    parser.add_argument("--runtime", choices=["onnxruntime", "torch"], default="onnxruntime")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--policies", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channel-multiple", type=int, default=LATENCY_CHANNEL_MULTIPLE)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [
        f"latency table vs measured ({args.runtime}, batch {args.batch}, {args.threads} "
        f"threads, {args.policies} random policies, kept channels in multiples of "
        f"{args.channel_multiple})\n",
        "| model | fit s | measured ms (range) | table: median error | table: 90th pct | "
        "machine's speed (reference / after the fit): range | table, machine's speed divided "
        "out: median error | second fit: median error (its predictions vs the first's) | "
        "line in MACs: median error | timing noise (one policy timed twice): median |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name in args.models:
        rows.append(_row(name, args))
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))


def _row(name: str, args: argparse.Namespace) -> str:
    shape = SHAPE.get(name, (3, args.size, args.size))
    torch.manual_seed(0)
    model = build_model(name, 10, shape[0]).eval()
    graph = analyze(model, torch.zeros(1, *shape))
    costs = CostModel(graph)
    importance = layer_importance(model, graph)
    batch = args.batch
    if args.runtime == "onnxruntime":

        def time_layer(module, layer_shape, form):  # noqa: ANN001, ANN202
            return layer_latency(module, layer_shape, form == INTEGER, batch).median_ms

        def time_policy(policy, form=None):  # noqa: ANN001, ANN202
            return deployed_latency(model, policy, graph, batch).median_ms

        def time_entry(policy, form):  # noqa: ANN001, ANN202
            # the table's network entries: one window, as a search fits them
            return deployed_latency(model, policy, graph, batch, windows=1).median_ms

    else:

        def time_layer(module, layer_shape, form):  # noqa: ANN001, ANN202
            layer = with_input_quantizer(module, layer_shape) if form == INTEGER else module
            return measure_latency(layer, layer_shape, batch, "cpu", repeats=10)

        def time_policy(policy, form=None):  # noqa: ANN001, ANN202
            return measure_latency(materialize(model, policy, graph), shape, batch, "cpu")

        time_entry = time_policy

    multiple = args.channel_multiple

    def fit() -> LatencyTable:
        return fit_latency_table(
            model, graph, time_layer, time_entry, (FLOAT, INTEGER), channel_multiple=multiple
        )

    started = time.perf_counter()
    table = fit()
    fit_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        reference = export_onnx(model, shape, Path(folder) / "fp32.onnx")

        def time_reference() -> float:  # the unpruned float network, timed as a policy is
            if args.runtime == "onnxruntime":
                return time_onnx(reference, shape, batch).median_ms
            return measure_latency(model, shape, batch, "cpu")

        at_fit = min(time_reference() for _ in range(5))
        line = fit_latency_model(model, graph, measure=time_policy)
        rng = np.random.default_rng(1)
        policies, measured, speeds, noise = [], [], [], []
        for _ in range(args.policies):
            policy = _random_policy(model, graph, importance, name, multiple, rng)
            speeds.append(time_reference() / at_fit)
            times = [time_policy(policy) for _ in range(3)]
            noise.append(abs(times[0] - times[1]) / times[1])  # the same policy timed twice
            measured.append(statistics.median(times))
            policies.append(policy)
    second = fit()
    ms = np.asarray(measured)
    predicted = np.asarray([table.predict(p, costs) for p in policies])
    again = np.asarray([second.predict(p, costs) for p in policies])
    errors = np.abs(predicted - ms) / ms
    steady = np.abs(predicted * np.asarray(speeds) - ms) / ms
    line_errors = np.abs(np.asarray([line.predict(p, costs) for p in policies]) - ms) / ms
    return (
        f"| {name} {shape[1]} px | {fit_s:.0f} | {statistics.median(measured):.3g} "
        f"({min(measured):.3g}-{max(measured):.3g}) | {100 * np.median(errors):.1f}% | "
        f"{100 * float(np.percentile(errors, 90)):.1f}% | "
        f"{min(speeds):.2f}-{max(speeds):.2f} | {100 * np.median(steady):.1f}% | "
        f"{100 * np.median(np.abs(again - ms) / ms):.1f}% "
        f"({100 * np.median(np.abs(again - predicted) / predicted):.1f}%) | "
        f"{100 * np.median(line_errors):.1f}% | {100 * statistics.median(noise):.1f}% |"
    )


def _random_policy(
    model: torch.nn.Module,
    graph: ModelGraph,
    importance: list,
    name: str,
    multiple: int,
    rng: np.random.Generator,
) -> CompressionPolicy:
    """Random per-layer sparsity (0-0.7), mean 6 bits (2-8), activations 4, 8 or float, kept
    channels in multiples of ``multiple``."""
    acts = int(rng.choice([4, 8, 32]))
    knobs = [
        LayerKnobs(float(rng.uniform(0.0, 0.7)), 6, acts, 2.0, min_bits=2, max_bits=8)
        for _ in graph.layers
    ]
    return build_snapped(model, graph, knobs, importance, multiple, model_name=name)


if __name__ == "__main__":
    main()
