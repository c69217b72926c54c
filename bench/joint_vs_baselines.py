"""Joint DDPG vs the baselines at equal budget and equal episodes: the table in results/.

Runs the sweep of ``--config`` (default ``tune_configs/fmnist_table.yaml``: every method x
budgets x seeds, same episodes), then gives every search's best policy one identical final
finetune (``--final-steps``) through ``ajpq export``'s path (apply, finetune, export, reload,
score the file on the test split), measures the file ratio (fp32 file / compressed file), the
BitOps ratio, the CPU latency speedup of the loaded compressed model over the fp32 model in
torch and of its integer ONNX over the fp32 ONNX in onnxruntime (batch 1, median of
``--latency-repeats``, one thread, measured one after the other here), and
writes ``<out>.md`` (mean +- std over seeds per budget and method) and ``<out>.csv`` (one row per
search). Each search's records give how its validation accuracy moved: the mean over its first
and over its last ``--window`` episodes.

Usage: ``python bench/joint_vs_baselines.py [--config ...] [--set key=value ...] [--sweep-dir DIR
...] [--out results/fmnist]``: ``--set`` changes the sweep (``sweep.grid.agent.seed=[2,3]`` runs
more seeds; give each part its own ``sweep.name``); ``--sweep-dir`` (repeatable) summarizes
finished sweeps instead of running one, so a table can be built in parts: every search's final
finetune is kept in its run folder (``final.json``) and done once. ``--rows CSV`` (repeatable)
adds the rows of tables written before (a part's ``.csv``) as they were measured, so merging
parts times nothing again; with ``--rows`` alone no sweep runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ajpq.core.cost import CostModel, measure_latency
from ajpq.core.policy import CompressionPolicy
from ajpq.export.onnx import export_onnx
from ajpq.export.packed import load_compressed
from ajpq.export.runtime import time_onnx
from ajpq.run.export_run import ONNX_INTEGER, export_best
from ajpq.run.rundir import RunDir
from ajpq.run.sweep import run_sweep
from ajpq.run.tracking import Tracker
from ajpq.search.context import SearchContext
from ajpq.search.record import PolicyRecord
from ajpq.search.reward import admitted
from ajpq.search.sweep_config import load_sweep

logger = logging.getLogger("joint_vs_baselines")


def _final(run_dir: str, steps: int) -> dict[str, Any]:
    """The identical final finetune of a search's best, kept in the run folder (``final.json``)
    so that a table merging sweeps run in several sittings finetunes each search once."""
    kept = Path(run_dir) / "final.json"
    if kept.exists():
        final = json.loads(kept.read_text())
        if final.get("final_steps") == steps:
            return final
    torch.set_num_threads(1)
    final = export_best(
        run_dir, finetune_steps=steps, out=Path(run_dir) / "final.pt", onnx=ONNX_INTEGER
    )
    final = {**json.loads(json.dumps(final, default=str)), "final_steps": steps}
    kept.write_text(json.dumps(final, indent=1))
    return final


def _trial_dirs(config: Any, sweep_run_id: str) -> list[Path]:
    """The run folders of the sweep's searches (their run.json names a child of the sweep)."""
    tracker = Tracker(config.base.tracking.uri, config.base.tracking.experiment)
    searches = {
        run.info.run_id for run in tracker.runs_where(f"tags.mlflow.parentRunId = '{sweep_run_id}'")
    }
    found = []
    for pointer in Path(config.base.output_dir).rglob(RunDir(Path()).pointer.name):
        folder = RunDir(pointer.parent)
        if folder.parent_run_id() in searches:
            found.append(folder.path)
    return sorted(found)


def _learning(run_dir: Path, window: int) -> tuple[float, float]:
    records = json.loads(RunDir(run_dir).records.read_text())
    ok = [r["accuracy"] for r in sorted(records, key=lambda r: r["episode"]) if not r["failed"]]
    if not ok:
        return float("nan"), float("nan")
    return statistics.mean(ok[:window]), statistics.mean(ok[-window:])


def _row(run_dir: Path, final: dict[str, Any], repeats: int, window: int) -> dict[str, Any]:
    context = SearchContext.load(RunDir(run_dir).context)
    config = context.config
    policy = CompressionPolicy.load(RunDir(run_dir).best_policy)
    cost = CostModel(context.graph).cost(policy)
    shape = context.graph.input_shape
    fp32_ms = measure_latency(context.model.cpu().eval(), shape, repeats=repeats)
    small_ms = measure_latency(load_compressed(final["path"]), shape, repeats=repeats)
    # deployed: the integer ONNX against the fp32 network's ONNX in onnxruntime, one thread
    fp32_onnx = export_onnx(context.model.cpu().eval(), shape, Path(run_dir) / "fp32.onnx")
    onnx_ms, fp32_onnx_ms = (
        time_onnx(path, shape, threads=1, repeats=repeats).median_ms
        for path in (final["onnx_path"], fp32_onnx)
    )
    first, last = _learning(run_dir, window)
    records = json.loads(RunDir(run_dir).records.read_text())
    stamps = [r for r in records if r.get("queued_ts") and r.get("returned_ts")]
    wall_s = (
        max(r["returned_ts"] for r in stamps) - min(r["queued_ts"] for r in stamps)
        if stamps
        else float("nan")
    )
    return {
        "method": _method_label(config),
        "budget_kind": config.budget.kind.value,
        "budget": config.budget.value,
        "search_wall_s": wall_s,
        "seed": config.agent.seed,
        "evaluations": len(records),
        # the best cheap score among the policies that may be the best (not a stepwise
        # search's pruning stage above the budget)
        "search_val_accuracy": max(
            r.accuracy
            for r in map(PolicyRecord.from_dict, records)
            if not r.failed and admitted(config.budget, r)
        ),
        "test_accuracy": final["test_accuracy"],
        "fp32_test_accuracy": final["fp32_test_accuracy"],
        "file_bytes": final["file_bytes"],
        "fp32_file_bytes": final["fp32_file_bytes"],
        "file_ratio": final["file_ratio"],
        "size_bytes": cost.size_bytes,
        "bitops_ratio": cost.bitops_ratio,
        "fp32_ms": fp32_ms,
        "compressed_ms": small_ms,
        "latency_speedup": fp32_ms / small_ms,
        "onnx_ms": onnx_ms,
        "fp32_onnx_ms": fp32_onnx_ms,
        "onnx_speedup": fp32_onnx_ms / onnx_ms,
        "onnx_test_accuracy": final["onnx_test_accuracy"],
        "val_first": first,
        "val_last": last,
        "run_dir": str(run_dir),
    }


def _method_label(config: Any) -> str:
    """The method with the levers it ran with (``ddpg+prior+screen4+norm+shared``)."""
    agent, label = config.agent, config.method.value
    # the levers act on DDPG (prior, screen, norm) and stepwise (screen) only
    if label == "ddpg" and agent.prior.value != "none":
        label += f"+{agent.prior.value}-prior"
    if label.startswith(("ddpg", "stepwise")) and agent.screen > 1:
        label += f"+screen{agent.screen}"
    if label.startswith("ddpg") and agent.reward_normalize:
        label += "+norm"
    if config.experience_dir:  # a trial of a sweep that shares experience across its budgets
        label += "+shared"
    return label


def _budget_label(kind: str, value: float) -> str:
    return f"1/{1 / value:.0f} of the file" if kind == "size" else f"{kind} {value:g}"


def _interval(values: list[float]) -> str:
    """Mean and the half-width of its 95% interval (Student's t)."""
    from scipy import stats

    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{mean:.4f}"
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return f"{mean:.4f} ± {half:.4f}"


def _markdown(
    rows: list[dict[str, Any]], command: str, settings: str, minutes: float | None
) -> str:
    lines = [
        "# Fashion-MNIST: joint DDPG vs baselines at equal budget",
        "",
        f"Command: `{command}`",
        "",
        settings,
        "",
        "Measured on this 2-core machine (no GPU)"
        + (f"; sweep and final finetunes: {minutes:.0f} min." if minutes is not None else "."),
        "",
        "| budget | method | seeds | test acc (mean ± 95% interval) | evaluations | "
        "search wall (min) | file ratio | "
        "BitOps ratio | CPU latency speedup (torch) | onnxruntime speedup (integer ONNX vs fp32 "
        "ONNX) | search best val acc | val acc first → last episodes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["budget_kind"], row["budget"], row["method"]), []).append(row)
    for (kind, budget, method), group in sorted(
        groups.items(), key=lambda kv: (kv[0][0] != "size", -kv[0][1], kv[0][2])
    ):
        mean = statistics.mean
        lines.append(
            f"| {_budget_label(kind, budget)} | {method} | {len(group)} | "
            f"{_interval([r['test_accuracy'] for r in group])} | "
            f"{mean(r['evaluations'] for r in group):.0f} | "
            f"{mean(r['search_wall_s'] for r in group) / 60:.1f} | "
            f"{mean(r['file_ratio'] for r in group):.1f}x | "
            f"{mean(r['bitops_ratio'] for r in group):.4f} | "
            f"{mean(r['latency_speedup'] for r in group):.2f}x | "
            f"{mean(r['onnx_speedup'] for r in group):.2f}x | "
            f"{mean(r['search_val_accuracy'] for r in group):.4f} | "
            f"{mean(r['val_first'] for r in group):.4f} → {mean(r['val_last'] for r in group):.4f} |"
        )
    fp32 = rows[0]["fp32_test_accuracy"] if rows else float("nan")
    lines += ["", f"fp32 test accuracy: {fp32:.4f}.", ""]
    return "\n".join(lines)


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _typed(row: dict[str, str]) -> dict[str, Any]:
    """A row read back from a table's ``.csv`` (``--rows``): numbers as numbers."""
    typed: dict[str, Any] = {}
    for key, value in row.items():
        for kind in (int, float, str):
            try:
                typed[key] = kind(value)
                break
            except ValueError:
                continue
    return typed


def _measured(config: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of the sweeps in ``--sweep-dir`` (or of the sweep run now): each search's
    final finetune (kept in its run folder) and its latencies, measured here."""
    if args.sweep_dir:
        sweep_run_ids = [
            json.loads((Path(folder) / "sweep.json").read_text())["sweep_run_id"]
            for folder in args.sweep_dir
        ]
    else:
        outcome = run_sweep(config)
        logger.info("sweep folder %s (summarize it again with --sweep-dir)", outcome.sweep_dir)
        sweep_run_ids = [outcome.sweep_run_id]
    dirs = [
        d
        for run_id in sweep_run_ids
        for d in _trial_dirs(config, run_id)
        if RunDir(d).best_policy.exists()
    ]
    logger.info("%d searches; final finetune of %d steps each", len(dirs), args.final_steps)
    import ray

    if ray.is_initialized():
        # the sweep's Ray would be inherited half-working by forked children: each final runs
        # in a fresh (spawned) process with a Ray of its own
        ray.shutdown()
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=spawn) as pool:
        finals = list(pool.map(_final, [str(d) for d in dirs], [args.final_steps] * len(dirs)))
    torch.set_num_threads(1)
    return [_row(d, f, args.latency_repeats, args.window) for d, f in zip(dirs, finals)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tune_configs/fmnist_table.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--sweep-dir", action="append", default=[])
    parser.add_argument("--rows", action="append", default=[])
    parser.add_argument("--final-steps", type=int, default=300)
    parser.add_argument("--latency-repeats", type=int, default=50)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="results/fmnist")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.time()
    config = load_sweep(args.config, args.overrides)
    rows = [_typed(row) for path in args.rows for row in _read_rows(Path(path))]
    measured = bool(args.sweep_dir or not args.rows)
    if measured:
        rows += _measured(config, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.with_suffix(".csv")).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    base = config.base
    settings = (
        f"Settings: {base.model}, {base.agent.episodes} episodes per search "
        f"({base.agent.warmup_episodes} warm-up for DDPG and TPE), {base.scoring.finetune.steps} "
        f"finetune steps per evaluated policy (lr {base.scoring.finetune.lr}, batch "
        f"{base.scoring.finetune.batch_size}) and {base.scoring.bn_recalibration_batches} "
        f"BatchNorm recalibration batches, {base.scoring.val_samples} validation images, "
        f"the best of the top {base.scoring.fidelity.top_k} re-scored with "
        f"{base.scoring.long_finetune().steps} steps, "
        f"space.precision {base.space.precision.value}, space.fill_budget "
        f"{str(base.space.fill_budget).lower()}, DDPG noise decay per learning episode "
        f"{base.agent.decay_over(base.agent.episodes):.3g}; final: {args.final_steps} finetune steps "
        "of every search's best policy, scored as the exported file on the 10,000 test images."
    )
    command = " ".join(
        ["python bench/joint_vs_baselines.py", f"--config {args.config}"]
        + [f"--set {o}" for o in args.overrides]
        + [f"--sweep-dir {d}" for d in args.sweep_dir]
        + [f"--rows {r}" for r in args.rows]
        + [f"--out {args.out}"]
    )
    minutes = (time.time() - started) / 60 if measured else None
    text = _markdown(rows, command, settings, minutes)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
