"""Every search method and precision mode through the same env, pool, wall and MLflow records
(digits, cheap scorer: orchestration, not accuracy)."""

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ajpq.core.budget import Precision, budget_value, check_precision
from ajpq.core.cost import CostModel
from ajpq.core.policy import CompressionPolicy
from ajpq.run.driver import run_search
from ajpq.run.rundir import RunDir
from ajpq.search.config import load_config
from ajpq.search.context import SearchContext

pytestmark = pytest.mark.ray

CHEAP = {"scorer": "ajpq.task.scoring:sleep_scorer", "scorer_args": {"min_s": 0.02, "max_s": 0.05}}


def _policies(config, outcome):
    client = MlflowClient(tracking_uri=config.tracking.uri)
    experiment = client.get_experiment_by_name("test")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'",
        max_results=1000,
    )
    parent = client.get_run(outcome.parent_run_id)
    policies = [
        CompressionPolicy.load(client.download_artifacts(r.info.run_id, "policy.json"))
        for r in runs
    ]
    return parent, runs, policies


@pytest.mark.parametrize("method", ["random", "tpe", "stepwise", "uniform"])
def test_each_method_searches_through_the_same_pool_and_tags_its_runs(
    ray_session, search_config_file, method
):
    config = load_config(
        search_config_file(
            method=method,
            # stepwise: a budget its pruning stage never meets, so the stage's own best is used
            budget={"kind": "size", "value": 0.05 if method == "stepwise" else 0.1},
            agent={"episodes": 8, "warmup_episodes": 3},
            evaluator=CHEAP,
            # stepwise: its end-of-search re-scoring must pass over the pruning stage's
            # policies (above the budget, and scored higher by this scorer)
            scoring={"fidelity": {"top_k": 3 if method == "stepwise" else 0, "random_k": 0}},
        )
    )
    outcome = run_search(config)
    assert not outcome.interrupted and outcome.best is not None
    parent, runs, policies = _policies(config, outcome)
    assert parent.data.tags["method"] == parent.data.tags["ajpq.method"] == method
    assert all(r.data.tags["ajpq.method"] == method for r in runs)
    costs = CostModel(SearchContext.load(outcome.run_dir / "context").graph)
    first_stage = 4 if method == "stepwise" else 0  # pruning to a budget of its own
    for run, policy in zip(runs, policies):
        if run.data.metrics["episode"] > first_stage:
            assert budget_value(policy, config.budget, costs) <= config.budget.value + 1e-9
    # the best meets the search's budget whatever the method
    assert 1 / outcome.best.compression_ratio <= config.budget.value + 1e-9
    if method == "uniform":
        # one bit width everywhere; the first evaluation already meets the budget, unpruned
        first = min(runs, key=lambda r: r.data.metrics["episode"])
        policy = policies[runs.index(first)]
        assert len({b for lp in policy.layers for b in lp.weight_bits}) == 1
        assert 0 < len(runs) <= config.agent.episodes
    else:
        assert len(runs) == outcome.episodes
        assert outcome.episodes + outcome.stats["cache_hits"] >= config.agent.episodes
    if method == "stepwise":
        base = CompressionPolicy.from_json(RunDir(outcome.run_dir).stepwise_base.read_text())
        assert {b for lp in base.layers for b in lp.weight_bits} <= {0, 8}  # pruned at 8 bits
        assert any(0 in lp.weight_bits for lp in base.layers)
        masks = [[b == 0 for b in lp.weight_bits] for lp in base.layers]
        later = [r for r in runs if r.data.metrics["episode"] > 4]
        for run in later:  # the second stage keeps the pruning, searches bits below 8
            policy = policies[runs.index(run)]
            assert [[b == 0 for b in lp.weight_bits] for lp in policy.layers] == masks
    records = json.loads((outcome.run_dir / "records.json").read_text())
    assert len(records) == len(runs)


@pytest.mark.parametrize("precision", ["layer", "fixed"])
def test_precision_modes_hold_for_every_policy(ray_session, search_config_file, precision):
    config = load_config(
        search_config_file(
            space={"precision": precision},
            agent={"episodes": 6, "warmup_episodes": 3},
            evaluator=CHEAP,
        )
    )
    outcome = run_search(config)
    parent, runs, policies = _policies(config, outcome)
    assert parent.data.tags["precision"] == precision and len(policies) == outcome.episodes
    for policy in policies:
        check_precision(policy, Precision(precision))
        widths = [{b for b in lp.weight_bits if b} for lp in policy.layers]
        assert all(len(w) == 1 for w in widths)  # layer: one bit width per layer
        if precision == "fixed":  # fixed: one for all kept channels of the network
            assert len(set().union(*widths)) == 1
    assert np.isfinite(outcome.best.accuracy)


def test_stepwise_refuses_a_latency_budget(search_config_file):
    from ajpq.search.config import ConfigError

    with pytest.raises(ConfigError, match="stepwise splits a size or bitops budget"):
        load_config(search_config_file(method="stepwise", budget={"kind": "latency", "value": 5.0}))
