"""Send a search or a sweep to a running Ray cluster through the Ray Jobs API.

The job's runtime environment carries the project (the ``ajpq`` package and ``tune_configs``)
and the config file, staged into one small working directory, so the cluster runs the code and
config of the machine that submitted it (nothing is read from the submitter's disk later).
"""

from __future__ import annotations

import logging
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ajpq.core.configtypes import parse
from ajpq.core.redact import redact
from ajpq.search.config import SearchConfig, apply_overrides, find_config, read_mapping
from ajpq.search.sweep_config import parse_sweep_section

__all__ = ["SubmittedJob", "submit_job", "entrypoint_for", "DEFAULT_JOB_OUTPUT_DIR"]

logger = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[2]
DEFAULT_JOB_OUTPUT_DIR = "~/ajpq_runs"  # on the head; the job's working dir is temporary
DEFAULT_JOB_TRACKING_URI = "sqlite:///$HOME/mlflow.db"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
STAGED_CONFIG = "submitted"


@dataclass
class SubmittedJob:
    job_id: str
    address: str
    entrypoint: str
    status: str | None = None
    logs: str = ""


def entrypoint_for(config_path: Path, overrides: list[str]) -> tuple[str, str]:
    """The job's command (``ajpq sweep`` for a file with a ``sweep:`` section, else ``ajpq
    search``) for the config staged at ``submitted/<name>``; connects to the cluster."""
    _, raw = read_mapping(config_path)
    command = "sweep" if isinstance(raw, dict) and "sweep" in raw else "search"
    sets = ["ray_address=auto"]
    tracking = any(o.startswith("tracking.uri=") for o in overrides) or (
        isinstance(raw, dict) and (raw.get("tracking") or {}).get("uri")
    )
    given = str(raw.get("output_dir") or "") if isinstance(raw, dict) else ""
    pinned = given.startswith(("/", "~")) or any(o.startswith("output_dir=") for o in overrides)
    if not pinned:  # a relative folder would land in the job's temporary working dir
        sets.append(f"output_dir={DEFAULT_JOB_OUTPUT_DIR}")
    sets.extend(overrides)
    parts = ["python", "-m", "ajpq.cli", command, "--config", f"{STAGED_CONFIG}/{config_path.name}"]
    for item in sets:
        parts += ["--set", item]
    line = " ".join(shlex.quote(p) for p in parts)
    if not tracking:  # the head's tracking server if the cluster files set one, else SQLite
        line = f'MLFLOW_TRACKING_URI="${{MLFLOW_TRACKING_URI:-{DEFAULT_JOB_TRACKING_URI}}}" {line}'
    return command, line


def _submission_error(address: str, error: Exception) -> str:
    address = redact(address)
    text = redact(str(error).splitlines()[0])[:200]
    if "uthentication" in type(error).__name__ + text:
        return (
            f"the Ray cluster at {address} wants its token: export RAY_AUTH_MODE=token (with "
            "the cluster's token in ~/.ray/auth_token) or RAY_AUTH_TOKEN=<token>"
        )
    return (
        f"no Ray Jobs API at {address} ({text}); give the head's dashboard address, e.g. "
        "http://127.0.0.1:8265 through an SSH tunnel"
    )


def _check_schema(config_path: Path, overrides: list[str]) -> None:
    """Keys, types and ranges are checked here, before anything is sent; what the config
    names on disk (data, weights) is checked on the cluster, where it must exist."""
    _, raw = read_mapping(config_path)
    raw = apply_overrides(raw, overrides)
    sweep = raw.pop("sweep", None)
    parse(SearchConfig, raw)
    if sweep is not None:
        parse_sweep_section(sweep)


def _refuse_secrets_in_the_entrypoint(config_path: Path, overrides: list[str]) -> None:
    """The job's entrypoint is shown by ``ray job list`` and the dashboard: a password in a
    ``--set`` value (a tracking URI with ``user:password@``) would be shown to every viewer."""
    for override in overrides:
        if redact(override) != override:
            key = override.split("=", 1)[0]
            raise ValueError(
                f"--set {key}=...: the value holds a credential, which the job's entrypoint "
                "would show to everyone who can list the cluster's jobs; put it in the cluster's "
                "environment instead (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for "
                "MLflow) and give the URI without it"
            )


def _stage(config_path: Path, folder: Path) -> Path:
    """The project's code and configs plus the given config file, nothing else (no run
    folders, no MLflow files, no virtual environment)."""
    shutil.copytree(PROJECT / "ajpq", folder / "ajpq", ignore=shutil.ignore_patterns("__pycache__"))
    if (PROJECT / "tune_configs").is_dir():
        shutil.copytree(PROJECT / "tune_configs", folder / "tune_configs")
    for name in ("pyproject.toml", "search.py"):
        if (PROJECT / name).exists():
            shutil.copy2(PROJECT / name, folder / name)
    (folder / STAGED_CONFIG).mkdir()
    shutil.copy2(config_path, folder / STAGED_CONFIG / config_path.name)
    return folder


def submit_job(
    address: str,
    config: str | Path,
    overrides: list[str] | None = None,
    wait: bool = False,
    timeout_s: float = 24 * 3600.0,
) -> SubmittedJob:
    """Submit the search or sweep in ``config`` to the Ray cluster whose dashboard is at
    ``address`` (``http://head:8265``); with ``wait``, poll until it ends and fetch its logs."""
    from ray.job_submission import JobSubmissionClient

    config_path = find_config(config)
    overrides = list(overrides or [])
    _check_schema(config_path, overrides)
    _refuse_secrets_in_the_entrypoint(config_path, overrides)
    _, entrypoint = entrypoint_for(config_path, overrides)
    try:
        client = JobSubmissionClient(address)
    except Exception as error:  # noqa: BLE001 - one line for the user, not a traceback
        raise ValueError(_submission_error(address, error)) from None
    with tempfile.TemporaryDirectory(prefix="ajpq-job-") as staging:
        working_dir = _stage(config_path, Path(staging))
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint,
                runtime_env={"working_dir": str(working_dir)},
                metadata={"ajpq.config": config_path.name},
            )
        except Exception as error:  # noqa: BLE001 - one line for the user
            raise ValueError(_submission_error(address, error)) from None
    job = SubmittedJob(job_id, redact(address), entrypoint)
    logger.info("submitted %s to %s: %s", job_id, redact(address), entrypoint)
    if not wait:
        return job
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        job.status = str(client.get_job_status(job_id).value)
        if job.status in TERMINAL:
            break
        time.sleep(2.0)
    job.logs = client.get_job_logs(job_id)
    return job
