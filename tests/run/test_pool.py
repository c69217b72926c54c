import pytest
import ray
from mlflow.tracking import MlflowClient

from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.run.context_source import publish_context
from ajpq.run.pool import EvaluatorPool
from ajpq.run.tracking import Tracker
from ajpq.search.config import load_config
from ajpq.search.context import data_source_for, prepare_context
from ajpq.search.record import METRIC_FIELDS, TAG_FIELDS, TIMESTAMP_FIELDS

pytestmark = pytest.mark.ray


def _pool(config):
    context, splits = prepare_context(config)
    refs = (publish_context(context, data_source_for(config, splits)),)
    tracker = Tracker(config.tracking.uri, config.tracking.experiment)
    parent = tracker.start_search("pool-test", {}, {})
    pool = EvaluatorPool.remote(*refs, parent)
    return context, tracker, parent, pool, refs


def test_pool_caches_identical_policies_and_records_divergence(
    ray_session, search_config_file, tmp_path
):
    config = load_config(
        search_config_file(
            evaluator={"num_evaluators": 1}, scoring={"finetune": {"lr": 1.0e6, "steps": 5}}
        ),
        ["agent.failed_reward=-2.0", "agent.reward_scale=0.5"],
    )
    context, tracker, parent, pool, refs = _pool(config)
    try:
        policy = build_policy(context.model, context.graph, LayerKnobs(0.2, 4, 8)).to_json()
        first = ray.get(pool.evaluate.remote(policy))
        second = ray.get(pool.evaluate.remote(policy))
        ray.get(pool.flush.remote())
        stats = ray.get(pool.summary.remote())["stats"]
        (where,) = ray.get(pool.wait_ready.remote())
    finally:
        ray.kill(pool)
    assert first["failed"] and first["reward"] == pytest.approx(-1.0)  # failed_reward x scale
    assert not first["cached"] and second["cached"] and second["episode"] == first["episode"] == 1
    assert stats["scored"] == 1 and stats["cache_hits"] == 1 and stats["failed"] == 1
    # num_gpus 0: the evaluator hides CUDA from itself and never initialises it
    assert where["gpu_ids"] == [] and where["device"] == "cpu"
    assert where["cuda_visible_devices"] == "" and where["cuda_initialized"] is False
    children = tracker.child_runs(parent)
    assert len(children) == 1
    assert children[0].data.tags["ajpq.status"] == "failed"
    assert (
        MlflowClient(config.tracking.uri).get_run(children[0].info.run_id).info.status == "FAILED"
    )
    # a new pool on the same parent (what --resume does) knows the record and scores nothing
    pool = EvaluatorPool.remote(*refs, parent)
    try:
        again = ray.get(pool.evaluate.remote(policy))
        assert again["cached"] and ray.get(pool.summary.remote())["stats"]["scored"] == 0
    finally:
        ray.kill(pool)
    # the record came back from MLflow as the same PolicyRecord it went in as
    for name in (*METRIC_FIELDS, *TAG_FIELDS, *TIMESTAMP_FIELDS, "policy_key", "failed", "error"):
        if isinstance(first[name], float):
            assert again[name] == pytest.approx(first[name]), name
        else:
            assert again[name] == first[name], name
    assert again["run_id"] == children[0].info.run_id
