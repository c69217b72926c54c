"""The public face outlives the move to floors: every name a notebook used, the notebook names
added with it, and the specs users have in configs and run folders."""

import subprocess
import sys

import ajpq
from ajpq.search.config import SearchConfig
from ajpq.task import scoring
from ajpq.task.scoring import load_scorer

BEFORE_THE_FLOORS = [
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
FOR_NOTEBOOKS = [
    "export_onnx",
    "build_model",
    "load_dataset",
    "score_policy",
    "DataConfig",
    "load_config",
    "run_search",
]


def test_every_name_is_public_and_resolves():
    for name in BEFORE_THE_FLOORS + FOR_NOTEBOOKS:
        assert name in ajpq.__all__
        assert getattr(ajpq, name) is not None
    from ajpq.run.driver import run_search

    assert ajpq.run_search is run_search


def test_importing_ajpq_does_not_start_ray():
    code = "import sys, ajpq; print('ray' in sys.modules, 'mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_specs_in_configs_and_run_folders_keep_working():
    from ajpq.export import load_compressed

    assert load_compressed is ajpq.load_compressed
    assert load_scorer("ajpq.scoring:score_policy") is scoring.score_policy
    assert load_scorer("ajpq.scoring:sleep_scorer") is scoring.sleep_scorer
    assert load_scorer("ajpq.scoring:chaos_scorer") is scoring.chaos_scorer
    config = SearchConfig.from_dict({"evaluator": {"scorer": "ajpq.scoring:sleep_scorer"}})
    assert load_scorer(config.evaluator.scorer) is scoring.sleep_scorer
