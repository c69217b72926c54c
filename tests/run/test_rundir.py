"""The run folder owns every file name; a folder of another schema is refused in one line."""

import json

import pytest

from ajpq.run.rundir import (
    RUN_SCHEMA,
    RunDir,
    RunDirError,
    latest_run,
    mark_latest,
    run_base_name,
    runs_folder,
)
from ajpq.search.config import SearchConfig


def test_names_pointer_and_latest(tmp_path):
    config = SearchConfig.from_dict({"output_dir": str(tmp_path), "agent": {"seed": 3}})
    base = runs_folder(config)
    assert base == tmp_path / run_base_name(config) == tmp_path / "digits_cnn-digits-size0.1-s3"
    folder = RunDir.new(base)
    folder.path.mkdir(parents=True)
    names = {p.name for p in (folder.context, folder.journal, folder.best_policy, folder.records)}
    assert names == {"context", "journal.sqlite", "best_policy.json", "records.json"}
    assert latest_run(base) is None
    mark_latest(base, folder.write_pointer("abc123"))
    assert latest_run(base) == folder
    assert folder.parent_run_id() == "abc123"
    assert json.loads(folder.pointer.read_text())["schema"] == RUN_SCHEMA


def test_a_folder_of_another_schema_is_refused(tmp_path):
    folder = RunDir(tmp_path / "old")
    folder.path.mkdir()
    folder.pointer.write_text(json.dumps({"run_dir": str(folder.path), "parent_run_id": "x"}))
    with pytest.raises(RunDirError, match="run folder schema 1, this version reads"):
        folder.parent_run_id()
    (tmp_path / "latest.json").write_text(folder.pointer.read_text())
    with pytest.raises(RunDirError, match="start a new run"):
        latest_run(tmp_path)
    with pytest.raises(RunDirError, match="holds no run.json"):
        RunDir(tmp_path / "empty").parent_run_id()


def test_methods_name_their_runs():
    assert run_base_name(SearchConfig.from_dict({"method": "tpe"})).endswith("-tpe")
    named = SearchConfig.from_dict({"tracking": {"run_name": "mine"}})
    assert run_base_name(named) == "mine"
