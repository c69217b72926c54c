"""The binding of the Ray-free env to a running search: the env config names only the pool, and
the env runner's client reaches the pool actor by name."""

import pytest
import ray

from ajpq.core.budget import Budget, BudgetKind
from ajpq.run.binding import PoolClient, env_config_for
from ajpq.search.env import Stage

pytestmark = pytest.mark.ray


def test_env_config_round_trips_a_stage():
    stage = Stage(prune=False, budget=Budget(BudgetKind.SIZE, 0.2), base_policy="{}")
    config = env_config_for("pool", "ns", stage)
    assert set(config) == {"pool_name", "namespace", "stage"}
    assert Stage.from_dict(config["stage"]) == stage
    assert Stage.from_dict(env_config_for("pool", "ns").get("stage")) == Stage()


def test_the_client_finds_the_pool_by_name(ray_session):
    # defined here, so Ray ships them by value (workers cannot import the test module)
    class _Source:
        def context(self) -> str:
            return "the context"

    @ray.remote(num_cpus=0)
    class _FakePool:
        def context_source(self) -> _Source:
            return _Source()

        def evaluate(self, policy_json: str) -> dict:
            return {"length": len(policy_json)}

    class _Policy:
        def to_json(self) -> str:
            return "{1234}"

    pool = _FakePool.options(name="binding-test-pool", namespace="binding-test").remote()
    try:
        client = PoolClient("binding-test-pool", "binding-test")
        assert client.context() == "the context"
        assert client(_Policy()) == {"length": 6}
    finally:
        ray.kill(pool)
