"""What a search asks Ray for: one placement-group bundle layout (driver, env runners,
evaluators), a local Ray sized for it, and the check that some node can host an evaluator."""

from __future__ import annotations

import logging
import math
import os
import time

import ray

from ajpq.search.config import SearchConfig

logger = logging.getLogger(__name__)


__all__ = [
    "ENV_RUNNER_CPUS",
    "check_resources",
    "ensure_ray",
    "evaluator_bundle",
    "local_num_cpus",
    "search_bundles",
]


def evaluator_bundle(config: SearchConfig, index: int) -> int:
    """Evaluator ``index``'s bundle in a placement group laid out by
    ``:func:`search_bundles```: bundle 0 is the search's driver (a sweep's trial),
    1..R the env runners (where RLlib puts env runner i), then one per evaluator."""
    return 1 + config.agent.env_runners + index


ENV_RUNNER_CPUS = 0.05


def search_bundles(config: SearchConfig, driver_cpus: float = 1.0) -> list[dict[str, float]]:
    """The resources of one search as placement-group bundles: its driver (the agent learns
    there), each env runner (RLlib puts env runner i in bundle i), each evaluator
    (``evaluators.evaluator_bundle``)."""
    ev = config.evaluator
    evaluator = {"CPU": ev.num_cpus, **({"GPU": ev.num_gpus} if ev.num_gpus else {})}
    return [
        {"CPU": driver_cpus},
        *[{"CPU": ENV_RUNNER_CPUS} for _ in range(config.agent.env_runners)],
        *[dict(evaluator) for _ in range(ev.num_evaluators)],
    ]


def local_num_cpus(config: SearchConfig) -> int:
    """Logical CPUs for a local Ray: at least the cores, and enough that every evaluator and env
    runner can be scheduled (env runners mostly wait on evaluators, so they reserve little)."""
    needed = (
        config.evaluator.num_evaluators * config.evaluator.num_cpus
        + config.agent.env_runners * ENV_RUNNER_CPUS
    )
    return max(os.cpu_count() or 1, math.ceil(needed + 0.5))


def ensure_ray(config: SearchConfig, local_cpus: int | None = None) -> None:
    """Connect to ``ray_address``, or start a Ray of our own with ``ray_num_cpus``, else
    ``local_cpus``, else what one search needs (:func:`local_num_cpus`)."""
    if not ray.is_initialized():
        local = config.ray_address is None
        cpus = config.ray_num_cpus or local_cpus or local_num_cpus(config)
        ray.init(
            # without ray_address: always a Ray of our own, even when another one runs here
            address="local" if local else config.ray_address,
            num_cpus=cpus if local else None,
            include_dashboard=False,
            log_to_driver=False,
            namespace="ajpq",
        )


def check_resources(config: SearchConfig) -> None:
    """Some node must be able to host one evaluator. On a Ray of our own that is known now; on
    a cluster an autoscaler may still add nodes, so wait ``evaluator.start_timeout_s`` first.
    Otherwise the evaluators would wait forever: say what is missing instead."""
    ev = config.evaluator
    need = {"CPU": ev.num_cpus, "GPU": ev.num_gpus}
    wait_s = 0.0 if config.ray_address is None else ev.start_timeout_s
    deadline = time.time() + wait_s
    while True:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if any(all(r.get(k, 0.0) >= v for k, v in need.items() if v > 0) for r in nodes):
            return
        if time.time() >= deadline:
            break
        time.sleep(2.0)
    largest = {k: max((r.get(k, 0.0) for r in nodes), default=0.0) for k in need}
    waited = f" (waited {wait_s:.0f} s for nodes to join)" if wait_s else ""
    raise ValueError(
        f"no node can host an evaluator with evaluator.num_cpus={ev.num_cpus:g}, "
        f"evaluator.num_gpus={ev.num_gpus:g}: the largest node has {largest['CPU']:g} CPUs and "
        f"{largest['GPU']:g} GPUs{waited}; lower the request or add such nodes"
    )
