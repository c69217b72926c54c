"""A sweep's shared experience (``sweep.share_experience``): its trials search one model on
one dataset with one scoring, so they share what they learn. The folder (on the sweep's node,
where every trial's driver and pool run) holds

- ``scores.sqlite``: a journal of every scored policy of every trial; a trial's pool looks a
  policy up there before scoring it, so no policy is scored twice across the sweep;
- ``agent/``: the DDPG agent (networks, optimizers, replay buffer, reward baseline) of the last
  trial that finished; the next trial starts from it (without random warm-up). The budget is in
  the agent's observation, so transitions of one budget teach the others.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

__all__ = ["EXPERIENCE", "SharedExperience", "write_agent"]

logger = logging.getLogger(__name__)

EXPERIENCE = "experience"  # <sweep dir>/experience/


class SharedExperience:
    """The shared folder of a sweep's trials (see the module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @property
    def scores(self) -> Path:
        return self.folder / "scores.sqlite"

    @property
    def agent_path(self) -> Path:
        return self.folder / "agent"

    def agent(self) -> Path | None:
        """The agent an earlier trial left, if any."""
        return self.agent_path if (self.agent_path / "algorithm_state.pkl").exists() else None

    def share_agent(self, algo: Any) -> Path:
        """Leave ``algo`` for the next trial."""
        write_agent(algo, self.agent_path)
        logger.info("agent shared with the sweep's next trials: %s", self.agent_path)
        return self.agent_path


def write_agent(algo: Any, final: Path) -> None:
    """Save ``algo`` to ``final`` atomically: a crash or a full disk leaves the previous one
    and no half-written one (OSError when it cannot be written)."""
    tmp = final.with_name(f"{final.name}.tmp")
    old = final.with_name(f"{final.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        algo.save_to_path(str(tmp))
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
