"""What every search process needs, prepared once by the driver.

The driver builds one :class:`SearchContext` (trained weights, layer graph, importance, fp32
accuracies, latency model, config) and one :class:`DataSource`; :mod:`ajpq.run.context_source`
publishes both (Ray's object store, or the user's shared storage) as a :class:`ContextSource`
for env runners and evaluators: no worker ever reads the driver's disk.
The driver also keeps a copy in the run folder (``save``/``load``) for ``--resume`` and export.

Small datasets (digits, Fashion-MNIST, CIFAR-10, random) travel as tensors
(:class:`ShippedData`); an ImageFolder is read from ``data.path`` on each node
(:class:`NodeLocalData`), and a node without it says which node and which path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ajpq.core.analysis import analyze
from ajpq.core.graph import ModelGraph
from ajpq.core.importance import layer_importance
from ajpq.core.latency import LatencyPredictor, latency_from_dict
from ajpq.search.config import SearchConfig
from ajpq.task.data import DataConfig, DatasetName, DataSplits, load_dataset
from ajpq.task.images import FolderListing
from ajpq.task.models import build_model
from ajpq.task.pretrain import PretrainPlan, fit_reference, plan_pretraining, store_pretrained

__all__ = [
    "SearchContext",
    "DataSource",
    "ShippedData",
    "NodeLocalData",
    "prepare_context",
    "reference_context",
    "data_source_for",
    "ContextSource",
    "CONTEXT_SCHEMA",
    "ContextSchemaError",
]

logger = logging.getLogger(__name__)

# a network whose fp32 accuracy is this close to chance makes every reward noise
CHANCE_MARGIN = 0.05
CONTEXT_SCHEMA = 2  # bump when the saved context's files change incompatibly


class ContextSchemaError(ValueError):
    """A saved context written by another ajpq version."""


@dataclass
class SearchContext:
    """Model, its layer graph and channel importance, fp32 accuracies and the latency model.

    Plain picklable data: it travels through Ray's object store as one object."""

    config: SearchConfig
    model: nn.Module
    graph: ModelGraph
    importance: list[np.ndarray]
    fp32_val_accuracy: float
    fp32_test_accuracy: float
    num_classes: int
    latency_model: LatencyPredictor | None = None
    latency_device: str | None = None  # the device kind the latency model was fitted on

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.graph.input_shape)

    def with_latency_model(self, model: LatencyPredictor, device: str) -> SearchContext:
        return dataclasses.replace(self, latency_model=model, latency_device=device)

    def save(self, directory: str | Path) -> Path:
        """The driver's own copy (for ``--resume`` and ``ajpq export``); workers never read it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), directory / "model.pt")
        meta = {
            "schema": CONTEXT_SCHEMA,
            "config": self.config.to_dict(),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "fp32_val_accuracy": self.fp32_val_accuracy,
            "fp32_test_accuracy": self.fp32_test_accuracy,
            "latency_model": self.latency_model.to_dict() if self.latency_model else None,
            "latency_device": self.latency_device,
        }
        tmp = directory / "context.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(directory / "context.json")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SearchContext:
        directory = Path(directory)
        meta = json.loads((directory / "context.json").read_text())
        if meta.get("schema", 1) != CONTEXT_SCHEMA:
            raise ContextSchemaError(
                f"{directory} was saved by another ajpq version (context schema "
                f"{meta.get('schema', 1)}, this version reads {CONTEXT_SCHEMA}); start a new run"
            )
        config = SearchConfig.from_dict(meta["config"])
        input_shape = tuple(meta["input_shape"])
        model = build_model(config.model, meta["num_classes"], input_shape[0])
        model.load_state_dict(
            torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
        )
        return _assemble(
            config,
            model,
            input_shape,
            meta["num_classes"],
            meta["fp32_val_accuracy"],
            meta["fp32_test_accuracy"],
            latency_from_dict(meta["latency_model"]) if meta.get("latency_model") else None,
            meta.get("latency_device"),
        )

    def load_data(self) -> DataSplits:
        """The data, read here (driver-side reports and export)."""
        return load_dataset(self.config.data)


def _assemble(
    config: SearchConfig,
    model: nn.Module,
    input_shape: tuple[int, ...],
    num_classes: int,
    fp32_val: float,
    fp32_test: float,
    latency_model: LatencyPredictor | None = None,
    latency_device: str | None = None,
) -> SearchContext:
    model = model.cpu().eval()
    graph = analyze(model, torch.zeros(1, *input_shape))
    return SearchContext(
        config=config,
        model=model,
        graph=graph,
        importance=layer_importance(model, graph),
        fp32_val_accuracy=fp32_val,
        fp32_test_accuracy=fp32_test,
        num_classes=num_classes,
        latency_model=latency_model,
        latency_device=latency_device,
    )


class DataSource(Protocol):
    """How an evaluator gets its data: ``load()`` runs on the evaluator's node."""

    def load(self) -> DataSplits: ...


@dataclass
class ShippedData:
    """In-memory splits that travel through the object store with the search."""

    splits: DataSplits

    def load(self) -> DataSplits:
        return self.splits


@dataclass
class NodeLocalData:
    """A dataset too large to ship (ImageFolder): read from ``config.path`` on each node, by
    the file lists the driver made (``listings``), so no evaluator walks the tree again."""

    config: DataConfig
    listings: dict[str, FolderListing] | None = None

    def load(self) -> DataSplits:
        path = self.config.path
        if not path or not Path(path).exists():
            raise FileNotFoundError(
                f"node {socket.gethostname()}: data.path {path} does not exist there; "
                "put the dataset at the same path on every node (or on storage all nodes mount)"
            )
        return load_dataset(self.config, self.listings)


def data_source_for(config: SearchConfig, splits: DataSplits) -> DataSource:
    """Ship tensors when they are in memory; an ImageFolder stays on each node's disk."""
    if config.data.name is DatasetName.IMAGEFOLDER:
        return NodeLocalData(config.data, splits.info.get("listings"))  # type: ignore[arg-type]
    return ShippedData(splits)


def reference_context(
    device: torch.device | str, config: SearchConfig, plan: PretrainPlan, data: DataSource
) -> SearchContext:
    """The device work of preparing a search (on an evaluator's device, not the driver's):
    train the network when ``plan`` says so, measure its fp32 accuracies, analyse it and rank
    its channels."""
    splits = data.load()
    pre = fit_reference(plan, splits, device)
    logger.info(
        "fp32 %s: val accuracy %.4f, test accuracy %.4f", config.model, pre.val_top1, pre.test_top1
    )
    chance = 1.0 / splits.num_classes
    if config.data.name is not DatasetName.RANDOM and pre.val_top1 < chance + CHANCE_MARGIN:
        raise ValueError(
            f"the fp32 {config.model} reaches {pre.val_top1:.3f} validation accuracy, within "
            f"{CHANCE_MARGIN:.2f} of chance ({chance:.3f} for {splits.num_classes} classes): it "
            "has not learned this data; give weights trained on it, or train its new head "
            "longer (head.steps, head.finetune_steps)"
        )
    return _assemble(
        config,
        pre.model,
        tuple(splits.input_shape),
        splits.num_classes,
        pre.val_top1,
        pre.test_top1,
    )


def prepare_context(config: SearchConfig, device: str = "cpu") -> tuple[SearchContext, DataSplits]:
    """Load data, get the trained model (cache or train now), analyse it, all in this process
    (a notebook; the search driver runs :func:`reference_context` on an evaluator)."""
    splits = load_dataset(config.data)
    plan = plan_pretraining(
        config.model, config.data, splits, weights=config.weights, head=config.head
    )
    context = reference_context(device, config, plan, ShippedData(splits))
    store_pretrained(plan, context.model)
    return context, splits


class ContextSource(Protocol):
    """Where a worker gets the search context and the data from (resolved in the worker)."""

    def context(self) -> SearchContext: ...

    def data(self) -> DataSource: ...
