"""Evaluations per hour on this CPU (issue 20): the default scorer on generated data, before
and after the GPU-minded evaluator (no host reads in the hot loop, data resident where it is
batched), one evaluator with all threads vs two sharing the cores. All ratios come from one run.

Usage: python bench/bench_eval_throughput.py [--models fmnist_cnn resnet18] [--threads 2]
On a CUDA machine, ``bench/gpu_check.py`` prints the same table for the GPU (plus AMP).
"""

from __future__ import annotations

import argparse
import os

from eval_throughput import table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["fmnist_cnn", "resnet18"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    variants = ["before", "after", "2 per device"]
    print(f"evaluations per minute on the CPU ({args.threads} threads); x60 for per hour")
    print("(20 finetune steps at batch 64, 512 validation images, latency of the policy)\n")
    rows = table(args.models, "cpu", args.threads, variants)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
