"""After a search: finetune the best policy longer and export it as a compressed artifact.

``ajpq export --config <yaml>`` (the latest run of that config) or ``--run-dir <dir>``. The
artifact is reloaded and scored on the test split, so the reported accuracy is the file's own.
The finetune, the scoring and the ONNX check run as a Ray task on an evaluator's device (a GPU
worker on a cluster); this process only writes the files and the MLflow records.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ajpq.core.policy import CompressionPolicy
from ajpq.export.onnx import OnnxForm, check_onnx, export_onnx
from ajpq.export.packed import export_compressed, load_compressed
from ajpq.export.qdq import export_qdq, integer_ops
from ajpq.export.runtime import providers_for, time_onnx
from ajpq.run.devicework import run_on_evaluator
from ajpq.run.resources import ensure_ray
from ajpq.run.rundir import RunDir, RunDirError, latest_run, runs_folder
from ajpq.run.tracking import Tracker, model_tags
from ajpq.search.config import SearchConfig
from ajpq.search.context import DataSource, SearchContext, data_source_for
from ajpq.task.data import DataSplits, on_device
from ajpq.task.scoring import LatencyRuntime, tune_policy
from ajpq.task.train import FinetuneConfig, evaluate

__all__ = [
    "export_best",
    "export_on",
    "package",
    "latest_run_dir",
    "ONNX_INTEGER",
    "ONNX_FLOAT",
    "ONNX_TENSORRT",
]

# the forms' names as ``ajpq export`` takes them (ajpq.export.onnx.OnnxForm owns them)
ONNX_INTEGER, ONNX_FLOAT, ONNX_TENSORRT = (f.value for f in OnnxForm)
CALIBRATION_IMAGES = 128  # training images that set the integer ONNX's requantized ranges

logger = logging.getLogger(__name__)


def latest_run_dir(config: SearchConfig) -> Path:
    """The run directory of the latest search of ``config`` (what --resume would continue)."""
    base = runs_folder(config)
    folder = latest_run(base)
    if folder is None:
        raise FileNotFoundError(f"no search of this config under {base}; run it first")
    return folder.path


def export_best(
    run_dir: str | Path,
    finetune_steps: int | None = None,
    out: str | Path | None = None,
    onnx: str | None = None,
) -> dict[str, Any]:
    """Finetune the run's best policy for ``finetune_steps`` (default: the long recipe's,
    ``scoring.long_steps``), write
    the compressed model to ``out`` (default ``<run_dir>/compressed.pt``), reload it, score it on
    the test split, and record everything in ``<run_dir>/export.json`` and the run's MLflow.
    With ``onnx`` (:data:`ONNX_INTEGER`, :data:`ONNX_FLOAT` or :data:`ONNX_TENSORRT`), also write
    the network as ONNX
    beside it (``.onnx``) and check it with onnxruntime on test images (largest output
    difference, test accuracy, integer operators)."""
    if onnx not in (None, ONNX_INTEGER, ONNX_FLOAT, ONNX_TENSORRT):
        raise ValueError(
            f"onnx must be {ONNX_INTEGER!r}, {ONNX_FLOAT!r} or {ONNX_TENSORRT!r}, got {onnx!r}"
        )
    folder = RunDir(Path(run_dir))
    run_dir = folder.path
    policy_path = folder.best_policy
    if not policy_path.exists():
        raise FileNotFoundError(
            f"{run_dir} holds no best_policy.json: the search found no policy or has not ended"
        )
    context = SearchContext.load(folder.context)
    policy = CompressionPolicy.load(policy_path)
    settings = context.config.scoring
    if finetune_steps is not None and finetune_steps < 0:
        raise ValueError(f"finetune steps must be >= 0, got {finetune_steps}")
    recipe = (
        settings.long_finetune()
        if finetune_steps is None
        else dataclasses.replace(settings.finetune, steps=finetune_steps)
    )
    ensure_ray(context.config)
    data = data_source_for(context.config, context.load_data())
    # the long finetune runs where evaluators run (a GPU worker), never on the head
    result, where = run_on_evaluator(
        context.config, "export", export_on, context, data, policy.to_json(), recipe, onnx
    )
    path = Path(out) if out else folder.compressed
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(result.pop("compressed"))
    result["path"] = str(path)  # the file here, not the task's staging copy
    onnx_bytes = result.pop("onnx", None)
    if onnx_bytes is not None:
        onnx_path = path.with_suffix(".onnx")
        onnx_path.write_bytes(onnx_bytes)
        result["onnx_path"] = str(onnx_path)
    result["ran_on"] = where.to_dict()
    folder.export_report.write_text(json.dumps(result, indent=2))
    if folder.pointer.exists():
        folder.record_placement("export", where.to_dict())
    _record(run_dir, context.config, result, path, where.tag())
    return result


def export_on(
    device: str,
    context: SearchContext,
    data: DataSource,
    policy_json: str,
    recipe: FinetuneConfig,
    onnx: str | None,
) -> dict[str, Any]:
    """The device work of an export (a task on an evaluator's device): finetune, write the
    compressed file, reload it and score it on the test split (and its ONNX); returns the
    numbers and the files' bytes for the driver to write."""
    splits = data.load()
    return package(device, context, splits, CompressionPolicy.from_json(policy_json), recipe, onnx)


def package(
    device: str,
    context: SearchContext,
    splits: DataSplits,
    policy: CompressionPolicy,
    recipe: FinetuneConfig,
    onnx: str | None = None,
) -> dict[str, Any]:
    """Finetune ``policy`` by ``recipe`` on ``device``, pack it, reload the file and score it on
    the test split: the numbers and the file's bytes (``compressed``; ``onnx`` when asked)."""
    started = time.time()
    near = on_device(splits, device)
    simulated, diverged = tune_policy(
        context.model.to(device),
        policy,
        context.graph,
        near.train,
        context.config.scoring,
        device,
        recipe,
    )
    if diverged:
        raise ValueError(f"the export finetune diverged at lr {recipe.lr}; lower it and rerun")
    simulated_val = evaluate(simulated, near.val, device).top1
    simulated_test = evaluate(simulated, near.test, device).top1
    with tempfile.TemporaryDirectory() as staging:
        path = Path(staging) / "compressed.pt"
        report = export_compressed(simulated.cpu(), policy, path, splits.num_classes, context.graph)
        loaded = load_compressed(path)
        loaded_test = evaluate(loaded, near.test, device).top1
        files: dict[str, Any] = {"compressed": path.read_bytes()}
        extra: dict[str, Any] = {}
        if onnx:
            onnx_path = path.with_suffix(".onnx")
            if onnx == ONNX_FLOAT:
                export_onnx(loaded.cpu(), context.graph.input_shape, onnx_path)
            else:
                calibration = _sample(splits.train, CALIBRATION_IMAGES, recipe.seed)
                symmetric = onnx == ONNX_TENSORRT
                export_qdq(
                    simulated.cpu(), policy, onnx_path, calibration=calibration, symmetric=symmetric
                )
            extra = {"onnx_form": onnx, **_check(onnx_path, loaded.cpu(), splits)}
            extra.update(_deployed_speed(onnx_path, context, Path(staging), onnx, device))
            files["onnx"] = onnx_path.read_bytes()
    return {
        **report.to_dict(),
        "finetune_steps": recipe.steps,
        "val_accuracy": simulated_val,
        "test_accuracy": loaded_test,
        "simulated_test_accuracy": simulated_test,
        "fp32_test_accuracy": context.fp32_test_accuracy,
        "seconds": time.time() - started,
        **extra,
        **files,
    }


def _deployed_speed(
    path: Path, context: SearchContext, staging: Path, onnx: str, device: str
) -> dict[str, float]:
    """onnxruntime latency of the ONNX file next to the fp32 network's ONNX (CPU, the search's
    latency batch size, the same threads). The TensorRT form is timed in TensorRT on the
    evaluator's GPU, or not at all: onnxruntime's CPU kernels run its int8 activations several
    times slower than the uint8 ones of the integer form, which says nothing of TensorRT."""
    shape = context.graph.input_shape
    batch = context.config.scoring.latency_batch_size
    where, runtime = "cpu", LatencyRuntime.ONNXRUNTIME
    if onnx == ONNX_TENSORRT:
        where, runtime = device, LatencyRuntime.TENSORRT
        try:
            providers_for(device, runtime)
        except RuntimeError as error:
            logger.info("the TensorRT-form ONNX is not timed: %s", error)
            return {}
    fp32 = export_onnx(copy.deepcopy(context.model).cpu().eval(), shape, staging / "fp32.onnx")
    ours, theirs = (
        time_onnx(p, shape, batch, where, repeats=50, runtime=runtime) for p in (path, fp32)
    )
    return {
        "onnx_latency_ms": ours.median_ms,
        "onnx_latency_spread_ms": ours.spread_ms,
        "fp32_onnx_latency_ms": theirs.median_ms,
        "onnx_speedup": theirs.median_ms / max(ours.median_ms, 1e-9),
        "onnx_latency_provider": ours.provider,
    }


def _sample(data: Any, count: int, seed: int) -> torch.Tensor:
    """``count`` inputs of ``data`` drawn without replacement (fixed by ``seed``)."""
    order = np.random.default_rng(seed).permutation(len(data))[:count]
    return torch.stack([data[int(i)][0] for i in order])


def _check(path: Path, loaded: Any, splits: Any) -> dict[str, Any]:
    """The ONNX file checked with onnxruntime on the test images: largest output difference
    from the compressed model, test accuracy, and the integer operators it runs."""
    import onnxruntime

    images = torch.stack([splits.test[i][0] for i in range(min(256, len(splits.test)))])
    diff = check_onnx(path, loaded, images)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    correct = total = 0
    for start in range(0, len(splits.test), 512):
        batch = [splits.test[i] for i in range(start, min(start + 512, len(splits.test)))]
        x = torch.stack([item[0] for item in batch]).numpy()
        labels = np.array([int(item[1]) for item in batch])
        logits = session.run(None, {"input": x})[0]
        correct += int((logits.argmax(axis=1) == labels).sum())
        total += len(batch)
    return {
        "onnx_path": str(path),
        "onnx_bytes": path.stat().st_size,
        "onnx_max_abs_diff": diff,
        "onnx_test_accuracy": correct / total,
        "onnx_integer_ops": integer_ops(path),
    }


def _record(
    run_dir: Path, config: SearchConfig, result: dict[str, Any], path: Path, ran_on: str
) -> None:
    """Log the export into the search's MLflow parent run (named in ``<run_dir>/run.json``)."""
    folder = RunDir(run_dir)
    try:
        parent_run_id = folder.parent_run_id()
    except RunDirError as error:
        logger.info("the export is not logged to MLflow: %s", error)
        return
    tracker = Tracker(config.tracking.uri, config.tracking.experiment)
    for name in (
        "test_accuracy",
        "file_bytes",
        "file_ratio",
        "finetune_steps",
        "onnx_test_accuracy",
        "onnx_bytes",
        "onnx_latency_ms",
        "fp32_onnx_latency_ms",
        "onnx_speedup",
    ):
        if name in result:
            tracker.client.log_metric(parent_run_id, f"export_{name}", float(result[name]))
    tracker.client.set_tag(parent_run_id, "ajpq.ran_on.export", ran_on)
    tracker.log_artifact(parent_run_id, path, "export")
    tracker.log_artifact(parent_run_id, folder.export_report, "export")
    if result.get("onnx_path"):
        tracker.log_artifact(parent_run_id, Path(result["onnx_path"]), "export")
    name = config.tracking.register_model
    if name:
        version = tracker.register_model(
            name, parent_run_id, "export", model_tags(config, result, "export")
        )
        logger.info("registered the export as model %s version %s", name, version)
