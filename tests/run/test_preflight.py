"""Checks before a search creates anything: paths pinned on the driver, a tracking server that
must answer, an output folder that must be writable."""

import time

import pytest

from ajpq.run.preflight import check_tracking_uri, check_writable, resolve_locations
from ajpq.search.config import SearchConfig


def test_relative_locations_are_pinned_on_the_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = resolve_locations(SearchConfig.from_dict({"output_dir": "runs"}))
    assert config.output_dir == str(tmp_path / "runs")
    assert config.tracking.uri == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://head:5000")
    assert resolve_locations(SearchConfig()).tracking.uri == "http://head:5000"


def test_an_unanswering_server_and_an_unwritable_folder_fail_in_one_line(tmp_path):
    started = time.time()
    with pytest.raises(ValueError, match=r"tracking URI http://u:\*+@127.0.0.1:9 does not answer"):
        check_tracking_uri("http://u:secret@127.0.0.1:9", timeout_s=5)
    assert time.time() - started < 10
    check_tracking_uri("sqlite:///x.db")  # nothing to ask
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(ValueError, match="cannot write into"):
        check_writable(afile / "sub")
    check_writable(tmp_path / "new" / "folder")
