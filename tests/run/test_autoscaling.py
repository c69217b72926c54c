"""Ask, do not poll: on a cluster whose GPU workers an autoscaler starts on demand (Ray's own
autoscaler with the ``fake_multinode`` provider, the head without GPUs, ``min_workers: 0``),
``search.py`` run as ``ray submit`` runs it reserves its evaluators, the autoscaler starts a
GPU worker for them, and all the device work runs there; a request that no node type can meet
fails in seconds with one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .autoscaling_cluster import AutoscalingCluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def autoscaling(tmp_path_factory: pytest.TempPathFactory):
    with AutoscalingCluster(tmp_path_factory.mktemp("autoscaler")) as cluster:
        yield cluster


def _submit(cluster, config_path: Path, model_cache: Path, home: Path, *sets: str):
    """``ray submit`` copies search.py to the head and runs it there."""
    home.mkdir(exist_ok=True)
    script = home / "search.py"
    script.write_text((REPO / "search.py").read_text())
    args = [a for s in (f"ray_address={cluster.address}", *sets) for a in ("--set", s)]
    started = time.time()
    done = subprocess.run(
        [sys.executable, str(script), "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=480,
        cwd=home,
        env={**cluster.env, "AJPQ_CACHE": str(model_cache)},
    )
    return done, time.time() - started


def test_the_search_asks_the_autoscaler_for_its_gpu_evaluators(
    autoscaling, search_config_file, model_cache, tmp_path
):
    assert autoscaling.nodes() == 1  # the head alone: nothing has asked for a GPU yet
    config_path = search_config_file(
        agent={"episodes": 6, "warmup_episodes": 6, "env_runners": 1},
        evaluator={"num_evaluators": 2, "num_cpus": 1, "num_gpus": 0.5, "torch_threads": 1},
    )
    done, _ = _submit(autoscaling, config_path, model_cache, tmp_path / "home")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    # the wait said what it waited for, and the autoscaler started the GPU worker
    assert "waiting for 2 evaluator(s) of 1 CPU, 0.5 GPU" in output, output[-3000:]
    assert autoscaling.nodes() >= 2
    (run_dir,) = [p.parent for p in (tmp_path / "runs").rglob("run.json")]
    records = json.loads((run_dir / "records.json").read_text())
    assert len(records) == 6 and not any(r["failed"] for r in records)
    # evaluators ran where Ray gave them half a GPU: only the started worker has GPUs
    assert all(r["gpu_ids"] for r in records)
    workers = {r["node_id"] for r in records}
    # pretraining / fp32 reference / importance and the final report ran there too
    ran_on = json.loads((run_dir / "run.json").read_text())["ran_on"]
    assert {"prepare", "report"} <= set(ran_on)
    assert all(where["node_id"] in workers for where in ran_on.values()), ran_on


def test_a_request_no_node_type_offers_fails_in_seconds(
    autoscaling, search_config_file, model_cache, tmp_path
):
    config_path = search_config_file(
        evaluator={"num_evaluators": 1, "num_cpus": 1, "num_gpus": 2},
    )
    done, seconds = _submit(autoscaling, config_path, model_cache, tmp_path / "home")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "no node type of this cluster can host an evaluator with 1 CPU, 2 GPU" in last
    assert "Traceback" not in done.stderr
    assert seconds < 90
