"""``ajpq sync <run dir>``: push the journaled records that never reached MLflow (a tracking
server that was down, a crash before the writer caught up) into the search's parent run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from ajpq.run.journal import JOURNAL_FILE, Journal
from ajpq.run.preflight import check_tracking_uri
from ajpq.run.tracking import Tracker
from ajpq.search.config import SearchConfig

__all__ = ["sync_run"]

logger = logging.getLogger(__name__)


def sync_run(run_dir: str | Path) -> tuple[int, int]:
    """Write every unwritten journal record to MLflow (once: a record already there is not
    written again). Returns (pushed now, still waiting)."""
    run_dir = Path(run_dir)
    journal_path = run_dir / JOURNAL_FILE
    if not journal_path.exists() or not (run_dir / "run.json").exists():
        raise FileNotFoundError(
            f"{run_dir} holds no {JOURNAL_FILE} and run.json: give a search's run folder "
            "(ajpq_runs/<run>/<time>)"
        )
    parent_run_id = json.loads((run_dir / "run.json").read_text())["parent_run_id"]
    config = SearchConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    check_tracking_uri(config.tracking.uri)
    tracker = Tracker.for_search(config)
    journal = Journal(journal_path)
    pushed = 0
    try:
        for record, policy_json in journal.unwritten():
            run_id = tracker.write_once(parent_run_id, policy_json, record)
            journal.mark_written(record.policy_key, run_id)
            pushed += 1
        return pushed, journal.waiting()
    finally:
        journal.close()
