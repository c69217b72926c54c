"""A user's own network, ``model: package.module:factory`` with ``weights:``, searched and exported
like a zoo model (the module is importable through PYTHONPATH, as it must be on every node)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from ajpq.export.packed import load_compressed
from ajpq.task.train import FinetuneConfig, finetune

USER_MODULE = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
            nn.Conv2d(12, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        )
        self.head = nn.Linear(24, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def build(num_classes=10, in_channels=3):
    return TinyNet(num_classes, in_channels)
"""


def test_user_model_from_a_factory_is_searched_and_exported(search_config_file, digits, tmp_path):
    package = tmp_path / "usernets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tiny.py").write_text(USER_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        from usernets.tiny import build

        weights = tmp_path / "tiny.pt"
        torch.manual_seed(0)
        trained = build(num_classes=10, in_channels=1)  # the user's weights are trained ones
        finetune(trained, digits.train, FinetuneConfig(steps=200, lr=0.05, batch_size=64))
        torch.save(trained.state_dict(), weights)
        path = search_config_file(
            model="usernets.tiny:build",
            weights=str(weights),
            agent={"episodes": 4, "warmup_episodes": 4, "env_runners": 1},
            evaluator={"num_evaluators": 1},
            scoring={"finetune": {"steps": 3}},
        )
        config = yaml.safe_load(path.read_text())
        env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"}
        run = [sys.executable, "-m", "ajpq.cli"]
        searched = subprocess.run(
            [*run, "search", "--config", str(path)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert searched.returncode == 0, searched.stdout[-3000:] + searched.stderr[-3000:]
        exported = subprocess.run(
            [*run, "export", "--config", str(path), "--steps", "5", "--onnx"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert exported.returncode == 0, exported.stdout[-3000:] + exported.stderr[-3000:]
        runs = Path(config["output_dir"]) / "usernets.tiny-build-digits-size0.1-s0"
        run_dir = Path(json.loads((runs / "latest.json").read_text())["run_dir"])
        result = json.loads((run_dir / "export.json").read_text())
        assert result["file_ratio"] > 1.0
        assert Path(result["onnx_path"]).exists()  # a deployment tool needs no user code
        assert result["architecture_bytes"] > 0  # nor does load_compressed: the graph is stored
        model = load_compressed(result["path"])
        with torch.no_grad():
            assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("usernets.tiny", None)
        sys.modules.pop("usernets", None)
