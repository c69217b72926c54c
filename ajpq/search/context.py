"""What every search process needs, prepared once by the driver and read by env and evaluators."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ajpq.budget import BudgetKind, LatencyModel, fit_latency_model
from ajpq.config import SearchConfig
from ajpq.data import DataConfig, DataSplits, load_dataset
from ajpq.graph import ModelGraph, analyze
from ajpq.importance import layer_importance
from ajpq.models import build_model, pretrained_model

__all__ = ["SearchContext", "prepare_context", "data_config_of"]

logger = logging.getLogger(__name__)


def data_config_of(config: SearchConfig) -> DataConfig:
    data = config.data
    return DataConfig(
        name=data.name,
        path=data.path,
        image_size=data.image_size,
        val_fraction=data.val_fraction,
        seed=config.agent.seed,
        download=data.download,
    )


@dataclass
class SearchContext:
    """Model, its layer graph and channel importance, and the fp32 reference accuracy."""

    config: SearchConfig
    model: nn.Module
    graph: ModelGraph
    importance: list[np.ndarray]
    fp32_val_accuracy: float
    fp32_test_accuracy: float
    directory: Path
    latency_model: LatencyModel | None = None

    @classmethod
    def load(cls, directory: str | Path) -> SearchContext:
        directory = Path(directory)
        meta = json.loads((directory / "context.json").read_text())
        config = SearchConfig.from_dict(meta["config"])
        input_shape = tuple(meta["input_shape"])
        model = build_model(config.model, meta["num_classes"], input_shape[0])
        model.load_state_dict(
            torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
        )
        model.eval()
        graph = analyze(model, torch.zeros(1, *input_shape))
        return cls(
            config=config,
            model=model,
            graph=graph,
            importance=layer_importance(model, graph),
            fp32_val_accuracy=meta["fp32_val_accuracy"],
            fp32_test_accuracy=meta["fp32_test_accuracy"],
            directory=directory,
            latency_model=LatencyModel(**meta["latency_model"])
            if meta.get("latency_model")
            else None,
        )

    def load_data(self) -> DataSplits:
        return load_dataset(data_config_of(self.config))


def prepare_context(config: SearchConfig, directory: Path, device: str = "cpu") -> SearchContext:
    """Load data, get the trained model (cache or train now), write what workers read."""
    directory.mkdir(parents=True, exist_ok=True)
    data_config = data_config_of(config)
    splits = load_dataset(data_config)
    pre = pretrained_model(config.model, data_config, splits, weights=config.weights, device=device)
    torch.save(pre.model.state_dict(), directory / "model.pt")
    meta = {
        "config": config.to_dict(),
        "input_shape": list(splits.input_shape),
        "num_classes": splits.num_classes,
        "fp32_val_accuracy": pre.val_top1,
        "fp32_test_accuracy": pre.test_top1,
    }
    if config.budget.kind is BudgetKind.LATENCY:
        graph = analyze(pre.model, torch.zeros(1, *splits.input_shape))
        fitted = fit_latency_model(pre.model, graph, config.evaluator.latency_batch_size, device)
        meta["latency_model"] = {
            "intercept_ms": fitted.intercept_ms,
            "ms_per_mac": fitted.ms_per_mac,
        }
        logger.info("latency model: %.3f ms + %.3g ms/MAC", fitted.intercept_ms, fitted.ms_per_mac)
    (directory / "context.json").write_text(json.dumps(meta, indent=2))
    logger.info(
        "fp32 %s: val accuracy %.4f, test accuracy %.4f",
        config.model.value,
        pre.val_top1,
        pre.test_top1,
    )
    return SearchContext.load(directory)
