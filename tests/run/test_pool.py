import uuid

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


def _oom_config(search_config_file, tmp_path, times):
    return load_config(
        search_config_file(
            evaluator={
                "num_evaluators": 2,
                "max_retries": 1,
                "scorer": "ajpq.task.scoring:oom_scorer",
                # a tag no earlier run used (tests seed ``random``): its markers start empty
                "scorer_args": {"tag": uuid.uuid4().int % 10**12, "times": times},
            },
        ),
        ["agent.failed_reward=-3.0"],
    )


def test_an_out_of_memory_once_is_retried_on_another_evaluator(
    ray_session, search_config_file, tmp_path
):
    config = _oom_config(search_config_file, tmp_path, times=1)
    context, tracker, parent, pool, refs = _pool(config)
    try:
        policy = build_policy(context.model, context.graph, LayerKnobs(0.2, 4, 8)).to_json()
        record = ray.get(pool.evaluate.remote(policy))
        ray.get(pool.flush.remote())
        stats = ray.get(pool.summary.remote())["stats"]
    finally:
        ray.kill(pool)
    assert not record["failed"] and not record["infra_failed"] and record["accuracy"] > 0
    assert stats["retries"] == 1 and stats["infra_failed"] == 0 and stats["scored"] == 1
    children = tracker.child_runs(parent)
    assert [c.data.tags["ajpq.status"] for c in children] == ["ok"]


def test_an_infrastructure_failure_is_no_verdict(ray_session, search_config_file, tmp_path):
    """Out of memory on every attempt: ``infra_failed``, no failed_reward, not cached (scored
    again in the same search and after --resume, where the real score replaces it)."""
    config = _oom_config(search_config_file, tmp_path, times=4)  # two evaluations' attempts
    context, splits = prepare_context(config)
    source = publish_context(context, data_source_for(config, splits))
    tracker = Tracker(config.tracking.uri, config.tracking.experiment)
    parent = tracker.start_search("infra-test", {}, {})
    journal = str(tmp_path / "journal.sqlite")
    policy = build_policy(context.model, context.graph, LayerKnobs(0.2, 4, 8)).to_json()
    pool = EvaluatorPool.remote(source, parent, journal)
    try:
        first = ray.get(pool.evaluate.remote(policy))
        second = ray.get(pool.evaluate.remote(policy))
        ray.get(pool.flush.remote())
        summary = ray.get(pool.summary.remote())
        records = ray.get(pool.all_records.remote())
    finally:
        ray.kill(pool)
    for record in (first, second):
        assert record["infra_failed"] and record["failed"] and not record["cached"]
        assert record["reward"] == 0.0  # never the failed_reward
        assert "OutOfMemoryError" in record["error"]
    assert summary["stats"]["infra_failed"] == 2 and summary["stats"]["failed"] == 0
    assert summary["best"] is None and [r.episode for r in records] == [1, 2]
    statuses = [c.data.tags["ajpq.status"] for c in tracker.child_runs(parent)]
    assert statuses == ["infra_failed", "infra_failed"]
    # --resume: the journal does not hold it as scored; this time the device has room
    pool = EvaluatorPool.remote(source, parent, journal)
    try:
        third = ray.get(pool.evaluate.remote(policy))
        ray.get(pool.flush.remote())
        stats = ray.get(pool.summary.remote())["stats"]
    finally:
        ray.kill(pool)
    assert not third["cached"] and not third["failed"] and third["episode"] == 3
    assert stats["scored"] == 1 and stats["retries"] == 0
    statuses = sorted(c.data.tags["ajpq.status"] for c in tracker.child_runs(parent))
    assert statuses == ["infra_failed", "infra_failed", "ok"]
    # and a third pool finds the real score in the journal: cached, nothing scored
    pool = EvaluatorPool.remote(source, parent, journal)
    try:
        fourth = ray.get(pool.evaluate.remote(policy))
    finally:
        ray.kill(pool)
    assert fourth["cached"] and fourth["accuracy"] == third["accuracy"]
