"""The sample-efficiency levers end to end on digits (cheap scorer: orchestration), recorded
in MLflow; the accuracy predictor on a tiny real search's records."""

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from ajpq.core.policy import CompressionPolicy
from ajpq.run.driver import run_search
from ajpq.search.config import load_config
from ajpq.search.predictor import AccuracyPredictor, policy_features

pytestmark = pytest.mark.ray

CHEAP = {"scorer": "ajpq.task.scoring:sleep_scorer", "scorer_args": {"min_s": 0.02, "max_s": 0.05}}


def test_the_levers_run_a_ddpg_search_together_and_are_recorded(ray_session, search_config_file):
    levers = {"prior": "uniform", "prior_steps": 200, "reward_normalize": True, "screen": 3}
    config = load_config(
        search_config_file(agent={"episodes": 16, "warmup_episodes": 4, **levers}, evaluator=CHEAP)
    )
    outcome = run_search(config)
    assert not outcome.interrupted and outcome.best is not None
    assert outcome.episodes + outcome.stats["cache_hits"] >= 16
    params = MlflowClient(config.tracking.uri).get_run(outcome.parent_run_id).data.params
    for key, value in levers.items():
        assert params[f"agent.{key}"] == str(value)
    assert outcome.stats["screened"] > 0  # past 8 records, proposals were passed over unscored


def test_the_predictor_ranks_held_out_records_of_a_tiny_search(ray_session, search_config_file):
    config = load_config(
        search_config_file(
            method="random",
            budget={"kind": "size", "value": 0.25},
            agent={"episodes": 32, "seed": 3},
        )
    )
    outcome = run_search(config)
    records = json.loads((outcome.run_dir / "records.json").read_text())
    client = MlflowClient(config.tracking.uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("test").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'",
        max_results=100,
    )
    by_episode = {
        int(r.data.metrics["episode"]): CompressionPolicy.load(
            client.download_artifacts(r.info.run_id, "policy.json")
        )
        for r in runs
    }
    rows = sorted((r["episode"], r["accuracy"]) for r in records if not r["failed"])
    x = np.stack([policy_features(by_episode[e]) for e, _ in rows])
    y = np.array([a for _, a in rows])
    model = AccuracyPredictor.fit(x[:20], y[:20])
    rho = stats.spearmanr(model.predict(x[20:]), y[20:])[0]
    assert rho > 0, rho
