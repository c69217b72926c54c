"""Binds the Ray-free env to the running search: the context from the object store, and
``evaluate`` to the evaluator pool actor. Env runners (also restarted ones) build their env
through :func:`make_env`, from an ``env_config`` that holds only the pool's name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ray

from ajpq.core.policy import CompressionPolicy
from ajpq.search.context import SearchContext
from ajpq.search.env import ENV_NAME, CompressionEnv, Stage

__all__ = ["PoolClient", "make_env", "register", "env_config_for"]


class PoolClient:
    """``evaluate(policy)`` through the search's evaluator pool (the env runner just waits)."""

    def __init__(self, pool_name: str, namespace: str) -> None:
        self.pool_name = pool_name
        self.namespace = namespace
        self._pool: Any = None

    def _handle(self) -> Any:
        if self._pool is None:
            self._pool = ray.get_actor(self.pool_name, namespace=self.namespace)
        return self._pool

    def context(self) -> SearchContext:
        return ray.get(self._handle().context_source.remote()).context()

    def __call__(self, policy: CompressionPolicy) -> Mapping[str, Any]:
        return ray.get(self._handle().evaluate.remote(policy.to_json()))


def env_config_for(pool_name: str, namespace: str, stage: Stage | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"pool_name": pool_name, "namespace": namespace}
    if stage is not None:
        config["stage"] = stage.to_dict()
    return config


def make_env(env_config: Mapping[str, Any]) -> CompressionEnv:
    client = PoolClient(env_config["pool_name"], env_config["namespace"])
    return CompressionEnv(client.context(), client, Stage.from_dict(env_config.get("stage")))


def register() -> str:
    """Register the env with Ray Tune's registry under ``ENV_NAME``."""
    from ray.tune.registry import register_env

    register_env(ENV_NAME, make_env)
    return ENV_NAME
