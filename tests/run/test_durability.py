"""Nothing lost: records are journaled before MLflow, a tracking-server outage delays them,
``ajpq sync`` pushes what is left, and a resumed search re-scores nothing from the journal."""

from __future__ import annotations

import threading
import time

import pytest
import ray
from mlflow.tracking import MlflowClient

from ajpq.cli import main
from ajpq.run.driver import run_search
from ajpq.run.journal import Journal
from ajpq.run.rundir import RunDir
from ajpq.search.config import load_config

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

CHEAP = {"scorer": "ajpq.task.scoring:sleep_scorer", "scorer_args": {"min_s": 0.4, "max_s": 0.8}}


def _pool_summary() -> dict | None:
    namespace = ray.get_runtime_context().namespace
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith("ajpq-pool") and actor["namespace"] == namespace:
            try:
                pool = ray.get_actor(actor["name"], namespace=namespace)
                return ray.get(pool.summary.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - the pool may be going away
                return None
    return None


def _complete_children(uri: str, experiment: str, parent_id: str) -> list:
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        max_results=1000,
    )


def test_tracking_server_down_for_30_s_loses_and_duplicates_nothing(
    ray_session, search_config_file, mlflow_server
):
    config = load_config(
        search_config_file(
            agent={"episodes": 40, "warmup_episodes": 40, "env_runners": 2},
            evaluator=CHEAP,
            tracking={"uri": mlflow_server.uri, "experiment": "outage"},
        )
    )
    outage = {}

    def take_the_server_down() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            summary = _pool_summary()
            if summary and summary["records"] >= 4:
                mlflow_server.stop()
                outage["records_at_stop"] = summary["records"]
                time.sleep(30)
                outage["records_at_start"] = (_pool_summary() or {}).get("records")
                mlflow_server.start()
                return
            time.sleep(0.2)

    thread = threading.Thread(target=take_the_server_down, daemon=True)
    thread.start()
    outcome = run_search(config)
    thread.join(timeout=120)
    assert outage, "the server was never taken down"
    # the search went on while MLflow was down, and the writer had to retry
    assert (
        outage["records_at_start"] is None or outage["records_at_start"] > outage["records_at_stop"]
    )
    assert outcome.stats["mlflow_retries"] >= 1
    assert outcome.waiting == 0 and outcome.episodes == config.agent.episodes
    children = _complete_children(mlflow_server.uri, "outage", outcome.parent_run_id)
    keys = [run.data.tags["ajpq.policy_key"] for run in children]
    assert len(keys) == len(set(keys)) == outcome.episodes  # 0 lost, 0 duplicated
    client = MlflowClient(mlflow_server.uri)
    for run in children:
        assert run.info.status == "FINISHED"
        assert {"accuracy", "reward", "size_bytes", "episode"} <= set(run.data.metrics)
        assert any(name.startswith("layers/") for name in run.data.metrics)
        artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
        assert artifacts == ["layers.json", "policy.json"]
    assert Journal(RunDir(outcome.run_dir).journal).waiting() == 0


def test_sync_pushes_journaled_records_once(ray_session, search_config_file, capsys):
    """A search whose records never reached MLflow (simulated: the journal forgets they were
    written and MLflow loses half of them): ``ajpq sync`` writes the missing ones, once."""
    config = load_config(
        search_config_file(
            agent={"episodes": 6, "warmup_episodes": 6, "env_runners": 2},
            evaluator={**CHEAP, "scorer_args": {"min_s": 0.05, "max_s": 0.1}},
        )
    )
    outcome = run_search(config)
    uri, experiment = config.tracking.uri, config.tracking.experiment
    children = _complete_children(uri, experiment, outcome.parent_run_id)
    assert len(children) == 6
    client = MlflowClient(uri)
    for run in children[:3]:
        client.delete_run(run.info.run_id)
    journal = Journal(RunDir(outcome.run_dir).journal)
    journal._db.execute("UPDATE records SET run_id = NULL")
    assert journal.waiting() == 6
    assert main(["sync", str(outcome.run_dir)]) == 0
    assert "6 records pushed to MLflow, 0 still waiting" in capsys.readouterr().out
    again = _complete_children(uri, experiment, outcome.parent_run_id)
    keys = [run.data.tags["ajpq.policy_key"] for run in again]
    assert len(keys) == len(set(keys)) == 6
    assert main(["sync", str(outcome.run_dir)]) == 0  # nothing left: a no-op
    assert len(_complete_children(uri, experiment, outcome.parent_run_id)) == 6
    assert main(["sync", str(outcome.run_dir / "nope")]) == 2


def _kill_evaluators(times: int, killed: list, stop: threading.Event) -> None:
    """SIGKILL a busy evaluator process ``times`` times, a little apart."""
    import os
    import signal

    while len(killed) < times and not stop.is_set():
        summary = _pool_summary()
        if summary and summary["records"] >= 1 + len(killed):
            namespace = ray.get_runtime_context().namespace
            name = next(
                a["name"]
                for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("ajpq-pool") and a["namespace"] == namespace
            )
            pool = ray.get_actor(name, namespace=namespace)
            try:
                where = ray.get(pool.wait_ready.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - a replacement is starting; try again
                continue
            pid = where[len(killed) % len(where)]["pid"]
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
            time.sleep(0.3)
        time.sleep(0.1)


def test_ten_evaluator_kills_lose_and_duplicate_nothing(ray_session, search_config_file):
    config = load_config(
        search_config_file(
            agent={"episodes": 80, "warmup_episodes": 80, "env_runners": 2},
            evaluator={**CHEAP, "max_retries": 4},
        )
    )
    killed: list = []
    stop = threading.Event()
    thread = threading.Thread(target=_kill_evaluators, args=(10, killed, stop), daemon=True)
    thread.start()
    outcome = run_search(config)
    stop.set()
    thread.join(timeout=60)
    assert len(killed) == 10
    assert outcome.stats["replaced"] >= 10
    assert outcome.episodes == config.agent.episodes and outcome.waiting == 0
    children = _complete_children(config.tracking.uri, "test", outcome.parent_run_id)
    keys = [run.data.tags["ajpq.policy_key"] for run in children]
    assert len(keys) == len(set(keys)) == outcome.episodes  # every policy exactly once
    journal = Journal(RunDir(outcome.run_dir).journal)
    assert set(journal.records()) == set(keys)


@pytest.mark.slow
def test_soak_200_evaluations_with_errors_and_dying_evaluators(ray_session, search_config_file):
    """4 evaluators, 10% of evaluations raise, 5% kill their process: 200 records, each once;
    the failures are recorded as failed with their error."""
    config = load_config(
        search_config_file(
            agent={"episodes": 200, "warmup_episodes": 200, "env_runners": 4},
            evaluator={
                "num_evaluators": 4,
                "num_cpus": 0.5,
                "max_retries": 1,
                "scorer": "ajpq.task.scoring:chaos_scorer",
                "scorer_args": {"error_rate": 0.1, "death_rate": 0.05, "min_s": 0.1, "max_s": 0.3},
            },
        )
    )
    outcome = run_search(config)
    assert outcome.episodes == 200 and outcome.waiting == 0
    children = _complete_children(config.tracking.uri, "test", outcome.parent_run_id)
    keys = [run.data.tags["ajpq.policy_key"] for run in children]
    assert len(keys) == len(set(keys)) == 200
    failed = [run for run in children if run.data.tags["ajpq.status"] == "failed"]
    assert outcome.stats["replaced"] >= 1 and outcome.stats["retries"] >= 10
    assert all(run.data.tags.get("ajpq.error") for run in failed)
    assert all(run.info.status == "FAILED" for run in failed)
