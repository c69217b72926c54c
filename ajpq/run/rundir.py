"""The run folder: the one owner of every file name a search writes on the driver's disk.

``<output_dir>/<run base name>/latest.json`` points at the newest run of a config; each run is
``<output_dir>/<run base name>/<time>/`` with its context, journal, checkpoints, records, best
policy and export. ``run.json`` carries the folder's schema version: a folder written by an
older layout is refused with one line instead of failing half-way through a resume.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ajpq.run.storage import RunMirror
from ajpq.search.config import Method, SearchConfig

__all__ = [
    "RUN_SCHEMA",
    "RunDir",
    "RunDirError",
    "latest_pointer",
    "latest_run",
    "mark_latest",
    "run_base_name",
    "runs_folder",
]

RUN_SCHEMA = 2  # bump when a run folder's files change incompatibly
LATEST = "latest.json"


class RunDirError(ValueError):
    """A run folder that is missing, incomplete or written by another schema."""


@dataclass(frozen=True)
class RunDir:
    """One search's folder and the names of everything in it."""

    path: Path

    @classmethod
    def new(cls, base: Path) -> RunDir:
        return cls(base / time.strftime("%Y%m%d-%H%M%S"))

    # -- the files ---------------------------------------------------------------------------
    @property
    def context(self) -> Path:
        return self.path / "context"

    @property
    def pointer(self) -> Path:
        """``run.json``: the MLflow parent run and the schema version."""
        return self.path / "run.json"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def journal(self) -> Path:
        return self.path / "journal.sqlite"

    @property
    def records(self) -> Path:
        return self.path / "records.json"

    @property
    def best_policy(self) -> Path:
        return self.path / "best_policy.json"

    @property
    def plot(self) -> Path:
        return self.path / "search.png"

    @property
    def plots(self) -> Path:
        """The trade-off plots (accuracy vs BitOps, vs latency)."""
        return self.path / "plots"

    @property
    def stepwise_base(self) -> Path:
        return self.path / "stepwise_base.json"

    @property
    def compressed(self) -> Path:
        return self.path / "compressed.pt"

    @property
    def best_model(self) -> Path:
        """The best policy's compressed file as the search made it (``ajpq export`` makes the
        longer-finetuned ``compressed.pt``)."""
        return self.path / "best_compressed.pt"

    @property
    def best_model_onnx(self) -> Path:
        """Its ONNX (``tracking.model_onnx``)."""
        return self.path / "best_compressed.onnx"

    @property
    def fidelity(self) -> Path:
        """The proxy's rank correlations and the re-scored policies (ajpq.run.fidelity)."""
        return self.path / "fidelity.json"

    @property
    def best_model_report(self) -> Path:
        return self.path / "best_compressed.json"

    @property
    def onnx(self) -> Path:
        return self.path / "compressed.onnx"

    @property
    def export_report(self) -> Path:
        return self.path / "export.json"

    def checkpoint(self, name: str = "checkpoint") -> Path:
        return self.path / name

    # -- the pointer -------------------------------------------------------------------------
    def write_pointer(self, parent_run_id: str) -> str:
        """Write ``run.json`` (and return its text, for ``latest.json``)."""
        text = json.dumps(
            {"run_dir": str(self.path), "parent_run_id": parent_run_id, "schema": RUN_SCHEMA}
        )
        self.pointer.write_text(text)
        return text

    def record_placement(self, step: str, where: dict) -> None:
        """Note in ``run.json`` where a step's device work ran (``ran_on``: step -> node)."""
        state = json.loads(self.pointer.read_text())
        state.setdefault("ran_on", {})[step] = where
        tmp = self.pointer.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.pointer)

    def placements(self) -> dict[str, dict]:
        """``run.json``'s ``ran_on``: where each step's device work ran."""
        if not self.pointer.exists():
            return {}
        return json.loads(self.pointer.read_text()).get("ran_on", {})

    def parent_run_id(self) -> str:
        """The MLflow parent run of this folder; RunDirError when the folder is not a run's or
        was written by another schema."""
        if not self.pointer.exists():
            raise RunDirError(f"{self.path} holds no run.json: give a search's run folder")
        state = json.loads(self.pointer.read_text())
        check_schema(state, self.path)
        return str(state["parent_run_id"])


def check_schema(state: dict, where: Path) -> None:
    """Refuse a run folder (or ``latest.json``) that another schema wrote."""
    schema = state.get("schema", 1)
    if schema != RUN_SCHEMA:
        raise RunDirError(
            f"{where} was written by another ajpq version (run folder schema {schema}, this "
            f"version reads {RUN_SCHEMA}); start a new run (drop --resume) or use that version"
        )


def run_base_name(config: SearchConfig) -> str:
    """The folder (and MLflow run) name of a config's runs."""
    if config.tracking.run_name:
        return config.tracking.run_name
    model = re.sub(r"[^A-Za-z0-9_.-]", "-", config.model)  # package.module:factory too
    name = f"{model}-{config.data.name.value}-{config.budget.kind.value}{config.budget.value:g}-s{config.agent.seed}"
    return name if config.method is Method.DDPG else f"{name}-{config.method.value}"


def runs_folder(config: SearchConfig) -> Path:
    """Where the runs of ``config`` live: one folder per run, plus ``latest.json``."""
    return Path(config.output_dir).resolve() / run_base_name(config)


def latest_pointer(base: Path) -> Path:
    return base / LATEST


def mark_latest(base: Path, pointer_text: str) -> None:
    """Point ``latest.json`` under ``base`` at the run whose ``run.json`` text is given."""
    latest_pointer(base).write_text(pointer_text)


def latest_run(base: Path) -> RunDir | None:
    """The newest run under ``base`` (a config's runs folder or a sweep's), or None; a pointer
    written by another schema raises RunDirError."""
    latest = latest_pointer(base)
    if not latest.exists():
        return None
    state = json.loads(latest.read_text())
    check_schema(state, latest)
    path = Path(state["run_dir"])
    if not path.exists() and (base / path.name).exists():  # the runs folder moved (a mirror)
        path = base / path.name
    return RunDir(path)


def pull_latest(mirror: RunMirror, base_name: str) -> None:
    """Bring the latest run of ``base_name`` (its pointer and its folder) from the mirror's
    storage into its local copy, for ``--resume`` on a machine that has none of it."""
    if not mirror.pull(f"{base_name}/{LATEST}"):
        return
    state = json.loads((mirror.local / base_name / LATEST).read_text())
    mirror.pull(f"{base_name}/{Path(state['run_dir']).name}")
