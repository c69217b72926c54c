"""One small search on an existing Ray cluster, with one evaluator SIGKILLed on a worker node.

Run by ``test_cluster.py`` in its own process and working directory (the test session's local
Ray must not be touched): ``python cluster_search.py CONFIG OUT_JSON ADDRESS``. Once two
policies are recorded, a watcher thread kills one evaluator process that runs on a worker node
(all nodes are processes on this machine), so the pool must replace it there and finish its work.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import ray

from ajpq.run.driver import run_search
from ajpq.run.export_run import export_best
from ajpq.search.config import load_config


def _kill_one_evaluator(killed: dict, stop: threading.Event, episodes: int) -> None:
    """Kill while work remains (2 <= records <= episodes - 6), so the pool must use the dead
    evaluator again and replace it; a watcher that wakes too late kills nothing (the test
    then says so) instead of killing an idle evaluator at the end."""
    head = ray.get_runtime_context().get_node_id()
    while not stop.is_set():
        pools = [a for a in ray.util.list_named_actors(True) if a["name"].startswith("ajpq-pool")]
        if pools:
            pool = ray.get_actor(pools[0]["name"], namespace=pools[0]["namespace"])
            records = ray.get(pool.summary.remote())["records"]
            if records > episodes - 6:
                return
            if records >= 2:
                for where in ray.get(pool.wait_ready.remote()):
                    if where["node_id"] != head:
                        os.kill(where["pid"], signal.SIGKILL)
                        killed.update(where)
                        return
        time.sleep(0.2)


@ray.remote(num_cpus=0, num_gpus=0.5)
def _worker_view(path: str) -> dict:
    """What a worker node sees of the driver's run folder (it must see nothing)."""
    return {"node_id": ray.get_runtime_context().get_node_id(), "exists": os.path.exists(path)}


def main(config_path: str, out_path: str, address: str) -> None:
    config = load_config(config_path, [f"ray_address={address}"])
    killed: dict = {}
    stop = threading.Event()
    ray.init(address=address, namespace="ajpq", log_to_driver=False)
    watcher = threading.Thread(
        target=_kill_one_evaluator, args=(killed, stop, config.agent.episodes), daemon=True
    )
    watcher.start()
    try:
        outcome = run_search(config)
        # the export's long finetune runs on a worker too (a task with an evaluator's needs)
        exported = export_best(outcome.run_dir, finetune_steps=5)
        nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
        head = ray.get_runtime_context().get_node_id()
        context_file = str(outcome.run_dir / "context" / "context.json")
        views = ray.get([_worker_view.remote(context_file) for _ in range(4)])
    finally:
        stop.set()
        ray.shutdown()
    result = {
        "run_dir": str(outcome.run_dir),
        "parent_run_id": outcome.parent_run_id,
        "episodes": outcome.episodes,
        "best_policy_path": str(outcome.best_policy_path),
        "best_test_accuracy": outcome.best_test_accuracy,
        "stats": outcome.stats,
        "nodes": nodes,
        "head": head,
        "killed": killed,
        "driver_sees_context": os.path.exists(context_file),
        "worker_views": views,
        "ran_on": json.loads((outcome.run_dir / "run.json").read_text())["ran_on"],
        "export_ran_on": exported["ran_on"],
    }
    with open(out_path, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
