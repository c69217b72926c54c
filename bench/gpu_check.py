"""The prepared GPU check (``make gpu-check``), under 5 minutes on one GPU:

1. the tests marked ``gpu`` (CUDA scoring, two evaluators at 0.5 GPU fenced to half the
   memory each, latency on the GPU, bf16 close to fp32, no host sync in the hot loop);
2. a table of evaluations per minute for resnet18 and mobilenet_v2 at 64 px on generated
   data: before vs after the sync fix (fp32), after with bf16 autocast, and two evaluators
   sharing the GPU (bf16).

Usage: python bench/gpu_check.py [--skip-tests]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
from eval_throughput import table

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
    return code


if __name__ == "__main__":
    sys.exit(main())
