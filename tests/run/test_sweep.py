"""Sweeps: Tune trials that are whole searches, nested MLflow runs, Pareto front, resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ajpq.run.sweep import run_sweep
from ajpq.search.pareto import dominates, pareto_front
from ajpq.search.sweep_config import load_sweep

CHEAP = {"scorer": "ajpq.task.scoring:sleep_scorer", "scorer_args": {"min_s": 0.05, "max_s": 0.15}}


TWO_BY_TWO = {"budget.value": [0.125, 0.0625], "agent.seed": [0, 1]}


def _sweep_file(
    search_config_file, tmp_path: Path, episodes: int, grid: dict | None = None, **sweep
) -> Path:
    path = search_config_file(
        agent={"episodes": episodes, "warmup_episodes": 2, "env_runners": 1},
        evaluator={"num_evaluators": 1, **CHEAP},
    )
    data = yaml.safe_load(path.read_text())
    data["sweep"] = {
        "name": "t",
        "grid": grid or TWO_BY_TWO,
        **sweep,
    }
    sweep_path = tmp_path / "sweep.yaml"
    sweep_path.write_text(yaml.safe_dump(data))
    return sweep_path


def _runs(client: MlflowClient, experiment: str, query: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=query, max_results=5000)


def test_pareto_front_is_the_non_dominated_set():
    points = [(0.9, 2.0), (0.8, 4.0), (0.85, 3.0), (0.7, 3.5), (0.9, 1.0), (0.8, 4.0)]
    front = pareto_front(points, lambda p: p)
    assert front == [(0.9, 2.0), (0.85, 3.0), (0.8, 4.0)]
    assert not any(dominates(q, p) for p in front for q in points)
    assert all(any(dominates(f, p) or f == p for f in front) for p in points)


@pytest.mark.ray
def test_two_by_two_sweep_nests_tags_and_finds_the_front(ray_session, search_config_file, tmp_path):
    config = load_sweep(_sweep_file(search_config_file, tmp_path, episodes=4))
    outcome = run_sweep(config)
    assert outcome.errors == 0
    client = MlflowClient(config.base.tracking.uri)
    experiment = config.base.tracking.experiment
    sweeps = _runs(client, experiment, "tags.`ajpq.role` = 'sweep'")
    assert [run.info.run_id for run in sweeps] == [outcome.sweep_run_id]
    assert sweeps[0].info.status == "FINISHED"
    searches = _runs(client, experiment, f"tags.mlflow.parentRunId = '{outcome.sweep_run_id}'")
    assert len(searches) == 4
    assert {(r.data.tags["budget.value"], r.data.tags["agent.seed"]) for r in searches} == {
        ("0.125", "0"),
        ("0.125", "1"),
        ("0.0625", "0"),
        ("0.0625", "1"),
    }
    assert all(r.info.status == "FINISHED" for r in searches)
    policies = _runs(
        client,
        experiment,
        f"tags.`ajpq.sweep` = '{outcome.sweep_run_id}' and tags.`ajpq.role` = 'policy'",
    )
    assert len(policies) >= 4
    for run in policies:
        tags = run.data.tags
        parent = next(s for s in searches if s.info.run_id == tags["mlflow.parentRunId"])
        assert tags["model"] == "digits_cnn" and tags["dataset"] == "digits"
        assert tags["method"] == "ddpg" and tags["budget_kind"] == "size"
        assert tags["budget_value"] == parent.data.tags["budget.value"].rstrip("0")
        assert tags["seed"] == parent.data.tags["agent.seed"]
        first_layer = {k.rsplit("/", 1)[1] for k in run.data.metrics if k.startswith("layers/00.")}
        assert first_layer == {"sparsity", "wbits", "abits"}
    # the Pareto artifact: its front is non-dominated among all policies, each trial's best is in
    artifacts = {a.path for a in client.list_artifacts(outcome.sweep_run_id)}
    assert {"pareto.csv", "pareto.png", "trials.csv"} <= artifacts
    pareto = Path(client.download_artifacts(outcome.sweep_run_id, "pareto.csv"))
    rows = list(csv.DictReader(pareto.read_text().splitlines()))
    every = [(r.data.metrics["accuracy"], r.data.metrics["compression_ratio"]) for r in policies]
    front = [
        (float(r["accuracy"]), float(r["compression_ratio"]))
        for r in rows
        if r["front_ratio"] == "True"
    ]
    assert front and not any(dominates(p, f) for f in front for p in every)
    bests = {r["search_run_id"] for r in rows if r["trial_best"] == "True"}
    assert bests == {s.info.run_id for s in searches}
    for search in searches:
        children = [p for p in policies if p.data.tags["mlflow.parentRunId"] == search.info.run_id]
        top = max(p.data.metrics["accuracy"] for p in children)
        row = next(
            r
            for r in rows
            if r["search_run_id"] == search.info.run_id and r["trial_best"] == "True"
        )
        assert float(row["accuracy"]) == pytest.approx(top)
    assert len(outcome.trials) == 4


def test_sweep_killed_midway_resumes_without_rerunning_or_rescoring(search_config_file, tmp_path):
    """SIGKILL the sweep (driver and its local Ray) once a trial has finished, then --resume:
    the finished trial is not rerun, every trial's search ends FINISHED, no policy twice."""
    # three trials, one at a time: one finishes before the kill, two run on --resume
    grid = {"budget.value": [0.125, 0.0625, 0.03125]}
    path = _sweep_file(search_config_file, tmp_path, episodes=6, grid=grid, max_concurrent_trials=1)
    config = load_sweep(path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "ajpq.cli", "sweep", "--config", str(path)]
    first = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = MlflowClient(config.base.tracking.uri)
    experiment = config.base.tracking.experiment
    deadline = time.time() + 600
    finished = []
    while time.time() < deadline and not finished:
        time.sleep(2)
        try:
            finished = _runs(
                client, experiment, "tags.`ajpq.role` = 'search' and attributes.status = 'FINISHED'"
            )
        except Exception:  # noqa: BLE001 - the experiment may not exist yet
            finished = []
    assert finished, "no trial finished in time"
    time.sleep(12)  # let Tune write its experiment state with the finished trial
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    finished_ids = _runs(
        client, experiment, "tags.`ajpq.role` = 'search' and attributes.status = 'FINISHED'"
    )
    before = {
        run.info.run_id: len(
            _runs(client, experiment, f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        )
        for run in finished_ids
    }
    second = subprocess.run(
        command + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    sweep = json.loads(
        (Path(config.base.output_dir).resolve() / "sweeps" / "t" / "latest.json").read_text()
    )
    searches = _runs(client, experiment, f"tags.mlflow.parentRunId = '{sweep['sweep_run_id']}'")
    assert len(searches) == 3, [s.data.tags for s in searches]  # no trial started twice
    assert all(s.info.status == "FINISHED" for s in searches)
    policies = _runs(
        client,
        experiment,
        f"tags.`ajpq.sweep` = '{sweep['sweep_run_id']}' and tags.`ajpq.role` = 'policy'",
    )
    keys = [(p.data.tags["mlflow.parentRunId"], p.data.tags["ajpq.policy_key"]) for p in policies]
    assert len(keys) == len(set(keys))  # no policy scored (recorded) twice within a search
    for run_id, count in before.items():  # a finished trial was not rerun: nothing new in it
        children = [p for p in policies if p.data.tags["mlflow.parentRunId"] == run_id]
        assert len(children) == count
    assert client.get_run(sweep["sweep_run_id"]).info.status == "FINISHED"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sweep.grid.agent.seed=[0, -1]", "sweep.grid.agent.seed[1]: agent.seed: must be greater"),
        ("sweep.grid.agent.sed=[0]", "sweep.grid.agent.sed[0]: unknown key agent.sed"),
        ("sweep.grid.agent.seed=[]", "sweep.grid.agent.seed: must have at least 1 item"),
        (
            "sweep.random.agent.actor_lr={normal: [1, 2]}",
            "sweep.random.agent.actor_lr: give a list",
        ),
        (
            "sweep.random.agent.actor_lr={loguniform: [0, 1.0e-3]}",
            "agent.actor_lr: must be greater",
        ),
        ("sweep.random.agent.seed=[3]", "sweep.random: agent.seed is in grid too"),
        ("sweep.bogus=1", "unknown key sweep.bogus; known keys here: grid"),
        ("sweep.max_concurrent_trials=0", "sweep.max_concurrent_trials: must be greater than or"),
    ],
)
def test_bad_sweep_files_fail_before_anything_starts(
    search_config_file, tmp_path, capsys, override, message
):
    from ajpq.cli import main

    path = _sweep_file(search_config_file, tmp_path, episodes=2)
    assert main(["sweep", "--config", str(path), "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_sweep_file_is_not_a_search_and_back(search_config_file, tmp_path, capsys):
    from ajpq.cli import main

    assert main(["search", "--config", str(_sweep_file(search_config_file, tmp_path, 2))]) == 2
    assert "is a sweep" in capsys.readouterr().err
    assert main(["sweep", "--config", str(search_config_file())]) == 2
    assert "has no sweep: section" in capsys.readouterr().err
