"""Know the proxy: a search re-scores a fixed-seed sample of its policies with the long
recipe, logs the rank correlation on its parent run and the long score on the re-scored
children, and chooses its best policy by the long score."""

from __future__ import annotations

import dataclasses
import math

import pytest
from mlflow.tracking import MlflowClient

from ajpq.core.budget import Budget
from ajpq.run.driver import run_search
from ajpq.run.fidelity import best_by_long_score, choose_policies, rank_correlations
from ajpq.search.config import load_config
from ajpq.search.record import PolicyRecord


def _record(key: str, accuracy: float, failed: bool = False) -> PolicyRecord:
    return PolicyRecord(
        policy_key=key, accuracy=accuracy, reward=accuracy, compression_ratio=10.0, failed=failed
    )


def test_the_sample_is_the_top_k_plus_a_seeded_draw_of_the_rest():
    records = [_record(f"p{i}", i / 10) for i in range(10)] + [_record("bad", 0.99, failed=True)]
    budget = Budget("size", 0.125)  # every record (10x) meets it
    chosen = choose_policies(records, top_k=2, random_k=3, seed=0, budget=budget)
    keys = [r.policy_key for r in chosen]
    assert keys[:2] == ["p9", "p8"] and len(set(keys)) == 5 and "bad" not in keys
    assert keys == [r.policy_key for r in choose_policies(records, 2, 3, 0, budget)]
    assert keys != [r.policy_key for r in choose_policies(records, 2, 3, 1, budget)]


def test_only_policies_that_meet_the_budget_are_candidates():
    """A stepwise search's pruning stage scores policies above the budget (and often better):
    the end-of-search re-scoring never picks one of them as the search's best."""
    within = [_record(f"p{i}", 0.5 + i / 100) for i in range(4)]  # 10x: meets 1/8
    above = [
        PolicyRecord(policy_key=f"big{i}", accuracy=0.9, reward=0.9, compression_ratio=4.0)
        for i in range(3)
    ]
    budget = Budget("size", 0.125)
    chosen = choose_policies(within + above, top_k=3, random_k=2, seed=0, budget=budget)
    assert [r.policy_key for r in chosen][:3] == ["p3", "p2", "p1"]
    assert not any(r.policy_key.startswith("big") for r in chosen)
    latency = Budget("latency", 2.0)
    timed = [dataclasses.replace(r, latency_ms=1.0 + i) for i, r in enumerate(within)]
    assert [r.policy_key for r in choose_policies(timed, 4, 0, 0, latency)] == ["p1", "p0"]


def test_rank_correlations():
    assert rank_correlations([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx((1.0, 1.0))
    assert rank_correlations([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx((-1.0, -1.0))
    assert all(math.isnan(v) for v in rank_correlations([1, 2], [1, 2]))
    assert all(math.isnan(v) for v in rank_correlations([1, 2, 3], [5, 5, 5]))


def test_the_best_by_long_score_is_the_smallest_among_equals_and_skips_diverged():
    small = dataclasses.replace(_record("small", 0.5), compression_ratio=20.0)
    chosen = [_record("a", 0.9), small, _record("nan", 0.99)]
    assert best_by_long_score(chosen, [0.8, 0.8, float("nan")]).policy_key == "small"
    assert best_by_long_score(chosen, [0.81, 0.8, float("nan")]).policy_key == "a"
    assert best_by_long_score(chosen, [float("nan")] * 3).policy_key == "a"  # all diverged


@pytest.mark.ray
def test_a_search_logs_its_proxy_fidelity_and_picks_the_best_long_score(
    ray_session, search_config_file
):
    path = search_config_file(
        agent={"episodes": 6, "warmup_episodes": 3, "env_runners": 1},
        evaluator={"num_evaluators": 1},
        scoring={"fidelity": {"top_k": 2, "random_k": 2}, "long_steps": 30},
    )
    config = load_config(path)
    outcome = run_search(config)
    fidelity = outcome.fidelity
    assert fidelity is not None and fidelity["steps"] == 30 and len(fidelity["rows"]) == 4
    client = MlflowClient(config.tracking.uri)
    parent = client.get_run(outcome.parent_run_id)
    if not math.isnan(fidelity["spearman"]):
        assert parent.data.metrics["proxy_rank_corr"] == pytest.approx(fidelity["spearman"])
    assert parent.data.metrics["proxy_rescored"] == 4
    rows = {row["policy_key"]: row for row in fidelity["rows"]}
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'",
    )
    rescored = [c for c in children if c.data.tags.get("ajpq.rescored") == "true"]
    assert len(rescored) == 4
    for child in rescored:
        row = rows[child.data.tags["ajpq.policy_key"]]
        assert child.data.metrics["accuracy"] == pytest.approx(row["accuracy"])
        assert child.data.metrics["long_accuracy"] == pytest.approx(row["long_accuracy"])
    best_long = max(row["long_accuracy"] for row in fidelity["rows"])
    assert rows[outcome.best.policy_key]["long_accuracy"] == best_long
    assert (outcome.run_dir / "fidelity.json").exists()
