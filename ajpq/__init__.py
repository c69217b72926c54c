"""ajpq: automatic joint pruning and mixed-precision quantization (pruning = 0-bit quantization).

The compression core is plain PyTorch (no Ray, no MLflow)::

    from ajpq import analyze, build_policy, LayerKnobs, apply_policy, materialize, export_compressed
"""

from ajpq.core.analysis import analyze
from ajpq.core.apply import apply_policy
from ajpq.core.budget import Budget, BudgetKind, enforce_budget
from ajpq.core.budget.fill import fill_budget
from ajpq.core.builder import LayerKnobs, build_policy, uniform_policy
from ajpq.core.cost import CostModel, PolicyCost, measure_latency
from ajpq.core.graph import ModelGraph
from ajpq.core.importance import ImportanceCriterion, layer_importance
from ajpq.core.materialize import materialize
from ajpq.core.policy import CompressionPolicy, LayerPolicy
from ajpq.export.packed import ExportReport, export_compressed, load_compressed

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "BudgetKind",
    "CompressionPolicy",
    "CostModel",
    "ExportReport",
    "ImportanceCriterion",
    "LayerKnobs",
    "LayerPolicy",
    "ModelGraph",
    "PolicyCost",
    "analyze",
    "apply_policy",
    "build_policy",
    "enforce_budget",
    "export_compressed",
    "fill_budget",
    "layer_importance",
    "load_compressed",
    "materialize",
    "measure_latency",
    "uniform_policy",
]
