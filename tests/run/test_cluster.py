"""Searches on a local multi-node Ray cluster whose worker nodes share no disk with the driver.

The worker nodes run in their own mount namespaces with the test's whole temporary tree (the
driver's run folders, working directories, model cache, MLflow files) hidden behind an empty
tmpfs (``isolated_cluster.py``); each has one fake GPU and the head has none, so evaluators that
ask for half a GPU can only run where the driver's files are invisible. Records go to an MLflow
tracking server over HTTP, as on a real cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ajpq.core.budget import Budget, budget_value
from ajpq.core.cost import CostModel
from ajpq.core.policy import CompressionPolicy
from ajpq.search.config import load_config
from ajpq.search.context import SearchContext

from .isolated_cluster import IsolatedCluster, namespaces_available

pytestmark = [
    pytest.mark.ray,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not namespaces_available(), reason="needs root and mount namespaces"),
]

SCRIPT = Path(__file__).with_name("cluster_search.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Head (no GPU) + two worker nodes (one fake GPU each) that cannot see the test's files."""
    hidden = tmp_path_factory.getbasetemp()
    logs = Path(tmp_path_factory.mktemp("cluster-logs"))
    with IsolatedCluster(hidden, logs, workers=2, worker_cpus=2, worker_gpus=1) as running:
        yield running


def test_search_on_nodes_without_the_drivers_disk(
    cluster, search_config_file, tracking_server, tmp_path
):
    config_path = search_config_file(
        agent={"episodes": 14, "warmup_episodes": 14, "env_runners": 2},
        evaluator={"num_evaluators": 4, "num_cpus": 1, "num_gpus": 0.5, "torch_threads": 1},
        tracking={"uri": tracking_server, "experiment": "cluster"},
    )
    # the workers cannot see the driver's files: prove it from a worker node's own view
    assert tmp_path.is_relative_to(cluster.hidden)
    out = tmp_path / "outcome.json"
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(config_path), str(out), cluster.address],
        capture_output=True,
        text=True,
        timeout=840,
        cwd=work,
        env={**cluster.env, "RAY_DEDUP_LOGS": "0"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outcome = json.loads(out.read_text())
    records = json.loads((Path(outcome["run_dir"]) / "records.json").read_text())
    assert outcome["episodes"] == len(records) >= 14
    # the driver's prepared context exists on its disk, and no worker node can read it
    assert outcome["driver_sees_context"]
    assert outcome["worker_views"] and not any(v["exists"] for v in outcome["worker_views"])
    # every policy was scored successfully, although one evaluator was SIGKILLed on a worker
    assert outcome["killed"], "the watcher saw no moment with work left to kill into"
    assert outcome["killed"]["node_id"] != outcome["head"]
    assert outcome["stats"]["failed"] == 0 and not any(r["failed"] for r in records)
    # the head orchestrates: pretraining / fp32 reference / importance, the final report and
    # the export finetune ran on worker nodes (where the evaluators' GPUs are), never the head
    ran_on = {**outcome["ran_on"], "export": outcome["export_ran_on"]}
    assert {"prepare", "report", "export"} <= set(ran_on)
    assert all(w["node_id"] != outcome["head"] for w in ran_on.values()), ran_on
    assert all(w["node_id"] in outcome["nodes"] for w in ran_on.values())
    assert outcome["stats"]["replaced"] >= 1
    # every evaluation ran on a worker node (they hold the GPUs), with the GPU ids Ray gave it
    workers = {node for node in outcome["nodes"] if node != outcome["head"]}
    assert len(workers) == 2
    assert {r["node_id"] for r in records} <= workers
    assert all(
        r["gpu_ids"] and r["cuda_visible_devices"] == ",".join(r["gpu_ids"]) for r in records
    )
    assert all(r["latency_device"] == "cpu" for r in records)  # fake GPUs: no CUDA behind them

    # everything reached the tracking server: one child run per record, the best policy artifact
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("cluster")
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{outcome['parent_run_id']}'",
    )
    assert len(children) == len(records)
    parent = client.get_run(outcome["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert "best_test_accuracy" in parent.data.metrics
    best = CompressionPolicy.load(outcome["best_policy_path"])
    context = SearchContext.load(Path(outcome["run_dir"]) / "context")
    budget = load_config(config_path).budget
    spent = budget_value(best, Budget(budget.kind, budget.value), CostModel(context.graph))
    assert spent <= budget.value + 1e-9


def test_search_py_the_way_ray_submit_runs_it(cluster, model_cache, tmp_path):
    """``ray submit`` runs ``python ~/search.py ARGS`` in the head's home folder: the README's
    arguments, a relative config path, default tracking, from another working directory."""
    home = tmp_path / "home"
    home.mkdir()
    script = home / "search.py"
    script.write_text((REPO / "search.py").read_text())  # ray submit copies the file
    env = {**cluster.env, "RAY_ADDRESS": cluster.address, "AJPQ_CACHE": str(model_cache)}
    # the context goes through storage every node mounts (outside the hidden tree) this time
    shared = Path(tempfile.mkdtemp(prefix="ajpq-shared-", dir="/var/tmp"))
    assert not shared.is_relative_to(cluster.hidden)
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            "--config",
            "tune_configs/digits_demo.yaml",
            "--set",
            "ray_address=auto",
            "--set",
            "evaluator.num_gpus=0.5",
            "--set",
            "agent.episodes=4",
            "--set",
            "agent.warmup_episodes=4",
            "--set",
            "scoring.finetune.steps=5",
            "--set",
            f"context_uri={shared}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=home,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "best policy" in done.stdout
    # relative locations were resolved on the driver's side: the head's home folder
    assert (home / "mlflow.db").exists()
    assert list((home / "ajpq_runs").glob("*/*/records.json"))
    assert len(list(shared.glob("*/context.pt"))) == 1
    shutil.rmtree(shared, ignore_errors=True)
