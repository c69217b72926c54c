"""A search on a simulated multi-node GPU cluster, recording to an MLflow tracking server.

The two things a cluster user depends on and a laptop run never exercises: evaluators with
fractional GPUs spread over several nodes (``ray.cluster_utils.Cluster`` with fake GPUs), and
MLflow over HTTP (``mlflow server``) instead of the embedded SQLite file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ajpq.budget import Budget, budget_value
from ajpq.config import load_config
from ajpq.cost import CostModel
from ajpq.policy import CompressionPolicy
from ajpq.search.context import SearchContext

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

SCRIPT = Path(__file__).with_name("cluster_search.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def tracking_server(tmp_path: Path):
    port = _free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            pytest.fail(
                f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}"
            )
        time.sleep(0.5)
    yield uri
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=30)
    log.close()


def test_search_on_two_gpu_nodes_records_to_a_tracking_server(
    search_config_file, tracking_server, tmp_path
):
    config_path = search_config_file(
        agent={"episodes": 6, "warmup_episodes": 6, "env_runners": 2},
        evaluator={"num_evaluators": 4, "num_cpus": 1, "num_gpus": 0.5, "torch_threads": 1},
        tracking={"uri": tracking_server, "experiment": "cluster"},
    )
    out = tmp_path / "outcome.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(config_path), str(out)],
        capture_output=True,
        text=True,
        timeout=840,
        env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outcome = json.loads(out.read_text())
    records = json.loads((Path(outcome["run_dir"]) / "records.json").read_text())
    assert outcome["episodes"] == len(records) >= 6
    assert outcome["stats"]["failed"] == 0

    # every evaluation ran on a GPU node with a share of a GPU, and both GPU nodes took work
    assert len(outcome["gpu_nodes"]) == 2
    assert {r["node_id"] for r in records} == set(outcome["gpu_nodes"])
    assert all(r["gpu_ids"] for r in records)

    # everything reached the tracking server: one child run per record, the best policy artifact
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("cluster")
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{outcome['parent_run_id']}'",
    )
    assert len(children) == len(records)
    assert {c.data.tags["ajpq.node"] for c in children} == {socket.gethostname()}
    parent = client.get_run(outcome["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert "best_test_accuracy" in parent.data.metrics
    best = CompressionPolicy.load(outcome["best_policy_path"])
    context = SearchContext.load(Path(outcome["run_dir"]) / "context")
    budget = load_config(config_path).budget
    spent = budget_value(best, Budget(budget.kind, budget.value), CostModel(context.graph))
    assert spent <= budget.value + 1e-9
