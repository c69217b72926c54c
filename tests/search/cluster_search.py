"""One small search on a simulated two-node Ray cluster with fake GPUs.

Run by ``test_cluster.py`` in its own process (the test session's local Ray must not be
touched): ``python cluster_search.py CONFIG OUT_JSON``. The head node has no GPU; each worker
node has one, so evaluators asking for half a GPU can only run on the workers, two per node.
"""

from __future__ import annotations

import json
import sys

import ray
from ray.cluster_utils import Cluster

from ajpq.config import load_config
from ajpq.search.runner import run_search


def main(config_path: str, out_path: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    try:
        config = load_config(config_path, [f"ray_address={cluster.address}"])
        outcome = run_search(config)
        gpu_nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU"))
    finally:
        ray.shutdown()
        cluster.shutdown()
    result = {
        "run_dir": str(outcome.run_dir),
        "parent_run_id": outcome.parent_run_id,
        "episodes": outcome.episodes,
        "best_policy_path": str(outcome.best_policy_path),
        "best_test_accuracy": outcome.best_test_accuracy,
        "stats": outcome.stats,
        "gpu_nodes": gpu_nodes,
    }
    with open(out_path, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
