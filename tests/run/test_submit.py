"""``ajpq submit``: a sweep sent through the Ray Jobs API to a running ``ray start --head``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ajpq.cli import main
from ajpq.run.submit import entrypoint_for

HEAD_IP = "127.0.0.6"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HEAD_IP, 0))
        return sock.getsockname()[1]


def test_entrypoint_runs_the_right_command_against_the_cluster(tmp_path):
    search = tmp_path / "s.yaml"
    search.write_text("model: digits_cnn\n")
    sweep = tmp_path / "w.yaml"
    sweep.write_text("model: digits_cnn\nsweep:\n  grid:\n    agent.seed: [0, 1]\n")
    command, line = entrypoint_for(search, [])
    assert command == "search" and "ajpq.cli search --config submitted/s.yaml" in line
    assert "--set ray_address=auto" in line and "--set 'output_dir=~/ajpq_runs'" in line
    assert line.startswith('MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-')
    command, line = entrypoint_for(sweep, ["tracking.uri=http://mlflow:5000", "output_dir=/x"])
    assert command == "sweep" and "MLFLOW" not in line.split(" python")[0]
    assert "output_dir=~" not in line and "--set tracking.uri=http://mlflow:5000" in line
    search.write_text("model: digits_cnn\noutput_dir: /data/runs\n")  # a folder on the head
    assert "output_dir" not in entrypoint_for(search, [])[1]


def test_bad_submissions_fail_before_anything_is_sent(tmp_path, capsys):
    sweep = tmp_path / "w.yaml"
    sweep.write_text("model: digits_cnn\nsweep:\n  grdi: {}\n")
    assert main(["submit", "--address", "http://127.0.0.1:9", "--config", str(sweep)]) == 2
    assert "unknown key sweep.grdi" in capsys.readouterr().err
    sweep.write_text("model: digits_cnn\n")
    assert main(["submit", "--address", "http://127.0.0.1:9", "--config", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert "no Ray Jobs API at http://127.0.0.1:9" in err and "Traceback" not in err


@pytest.fixture
def ray_head(tmp_path):
    """A separate ``ray start --head`` with its dashboard (the Jobs API) on loopback."""
    port, dashboard = _free_port(), _free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ['PATH']}",  # the job's `python` is this one
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            f"--node-ip-address={HEAD_IP}",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            "--num-cpus=4",
            "--num-gpus=0",
            "--disable-usage-stats",
            "--block",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=5)
            break
        except urllib.error.HTTPError:  # it answers (asks for the token): up
            break
        except OSError:  # not up yet
            if time.time() > deadline or head.poll() is not None:
                raise
            time.sleep(2)
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def test_sweep_submitted_through_the_jobs_api_succeeds_and_records(
    ray_head, search_config_file, tmp_path
):
    """As a user would: ``ajpq submit --wait`` from another process, the cluster's token in
    its environment; the job runs the sweep on the cluster and ends SUCCEEDED."""
    address, env = ray_head
    path = search_config_file(
        agent={"episodes": 3, "warmup_episodes": 3, "env_runners": 1},
        evaluator={
            "num_evaluators": 1,
            "scorer": "ajpq.task.scoring:sleep_scorer",
            "scorer_args": {"min_s": 0.05, "max_s": 0.1},
        },
    )
    data = yaml.safe_load(path.read_text())
    data["sweep"] = {"name": "job", "grid": {"agent.seed": [0, 1]}}
    sweep = tmp_path / "job_sweep.yaml"
    sweep.write_text(yaml.safe_dump(data))
    done = subprocess.run(
        [sys.executable, "-m", "ajpq.cli", "submit", "--address", address, "--config", str(sweep)]
        + ["--wait"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "SUCCEEDED" in done.stdout
    client = MlflowClient(data["tracking"]["uri"])
    experiment = client.get_experiment_by_name(data["tracking"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    roles = [run.data.tags.get("ajpq.role") for run in runs]
    assert roles.count("sweep") == 1 and roles.count("search") == 2
    assert roles.count("policy") >= 2
    assert (Path(data["output_dir"]) / "sweeps" / "job" / "latest.json").exists()
