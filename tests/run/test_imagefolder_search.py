"""The real-size scenario at toy scale: the shipped tune_configs/imagefolder_resnet18.yaml on a
generated folder of JPEGs (4 classes), resnet18 from a local 1000-class state dict, 2 loader
workers: the new head is trained before the search, the search runs end to end, and its best
compressed model lands in MLflow's registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from ajpq.run.driver import run_search
from ajpq.search.config import load_config
from ajpq.task.models import build_model

pytestmark = pytest.mark.ray

CONFIG = Path(__file__).parents[2] / "tune_configs" / "imagefolder_resnet18.yaml"
COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]


def _jpegs(root: Path, per_class=(60, 15)) -> Path:
    rng = np.random.default_rng(0)
    for part, count in zip(("train", "val"), per_class):
        for label, color in enumerate(COLORS):
            folder = root / part / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(np.array(color) + rng.normal(0, 40, (36, 36, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index}.jpg")
    return root


def test_the_imagefolder_scenario_runs_end_to_end(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("AJPQ_CACHE", str(tmp_path / "cache"))
    images = _jpegs(tmp_path / "images")  # 300 JPEGs in 4 classes
    weights = tmp_path / "resnet18.pt"
    torch.manual_seed(0)
    torch.save(build_model("resnet18", 1000, 3).state_dict(), weights)  # ImageNet's head
    config = load_config(
        CONFIG,
        [
            f"data.path={images}",
            f"weights={weights}",
            "data.image_size=32",
            "data.num_workers=2",
            "head.steps=60",
            "head.finetune_steps=20",
            "head.batch_size=16",
            "agent.episodes=4",
            "agent.warmup_episodes=2",
            "agent.env_runners=1",
            "evaluator.num_evaluators=1",
            "evaluator.num_cpus=1",
            "evaluator.num_gpus=0",
            "scoring.finetune.steps=3",
            "scoring.finetune.batch_size=16",
            "scoring.latency_repeats=2",
            "scoring.fidelity.top_k=0",
            "scoring.fidelity.random_k=0",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"output_dir={tmp_path / 'runs'}",
        ],
    )
    outcome = run_search(config)
    assert outcome.fp32_val_accuracy > 0.25 + 0.3  # the new head learned (chance 0.25)
    assert outcome.episodes == 4 and outcome.best is not None
    assert outcome.best_model_path.exists()
    assert outcome.registered == "resnet18-compressed/1"
    client = MlflowClient(config.tracking.uri)
    (version,) = client.search_model_versions("name='resnet18-compressed'")
    assert version.tags["dataset"] == "imagefolder" and version.tags["model"] == "resnet18"
