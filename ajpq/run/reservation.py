"""Ask, do not poll: a search reserves its evaluators' resources as one placement group, so an
autoscaler sees the demand and starts the nodes; while they start, the wait says so.

A sweep trial already runs in its trial's placement group (Tune's demand); a standalone search
creates its own group of one bundle per evaluator and removes it at the end. Work that needs a
device before and after the evaluators (pretraining, reports, export) runs in the first
evaluator bundle, so it never asks for more than the search holds.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from ray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ajpq.run.resources import (
    alive_nodes,
    bundle_layout,
    check_resources,
    evaluator_bundle,
    some_node_fits,
)
from ajpq.search.config import SearchConfig

__all__ = ["AutoscalerView", "Reservation", "autoscaler_view", "reserve"]

logger = logging.getLogger(__name__)

STATUS_KEY = b"__autoscaling_status"  # where Ray's autoscaler publishes its report
SETTLE_REPORTS = 3  # autoscaler reports that start nothing before a request counts as unmeetable
# a group that fits the nodes already there is ready in well under this; one that waits for a
# node to start says so now (an autoscaler can start a node in about 2 s, before a longer poll)
FIRST_WAIT_S = 0.5
POLL_S = 2.0


@dataclass(frozen=True)
class AutoscalerView:
    """What the cluster's autoscaler last reported: nodes being started (by type), nodes that
    failed to start, and when it reported."""

    at: float
    starting: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.starting:
            return "no node starting"
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.starting.items()))
        return f"{sum(self.starting.values())} node(s) starting ({kinds})"


def autoscaler_view() -> AutoscalerView | None:
    """The autoscaler's last report, or None on a cluster without one (fixed nodes)."""
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        raw = _internal_kv_get(STATUS_KEY)
    except Exception:  # noqa: BLE001 - no GCS key store reachable: treat as no autoscaler
        return None
    if not raw:
        return None
    status = json.loads(raw)
    report = status.get("autoscaler_report") or {}
    starting: dict[str, int] = {}
    for _node, kind, *_ in report.get("pending_nodes") or []:
        starting[kind] = starting.get(kind, 0) + 1
    for kind, count in (report.get("pending_launches") or {}).items():
        starting[kind] = starting.get(kind, 0) + int(count)
    failed: dict[str, int] = {}
    for _node, kind in report.get("failed_nodes") or []:
        failed[kind] = failed.get(kind, 0) + 1
    return AutoscalerView(float(status.get("time", 0.0)), starting, failed)


@dataclass
class Reservation:
    """The placement group that holds a search's evaluators (bundle ``first + i`` is
    evaluator ``i``'s); ``owned`` when the search created it (and removes it)."""

    group: PlacementGroup
    first: int
    evaluators: int
    owned: bool

    def strategy(self, index: int = 0) -> PlacementGroupSchedulingStrategy:
        """Scheduling into evaluator ``index``'s bundle (a device task uses bundle 0)."""
        return PlacementGroupSchedulingStrategy(
            self.group, placement_group_bundle_index=self.first + index
        )

    def release(self) -> None:
        if self.owned:
            remove_placement_group(self.group)


def reserve(config: SearchConfig, on_wait: Callable[[str], None] | None = None) -> Reservation:
    """Reserve the search's evaluators and wait until they fit: at once on a Ray of our own,
    while an autoscaler starts nodes (saying so), until ``evaluator.start_timeout_s`` on a
    cluster of fixed nodes. A request no node can ever meet fails in seconds, in one line."""
    ev = config.evaluator
    current = get_current_placement_group()
    if current is not None:  # a sweep trial: Tune's group holds the evaluators already
        first = evaluator_bundle(config, 0)
        return Reservation(current, first, ev.num_evaluators, owned=False)
    if config.ray_address is None:
        check_resources(config, wait_s=0.0)  # a Ray of our own: known now
    elif autoscaler_view() is None:
        check_resources(config)  # fixed nodes: some may still join
    bundle = dict(bundle_layout(config).evaluator)
    group = placement_group(
        [dict(bundle) for _ in range(ev.num_evaluators)],
        strategy="PACK",
        name=f"ajpq-search-{uuid.uuid4().hex[:8]}",
    )
    reservation = Reservation(group, 0, ev.num_evaluators, owned=True)
    try:
        _wait(reservation, config, bundle, on_wait or logger.info)
    except BaseException:
        reservation.release()
        raise
    return reservation


def _wait(
    reservation: Reservation,
    config: SearchConfig,
    bundle: dict[str, float],
    say: Callable[[str], None],
) -> None:
    ev = config.evaluator
    created = time.time()
    local = config.ray_address is None
    deadline = created + (min(ev.start_timeout_s, 30.0) if local else ev.start_timeout_s)
    idle_reports: set[float] = set()
    last_said = ""
    wanted = f"{ev.num_evaluators} evaluator(s) of {_show(bundle)}"
    poll_s = FIRST_WAIT_S
    while True:
        ready, _ = ray.wait([reservation.group.ready()], timeout=poll_s)
        poll_s = POLL_S
        if ready:
            if last_said:
                say(f"{wanted} reserved after {time.time() - created:.0f} s")
            return
        view = None if local else autoscaler_view()
        if view is not None and view.at > created:
            if view.starting:
                idle_reports.clear()
            else:
                idle_reports.add(view.at)
            if len(idle_reports) >= SETTLE_REPORTS and not some_node_fits(bundle, alive_nodes()):
                failed = f"; nodes that failed to start: {view.failed}" if view.failed else ""
                raise ValueError(
                    f"no node type of this cluster can host an evaluator with {_show(bundle)} "
                    f"(the autoscaler starts nothing for it{failed}); lower evaluator.num_cpus "
                    "/ evaluator.num_gpus or add such a node type to the cluster"
                )
        line = f"waiting for {wanted}: " + (
            view.describe() if view is not None else "no autoscaler; waiting for nodes to join"
        )
        if line != last_said:
            say(line)
            last_said = line
        if time.time() >= deadline:
            raise ValueError(
                f"the search's {wanted} were not placed within {deadline - created:.0f} s "
                f"({line.split(': ', 1)[1]}); free or add resources, or raise "
                "evaluator.start_timeout_s"
            )


def _show(bundle: dict[str, float]) -> str:
    return ", ".join(f"{value:g} {name}" for name, value in bundle.items())
