"""What may change between a run and its ``--resume``: the config fields marked
:data:`~ajpq.core.configtypes.RESUMABLE` (how long, how parallel, where things go); every other
setting must match the saved run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ajpq.core.configtypes import resumable_keys
from ajpq.search.config import SearchConfig

__all__ = ["ResumeError", "check_same_search", "flatten"]


class ResumeError(ValueError):
    """Nothing to resume, or the previous run is incompatible."""


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config mapping as dotted keys (``scorer_args`` stays one value)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "scorer_args":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_search(saved: SearchConfig, given: SearchConfig, run_dir: Path) -> None:
    """A checkpoint only continues the search it came from."""
    may_change = resumable_keys(SearchConfig)
    before, now = flatten(saved.to_dict()), flatten(given.to_dict())
    for key in sorted(set(before) | set(now)):
        if key not in may_change and before.get(key) != now.get(key):
            raise ResumeError(
                f"--resume: the run in {run_dir} was started with {key}={before.get(key)!r}, "
                f"not {now.get(key)!r}; resume with the run's own setting or start a new run"
            )
