"""The head orchestrates: every piece of work that needs a device (pretraining, the fp32
reference accuracies, the importance pass, the final test report, the export finetune) runs
as a Ray task with an evaluator's resources, so on a GPU worker when evaluators ask for GPUs.
Each returns where it ran (:class:`Placement`), which the run folder and MLflow record."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import ray
import torch
from ray.exceptions import RayTaskError

from ajpq.run.evaluator import assigned_device
from ajpq.run.reservation import Reservation
from ajpq.search.config import SearchConfig

__all__ = ["Placement", "run_on_evaluator"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """Where one step ran: its Ray node, host and device."""

    step: str
    node_id: str
    node: str
    device: str
    pid: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tag(self) -> str:
        return f"{self.device} on node {self.node_id} ({self.node})"


def _run(
    step: str, threads: int, share: float, fn: Callable[..., Any], args: tuple
) -> tuple[Any, Placement]:
    torch.set_num_threads(max(1, threads))
    device, label = assigned_device(share)
    result = fn(device, *args)
    where = Placement(
        step, ray.get_runtime_context().get_node_id(), socket.gethostname(), label, os.getpid()
    )
    return result, where


def run_on_evaluator(
    config: SearchConfig,
    step: str,
    fn: Callable[..., Any],
    *args: Any,
    reservation: Reservation | None = None,
) -> tuple[Any, Placement]:
    """``fn(device, *args)`` as a Ray task with one evaluator's resources (in the search's
    first evaluator bundle when it holds a reservation); its result and where it ran. A
    ValueError raised there (bad input) arrives here as itself, one line."""
    ev = config.evaluator
    options: dict[str, Any] = {
        "num_cpus": ev.num_cpus,
        "num_gpus": ev.num_gpus,
        "name": f"ajpq-{step}",
        "max_retries": 1,  # a lost node: once more, elsewhere
    }
    if reservation is not None:
        options["scheduling_strategy"] = reservation.strategy(0)
    task = ray.remote(_run).options(**options)
    try:
        result, where = ray.get(task.remote(step, ev.torch_threads, ev.num_gpus or 1.0, fn, args))
    except RayTaskError as error:
        if isinstance(error.cause, ValueError):
            raise ValueError(str(error.cause)) from None
        raise
    logger.info("%s ran on %s", step, where.tag())
    return result, where
