"""The image pipeline (issue 21), measured in one run on this machine:

1. images per second into a finetune step (resnet18, SGD, batch 32) from a generated ImageFolder
   of JPEGs at 64 and 224 px, with 0 vs 2 loader workers;
2. bytes a CIFAR-10-shaped split sends through the object store: uint8 at the stored 32 px (what
   ajpq ships) vs float32 resized to 224 px (what it shipped before), per image and for 50,000;
3. one evaluation's time (the default scorer, resnet18 at 32 px, 20 finetune steps) with the
   default ``scoring.val_samples`` (10,000) vs the whole validation split (55,000 images).

Usage: python bench/bench_data.py [--threads 2] [--images 256]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ajpq.core.analysis import analyze
from ajpq.core.builder import uniform_policy
from ajpq.task.data import DataConfig, batches, load_dataset
from ajpq.task.images import ByteImages
from ajpq.task.models import build_model
from ajpq.task.scoring import ScoreSettings, score_policy
from ajpq.task.train import FinetuneConfig


def _folder(root: Path, side: int, count: int) -> Path:
    rng = np.random.default_rng(0)
    for part, share in (("train", count), ("val", 8)):
        for label in range(4):
            folder = root / part / f"c{label}"
            folder.mkdir(parents=True)
            for index in range(share // 4):
                pixels = rng.integers(0, 256, (side, side * 4 // 3, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)
    return root


def _loader_rate(root: Path, size: int, workers: int, count: int) -> float:
    """Images per second the training pipeline alone delivers (decode + augment + batch)."""
    config = DataConfig("imagefolder", path=str(root), image_size=size, num_workers=workers)
    splits = load_dataset(config)
    seen, started = 0, None
    for epoch in range(1000):
        for _, y in batches(splits.train, 32, shuffle=True, seed=epoch, drop_last=True):
            if started is None:  # after the workers started
                started = time.perf_counter()
                continue
            seen += len(y)
            if seen >= count:
                return seen / (time.perf_counter() - started)
    raise RuntimeError("not enough batches")


def _images_per_second(root: Path, size: int, workers: int, steps: int) -> float:
    config = DataConfig("imagefolder", path=str(root), image_size=size, num_workers=workers)
    splits = load_dataset(config)
    model = build_model("resnet18", 4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    seen, started, step = 0, None, 0
    for epoch in range(1000):
        for x, y in batches(splits.train, 32, shuffle=True, seed=epoch, drop_last=True):
            if step == 2:  # after the workers started and the first batches ran
                started, seen = time.perf_counter(), 0
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(y)
            step += 1
            if step >= steps + 2:
                return seen / (time.perf_counter() - started)
    raise RuntimeError("not enough batches")


def _transfer_table() -> list[str]:
    count = 500
    raw = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8)
    shipped = ByteImages(
        raw, torch.zeros(count, dtype=torch.long), torch.zeros(3), torch.ones(3), 224, True
    )
    as_bytes = len(pickle.dumps(shipped, protocol=5)) / count
    before = F.interpolate(raw.float() / 255, size=(224, 224), mode="bilinear")
    as_float = len(pickle.dumps(before, protocol=5)) / count
    return [
        "| shipped as | bytes per image | 50,000 images (CIFAR-10 train) |",
        "|---|---:|---:|",
        f"| uint8 at 32 px (now) | {as_bytes:,.0f} | {as_bytes * 50_000 / 1e9:.2f} GB |",
        f"| float32 at 224 px (before) | {as_float:,.0f} | {as_float * 50_000 / 1e9:.1f} GB |",
        f"| ratio | {as_float / as_bytes:.0f}x | |",
    ]


def _evaluation_table() -> list[str]:
    config = DataConfig(
        "random",
        random_samples=110_000,
        random_shape=(3, 32, 32),
        random_classes=10,
        val_fraction=0.5,
    )
    splits = load_dataset(config)
    model = build_model("resnet18", 10, 3)
    graph = analyze(model, torch.zeros(1, 3, 32, 32))
    policy = uniform_policy(graph, 8, 8, "resnet18")
    rows = ["| val images scored | one evaluation (s) |", "|---|---:|"]
    base = ScoreSettings(finetune=FinetuneConfig(steps=20, batch_size=64), latency_repeats=1)
    for label, samples in (
        ("default val_samples (10,000)", base.val_samples),
        ("whole split", None),
    ):
        settings = dataclasses.replace(base, val_samples=samples)
        started = time.perf_counter()
        score_policy(model, policy, graph, splits, settings)
        scored = min(samples or len(splits.val), len(splits.val))
        rows.append(f"| {label}: {scored:,} | {time.perf_counter() - started:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--images", type=int, default=256, help="training JPEGs per folder")
    parser.add_argument("--steps", type=int, default=6, help="timed finetune steps per cell")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"images per second, generated JPEG folder, batch 32, {args.threads} threads\n")
    rows = ["| px | what | 0 workers | 2 workers | ratio |", "|---:|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as staging:
        for size in (64, 224):
            root = _folder(Path(staging) / f"px{size}", size + size // 7, args.images)
            cells = {
                "loader alone (decode, augment, batch)": lambda w, r=root, z=size: _loader_rate(
                    r, z, w, 4 * args.images
                ),
                "into a resnet18 finetune step": lambda w, r=root, z=size: _images_per_second(
                    r, z, w, args.steps
                ),
            }
            for what, rate in cells.items():
                one, two = rate(0), rate(2)
                rows.append(f"| {size} | {what} | {one:.1f} | {two:.1f} | {two / one:.2f}x |")
                print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    print("\nobject-store transfer of a CIFAR-10-shaped split (measured on 500 images)\n")
    print("\n".join(_transfer_table()))
    print("\none evaluation (default scorer, resnet18 at 32 px, 20 finetune steps, random data)\n")
    print("\n".join(_evaluation_table()))


if __name__ == "__main__":
    main()
