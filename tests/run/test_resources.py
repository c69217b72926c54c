"""One bundle layout for a search: the driver, the env runners, the evaluators; a local Ray
sized to host them."""

import os

from ajpq.run.resources import (
    ENV_RUNNER_CPUS,
    evaluator_bundle,
    local_num_cpus,
    search_bundles,
)
from ajpq.search.config import SearchConfig


def test_every_evaluator_has_its_own_bundle_after_the_env_runners():
    config = SearchConfig.from_dict(
        {
            "agent": {"env_runners": 3},
            "evaluator": {"num_evaluators": 2, "num_cpus": 2.0, "num_gpus": 0.5},
        }
    )
    bundles = search_bundles(config, driver_cpus=1.5)
    assert bundles[0] == {"CPU": 1.5}
    assert bundles[1:4] == [{"CPU": ENV_RUNNER_CPUS}] * 3
    for index in range(2):
        assert bundles[evaluator_bundle(config, index)] == {"CPU": 2.0, "GPU": 0.5}
    assert len(bundles) == evaluator_bundle(config, 1) + 1


def test_a_cpu_search_asks_no_gpu_and_a_local_ray_fits_it():
    config = SearchConfig.from_dict({"evaluator": {"num_evaluators": 9, "num_cpus": 1.0}})
    assert all("GPU" not in bundle for bundle in search_bundles(config))
    assert local_num_cpus(config) >= max(os.cpu_count() or 1, 9 + 2 * ENV_RUNNER_CPUS)
