"""ajpq: automatic joint pruning and mixed-precision quantization (pruning = 0-bit quantization).

The public face of every floor (the folders say what each may import; see the README's
"Architecture")::

    from ajpq import analyze, build_policy, LayerKnobs, apply_policy, materialize, export_compressed

``run_search`` (floor ``run``) loads Ray on first use only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ajpq.core.analysis import analyze
from ajpq.core.apply import apply_policy
from ajpq.core.budget import Budget, BudgetKind, enforce_budget, fill_budget
from ajpq.core.builder import LayerKnobs, build_policy, uniform_policy
from ajpq.core.cost import CostModel, PolicyCost, measure_latency
from ajpq.core.graph import ModelGraph
from ajpq.core.importance import ImportanceCriterion, layer_importance
from ajpq.core.materialize import materialize
from ajpq.core.policy import CompressionPolicy, LayerPolicy
from ajpq.export import ExportReport, export_compressed, export_onnx, export_qdq, load_compressed
from ajpq.search.config import SearchConfig, load_config
from ajpq.task.data import DataConfig, load_dataset
from ajpq.task.models import build_model
from ajpq.task.scoring import score_policy

if TYPE_CHECKING:
    from ajpq.run.driver import run_search

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "BudgetKind",
    "CompressionPolicy",
    "CostModel",
    "DataConfig",
    "ExportReport",
    "ImportanceCriterion",
    "LayerKnobs",
    "LayerPolicy",
    "ModelGraph",
    "PolicyCost",
    "SearchConfig",
    "analyze",
    "apply_policy",
    "build_model",
    "build_policy",
    "enforce_budget",
    "export_compressed",
    "export_onnx",
    "export_qdq",
    "fill_budget",
    "layer_importance",
    "load_compressed",
    "load_config",
    "load_dataset",
    "materialize",
    "measure_latency",
    "run_search",
    "score_policy",
    "uniform_policy",
]


def __getattr__(name: str) -> Any:
    if name == "run_search":  # Ray is loaded when a search is run, not on import
        from ajpq.run.driver import run_search

        return run_search
    raise AttributeError(f"module 'ajpq' has no attribute {name!r}")
