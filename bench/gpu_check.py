"""The prepared GPU check (``make gpu-check``), under 5 minutes on one GPU:

1. the tests marked ``gpu`` (CUDA scoring, two evaluators at 0.5 GPU fenced to half the
   memory each, latency on the GPU, bf16 close to fp32, no host sync in the hot loop);
2. a table of evaluations per minute for resnet18 and mobilenet_v2 at 64 px on generated
   data: before vs after the sync fix (fp32), after with bf16 autocast, and two evaluators
   sharing the GPU (bf16);
3. deployed latency on the GPU (resnet18, 224 px, batch 1 and 32): fp32 and compressed in
   torch, and the fp32 / integer ONNX in onnxruntime's CUDA and TensorRT providers where this
   machine's onnxruntime has them (the row says which provider ran, or why none could).

Usage: python bench/gpu_check.py [--skip-tests]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from eval_throughput import table

from ajpq.core.analysis import analyze
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.cost import Timing, time_forward
from ajpq.core.materialize import materialize
from ajpq.export.onnx import export_onnx
from ajpq.export.runtime import integer_file, time_onnx
from ajpq.task.models import build_model
from ajpq.task.scoring import LatencyRuntime

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here: the GPU check needs one (nothing was measured)")
        return 2
    name = torch.cuda.get_device_name(0)
    print(f"GPU: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    code = 0
    if not args.skip_tests:
        started = time.time()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
            cwd=REPO,
        )
        code = done.returncode
        print(f"gpu tests: exit {code} in {time.time() - started:.0f} s\n", flush=True)
    variants = ["before", "after", "after+amp", "2 per device+amp"]
    print(f"evaluations per minute on {name} (20 finetune steps, batch 64, 512 val images)")
    rows = table(args.models, "cuda:0", 4, variants)
    print("\n" + "\n".join(rows))
    print("\n" + "\n".join(deployed_rows("cuda:0")), flush=True)
    return code


def deployed_rows(device: str, name: str = "resnet18", size: int = 224) -> list[str]:
    """Median ms of one call (spread) on ``device``: fp32 and w8a8 at 50% channels, in torch
    and in onnxruntime's providers for it, batch 1 and 32."""
    shape = (3, size, size)
    model = build_model(name, 10, 3).eval()
    graph = analyze(model, torch.zeros(1, *shape))
    policy = build_policy(model, graph, LayerKnobs(0.5, 8, 8), model_name=name)
    small = materialize(model, policy, graph).eval()
    where = torch.cuda.get_device_name(0) if device.startswith("cuda") else device
    rows = [
        f"deployed latency on {where}, {name} {size} px, w8a8 at 50% channels (ms, median "
        "(interquartile spread), provider)",
        "| network | batch 1 | batch 32 |",
        "|---|---|---|",
    ]
    for label, net in (("fp32, torch", model), ("compressed, torch", small)):
        cells = [time_forward(net, shape, b, device, repeats=50) for b in (1, 32)]
        rows.append(f"| {label} | " + " | ".join(_cell(t) for t in cells) + " |")
    with tempfile.TemporaryDirectory() as folder:
        files = {
            "fp32 ONNX": export_onnx(model.cpu(), shape, f"{folder}/fp32.onnx"),
            "integer ONNX": integer_file(model, policy, graph, Path(folder) / "int8.onnx"),
            "integer ONNX, TensorRT form": integer_file(
                model, policy, graph, Path(folder) / "trt.onnx", LatencyRuntime.TENSORRT
            ),
        }
        for runtime in (LatencyRuntime.ONNXRUNTIME, LatencyRuntime.TENSORRT):
            for label, path in files.items():
                try:
                    cells = [
                        _cell(time_onnx(path, shape, b, device, repeats=50, runtime=runtime))
                        for b in (1, 32)
                    ]
                except RuntimeError as error:  # a provider this machine's onnxruntime lacks
                    rows.append(f"| {runtime.value}: not run | {error} | |")
                    break
                rows.append(f"| {label}, {runtime.value} | " + " | ".join(cells) + " |")
    return rows


def _cell(timing: Timing) -> str:
    return f"{timing.median_ms:.3f} ({timing.spread_ms:.3f}), {timing.provider}"


if __name__ == "__main__":
    sys.exit(main())
