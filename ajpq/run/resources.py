"""What a search asks Ray for: one placement-group bundle layout (driver, env runners,
evaluators), a local Ray sized for it, and the check that some node can host an evaluator."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import ray

from ajpq.search.config import SearchConfig

__all__ = [
    "BundleLayout",
    "bundle_layout",
    "ENV_RUNNER_CPUS",
    "alive_nodes",
    "check_resources",
    "ensure_ray",
    "evaluator_bundle",
    "local_num_cpus",
    "search_bundles",
    "some_node_fits",
]


ENV_RUNNER_CPUS = 0.05  # an env runner mostly waits on the pool: it reserves little


@dataclass(frozen=True)
class BundleLayout:
    """One search's placement-group bundles, the one layout Tune, RLlib and the pool share:
    bundle 0 is the search's driver (the agent learns there; a sweep's trial), 1..R the env
    runners (RLlib puts env runner i in bundle i), then one bundle per evaluator."""

    driver_cpus: float
    env_runners: int
    evaluators: int
    evaluator: dict[str, float]

    def bundles(self) -> list[dict[str, float]]:
        return [
            {"CPU": self.driver_cpus},
            *[{"CPU": ENV_RUNNER_CPUS} for _ in range(self.env_runners)],
            *[dict(self.evaluator) for _ in range(self.evaluators)],
        ]

    def evaluator_index(self, index: int) -> int:
        """The bundle of evaluator ``index`` (a replacement takes its predecessor's)."""
        return 1 + self.env_runners + index


def bundle_layout(config: SearchConfig, driver_cpus: float = 1.0) -> BundleLayout:
    ev = config.evaluator
    evaluator = {"CPU": ev.num_cpus, **({"GPU": ev.num_gpus} if ev.num_gpus else {})}
    return BundleLayout(driver_cpus, config.agent.env_runners, ev.num_evaluators, evaluator)


def search_bundles(config: SearchConfig, driver_cpus: float = 1.0) -> list[dict[str, float]]:
    """The resources of one search as placement-group bundles (:class:`BundleLayout`)."""
    return bundle_layout(config, driver_cpus).bundles()


def evaluator_bundle(config: SearchConfig, index: int) -> int:
    """Evaluator ``index``'s bundle in the layout of :func:`search_bundles`."""
    return bundle_layout(config).evaluator_index(index)


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


def alive_nodes() -> list[dict[str, float]]:
    """The resources of every live node."""
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def some_node_fits(need: dict[str, float], nodes: list[dict[str, float]]) -> bool:
    """Whether one of ``nodes`` could host ``need`` when idle (busy is not unmeetable)."""
    return any(all(r.get(k, 0.0) >= v for k, v in need.items() if v > 0) for r in nodes)


def check_resources(config: SearchConfig, wait_s: float | None = None) -> None:
    """Some node must be able to host one evaluator. On a Ray of our own that is known now; on
    a cluster of fixed nodes, some may still join: wait ``wait_s`` (default
    ``evaluator.start_timeout_s``) first. Otherwise the evaluators would wait forever: say
    what is missing instead. (With an autoscaler, :mod:`ajpq.run.reservation` asks it.)"""
    ev = config.evaluator
    need = {"CPU": ev.num_cpus, "GPU": ev.num_gpus}
    if wait_s is None:
        wait_s = 0.0 if config.ray_address is None else ev.start_timeout_s
    deadline = time.time() + wait_s
    while True:
        nodes = alive_nodes()
        if some_node_fits(need, nodes):
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
