"""Which failures are the infrastructure's (out of memory, a lost node, a scorer that cannot
be imported there) rather than a policy's verdict: the pool retries them elsewhere and never
rewards or caches them."""

from __future__ import annotations

import torch
from ray.exceptions import RayError, RayTaskError

__all__ = ["INFRA_ABORT_AFTER", "INFRA_CAUSES", "is_infra_error"]

INFRA_ABORT_AFTER = 5  # this many infrastructure failures in a row stop the search too
INFRA_CAUSES = (MemoryError, ImportError, torch.OutOfMemoryError)


def is_infra_error(error: BaseException) -> bool:
    """Whether an evaluation's exception is the infrastructure's (out of memory on the device
    or the host, a scorer that cannot be imported there, a lost object or worker), not the
    policy's."""
    if not isinstance(error, RayTaskError):
        return isinstance(error, RayError)  # a lost object, a dead worker, Ray's OOM killer
    cause = error.cause
    if isinstance(cause, INFRA_CAUSES):
        return True
    text = str(cause if cause is not None else error).lower()
    return "out of memory" in text or "cuda error" in text
