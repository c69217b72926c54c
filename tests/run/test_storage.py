"""Run folders on storage that outlives the machine (output_dir as a URI): a local copy pushed
as it changes, a consistent journal, and --resume on a machine that has none of it."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from mlflow.tracking import MlflowClient

from ajpq.run.driver import run_search
from ajpq.run.journal import Journal
from ajpq.run.storage import RunMirror
from ajpq.search.config import load_config


def test_the_mirror_pushes_what_changed_and_pulls_it_back(tmp_path):
    remote = tmp_path / "remote"
    mirror = RunMirror(f"file://{remote}", tmp_path / "here", every_s=3600)
    (mirror.local / "run" / "a.txt").parent.mkdir(parents=True)
    (mirror.local / "run" / "a.txt").write_text("one")
    (mirror.local / "run" / "b.txt").write_text("two")
    db = sqlite3.connect(mirror.local / "run" / "journal.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x INTEGER)")
    db.execute("INSERT INTO t VALUES (1)")  # still in the WAL file: the copy must have it
    assert mirror.push() == 3
    assert mirror.push() == 0  # nothing changed
    (mirror.local / "run" / "a.txt").write_text("one, changed")
    db.execute("INSERT INTO t VALUES (2)")
    assert mirror.push() == 2
    assert (remote / "run" / "a.txt").read_text() == "one, changed"
    assert not (remote / "run" / "journal.sqlite-wal").exists()
    copy = sqlite3.connect(remote / "run" / "journal.sqlite")
    assert [row[0] for row in copy.execute("SELECT x FROM t")] == [1, 2]
    db.close()
    copy.close()
    # another machine: nothing local, the tree comes down
    elsewhere = RunMirror(f"file://{remote}", tmp_path / "there")
    assert elsewhere.pull("run") == 3 and elsewhere.pull("missing") == 0
    assert (elsewhere.local / "run" / "b.txt").read_text() == "two"
    assert elsewhere.push() == 0  # what was pulled is not pushed back


@pytest.mark.ray
def test_a_search_on_a_uri_resumes_on_a_machine_without_its_files(
    ray_session, search_config_file, tmp_path, monkeypatch
):
    remote = tmp_path / "remote"
    path = search_config_file(
        agent={"episodes": 4, "warmup_episodes": 2, "env_runners": 1},
        evaluator={"num_evaluators": 1},
        output_dir=f"file://{remote}",
    )
    monkeypatch.setenv("AJPQ_MIRROR_DIR", str(tmp_path / "pod1"))
    first = run_search(load_config(path))
    base = remote / "digits_cnn-digits-size0.1-s0"
    run_dir = base / first.run_dir.name
    assert (base / "latest.json").exists() and (run_dir / "best_compressed.pt").exists()
    journal = Journal(run_dir / "journal.sqlite")
    assert len(journal.records()) == first.episodes
    journal.close()
    shutil.rmtree(tmp_path / "pod1")  # the pod is gone; a new one resumes from the storage
    monkeypatch.setenv("AJPQ_MIRROR_DIR", str(tmp_path / "pod2"))
    second = run_search(load_config(path, ["agent.episodes=6"]), resume=True)
    assert second.parent_run_id == first.parent_run_id
    assert second.run_dir.is_relative_to(tmp_path / "pod2")  # worked in the new pod's copy
    client = MlflowClient(load_config(path).tracking.uri)
    experiment = client.get_experiment_by_name("test")
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{first.parent_run_id}'",
    )
    keys = [run.data.tags["ajpq.policy_key"] for run in children]
    assert len(keys) == len(set(keys)) == second.episodes >= first.episodes
    journal = Journal(run_dir / "journal.sqlite")  # the storage's copy has the resumed records
    assert len(journal.records()) == second.episodes
    journal.close()
