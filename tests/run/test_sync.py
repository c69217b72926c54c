"""``ajpq sync``: journal records that never reached MLflow are pushed once, from the run folder."""

import json

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ajpq.core.analysis import analyze
from ajpq.core.builder import uniform_policy
from ajpq.run.journal import Journal
from ajpq.run.rundir import RunDir
from ajpq.run.sync import sync_run
from ajpq.run.tracking import Tracker
from ajpq.search.config import SearchConfig
from ajpq.search.record import PolicyRecord
from ajpq.task.models import build_model


def _run_folder(tmp_path, records: int) -> tuple[RunDir, SearchConfig, str]:
    import torch

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = SearchConfig.from_dict(
        {"tracking": {"uri": uri, "experiment": "sync"}, "output_dir": str(tmp_path / "runs")}
    )
    folder = RunDir(tmp_path / "runs" / "r" / "t")
    folder.path.mkdir(parents=True)
    folder.config.write_text(yaml.safe_dump(config.to_dict()))
    parent = Tracker.for_search(config).start_search("r", {}, {})
    folder.write_pointer(parent)
    model = build_model("digits_cnn", 10, 1)
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    journal = Journal(folder.journal)
    for episode in range(1, records + 1):
        policy = uniform_policy(graph, 2 + episode, 8, "digits_cnn")
        record = PolicyRecord(policy_key=f"k{episode}", episode=episode, accuracy=0.9)
        journal.append(record, policy.to_json())
    journal.close()
    return folder, config, parent


def test_sync_pushes_each_waiting_record_once(tmp_path):
    folder, config, parent = _run_folder(tmp_path, records=2)
    assert sync_run(folder.path) == (2, 0)
    assert sync_run(folder.path) == (0, 0)
    client = MlflowClient(config.tracking.uri)
    children = client.search_runs(
        [client.get_experiment_by_name("sync").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}'",
    )
    assert sorted(run.data.tags["ajpq.policy_key"] for run in children) == ["k1", "k2"]


def test_sync_refuses_what_is_not_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no journal.sqlite"):
        sync_run(tmp_path)
    folder, _, _ = _run_folder(tmp_path, records=1)
    state = json.loads(folder.pointer.read_text())
    folder.pointer.write_text(json.dumps({**state, "schema": 1}))
    with pytest.raises(FileNotFoundError, match="another ajpq version"):
        sync_run(folder.path)
