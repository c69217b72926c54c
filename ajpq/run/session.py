"""An open search run: its folder, MLflow parent run, prepared context, tracker and data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ajpq.run.rundir import RunDir
from ajpq.run.tracking import Tracker
from ajpq.search.context import SearchContext
from ajpq.task.data import DataSplits

__all__ = ["OpenRun"]


@dataclass
class OpenRun:
    """What the driver, the method runners and the report share about one run."""

    folder: RunDir
    parent_run_id: str
    context: SearchContext
    tracker: Tracker
    splits: DataSplits

    @property
    def run_dir(self) -> Path:
        return self.folder.path
