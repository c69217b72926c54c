"""Checks made before a search creates anything: where its files and records go (pinned on
the driver), that the tracking server answers, that the output folder is writable, that the
budget is reachable."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ajpq.core.budget import enforce_budget
from ajpq.core.builder import uniform_policy
from ajpq.core.cost import CostModel
from ajpq.run.storage import is_uri
from ajpq.run.tracking import redact_uri
from ajpq.search.config import SearchConfig
from ajpq.search.context import SearchContext

__all__ = [
    "DEFAULT_TRACKING_URI",
    "check_budget",
    "check_tracking_uri",
    "check_writable",
    "resolve_locations",
]


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_locations(config: SearchConfig) -> SearchConfig:
    """Pin what is relative to the driver: the output folder and the tracking URI.

    No ``tracking.uri``: ``$MLFLOW_TRACKING_URI`` (the cluster files set it to the head's
    tracking server), else ``sqlite:///mlflow.db``. A relative SQLite path becomes absolute
    here, on the driver, so the database never lands on whichever node an actor runs on."""
    uri = config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).expanduser().resolve())
    elif "://" not in uri:  # a plain folder: MLflow's file store
        uri = str(Path(uri).resolve())
    return dataclasses.replace(
        config,
        tracking=dataclasses.replace(config.tracking, uri=uri),
        output_dir=config.output_dir
        if is_uri(config.output_dir)
        else str(Path(config.output_dir).expanduser().resolve()),
    )


def check_tracking_uri(uri: str, timeout_s: float = 10.0) -> None:
    """A tracking server must answer before anything is created (MLflow's own client would
    retry for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as reply:
            if reply.status == 200:
                return
            problem = f"HTTP {reply.status}"
    except (urllib.error.URLError, OSError) as error:
        problem = str(getattr(error, "reason", error))
    raise ValueError(
        f"tracking URI {redact_uri(uri)} does not answer ({problem}); start the MLflow server "
        "or pass another --tracking-uri"
    )


def check_writable(folder: Path) -> None:
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(f"output_dir: cannot write into {existing}; choose another output_dir")


def check_budget(context: SearchContext) -> None:
    """An unreachable budget raises ValueError naming the smallest reachable value."""
    config = context.config
    enforce_budget(
        uniform_policy(context.graph, 8, 8, config.model),
        config.budget,
        CostModel(context.graph),
        context.importance,
        context.latency_model,
    )
