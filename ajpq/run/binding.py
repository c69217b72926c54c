"""Binds the Ray-free env to the running search: the context from the object store, and
``evaluate`` to the evaluator pool actor. Env runners (also restarted ones) build their env
through :func:`make_env`, from an ``env_config`` that holds only the pool's name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ray

from ajpq.core.policy import CompressionPolicy
from ajpq.run.screening import ScreeningClient
from ajpq.search.context import SearchContext
from ajpq.search.env import ENV_NAME, CompressionEnv, Evaluate, Stage

__all__ = ["PoolClient", "evaluate_for", "make_env", "register", "env_config_for"]


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

    def note_screened(self) -> None:
        self._handle().note_screened.remote()  # a count, fire and forget

    def scored_rows(self, known: set[str]) -> list[tuple[str, str, float]]:
        """The scored records not in ``known``: (key, policy JSON, accuracy); a sweep's
        earlier trials' too where it shares experience."""
        return ray.get(self._handle().predictor_rows.remote(sorted(known)))


def evaluate_for(client: PoolClient, screen: int) -> Evaluate:
    """The env's ``evaluate``: the pool, through the predictor's screen when ``screen`` > 1."""
    return (
        ScreeningClient(client, client.scored_rows, screen, client.note_screened)
        if screen > 1
        else client
    )


def env_config_for(pool_name: str, namespace: str, stage: Stage | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"pool_name": pool_name, "namespace": namespace}
    if stage is not None:
        config["stage"] = stage.to_dict()
    return config


def make_env(env_config: Mapping[str, Any]) -> CompressionEnv:
    client = PoolClient(env_config["pool_name"], env_config["namespace"])
    context = client.context()
    evaluate = evaluate_for(client, context.config.agent.screen)
    return CompressionEnv(context, evaluate, Stage.from_dict(env_config.get("stage")))


def register() -> str:
    """Register the env with Ray Tune's registry under ``ENV_NAME``."""
    from ray.tune.registry import register_env

    register_env(ENV_NAME, make_env)
    return ENV_NAME
