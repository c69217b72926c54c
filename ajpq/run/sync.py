"""``ajpq sync <run dir>``: push the journaled records that never reached MLflow (a tracking
server that was down, a crash before the writer caught up) into the search's parent run."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from ajpq.run.journal import Journal
from ajpq.run.preflight import check_tracking_uri
from ajpq.run.rundir import RunDir, RunDirError
from ajpq.run.tracking import Tracker
from ajpq.search.config import SearchConfig

__all__ = ["sync_run"]

logger = logging.getLogger(__name__)


def sync_run(run_dir: str | Path) -> tuple[int, int]:
    """Write every unwritten journal record to MLflow (once: a record already there is not
    written again). Returns (pushed now, still waiting)."""
    folder = RunDir(Path(run_dir))
    if not folder.journal.exists():
        raise FileNotFoundError(
            f"{folder.path} holds no {folder.journal.name}: give a search's run folder "
            "(ajpq_runs/<run>/<time>)"
        )
    try:
        parent_run_id = folder.parent_run_id()
    except RunDirError as error:
        raise FileNotFoundError(str(error)) from None
    config = SearchConfig.from_dict(yaml.safe_load(folder.config.read_text()))
    check_tracking_uri(config.tracking.uri)
    tracker = Tracker.for_search(config)
    journal = Journal(folder.journal)
    pushed = 0
    try:
        for record, policy_json in journal.unwritten():
            run_id = tracker.write_once(parent_run_id, policy_json, record)
            journal.mark_written(record.policy_key, run_id)
            pushed += 1
        return pushed, journal.waiting()
    finally:
        journal.close()
